"""A `text/event-stream` parser, sans I/O (the WHATWG HTML "Server-sent events" algorithm).

`feed(bytes)` returns the events completed by those bytes. It handles what a stream may legally
do: UTF-8 split across reads, a leading BOM, CRLF, LF or lone CR line ends (a CR at the end of one
read and an LF at the start of the next are one line end), comments (keepalives), multi-line
`data:`, `id:` persisting across events (and ignored if it contains NUL), and `retry:` taken only
when it is all ASCII digits. An event or line larger than `max_event_chars` raises
`SseProtocolError`, so a stream that never ends a line cannot grow the buffer without bound.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_EOL = re.compile(r"\r\n|\r|\n")


class SseProtocolError(ValueError):
    """The stream broke the format or a size bound."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """A dispatched event. `id` is the stream's last event id at dispatch (it persists)."""

    event: str
    data: str
    id: str


class SseParser:
    """Incremental parser. `retry_ms` is the last valid `retry:` value, None until one came."""

    __slots__ = ("_data", "_decoder", "_event", "_last_id", "_line", "_max", "_pending_cr",
                 "_started", "retry_ms")

    def __init__(self, max_event_chars: int = 1 << 20) -> None:
        self._max = max_event_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""
        self._pending_cr = False
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self.retry_ms: int | None = None

    @property
    def last_event_id(self) -> str:
        return self._last_id

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by `chunk`, in order."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        events: list[SseEvent] = []
        pos = 1 if self._pending_cr and text.startswith("\n") else 0  # a CRLF split in two
        for end in _EOL.finditer(text, pos):
            self._line_end(text[pos:end.start()], events)
            pos = end.end()
        self._line += text[pos:]
        self._pending_cr = text.endswith("\r") or (self._pending_cr and not text)
        if len(self._line) > self._max:
            raise SseProtocolError(f"a line longer than {self._max} characters")
        return events

    def _line_end(self, tail: str, events: list[SseEvent]) -> None:
        line, self._line = self._line + tail, ""
        if not line:
            self._dispatch(events)
        elif not line.startswith(":"):
            name, colon, value = line.partition(":")
            self._field(name, value[1:] if colon and value.startswith(" ") else value)

    def _field(self, name: str, value: str) -> None:
        if name == "data":
            self._data.append(value)
            if sum(map(len, self._data)) > self._max:
                raise SseProtocolError(f"an event larger than {self._max} characters")
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)

    def _dispatch(self, events: list[SseEvent]) -> None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if data:
            events.append(SseEvent(event or "message", "\n".join(data), self._last_id))
