"""The device protocol (v1) from the device's side, sans I/O: endpoint URLs, messages, acks and
the close hints a server sends. See README "Device protocol (v1)".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

MAX_ACK_IDS = 1000
"""Most ids in one `{"type": "ack", "ids": [...]}` frame (the edge closes with 1008 past it)."""

HINT_CODES = range(4000, 4100)
"""WebSocket close codes whose reason is JSON `{"reason", "reconnect_after_ms"}`."""

REPLACED = 4003
"""Close code (WebSocket, or an SSE `reconnect` event's `code`): a newer connection of the same
client id took over."""

CLIENT_BUG_CODES = frozenset({1002, 1003, 1007, 1008, 1009})
"""Close codes that mean this client broke the protocol (RFC 6455 section 7.4.1)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One pushed message. `data` is the decoded JSON payload; `raw` the text as received."""

    id: str
    topic: str
    ts: int
    data: Any
    raw: str


class MalformedMessage(ValueError):
    """A frame or event that is not a message object with a string `id`."""


def parse_message(raw: str, *, fallback_id: str | None = None) -> Message:
    """A `Message` from one frame's or event's text. `fallback_id` (an SSE `id:` field) is used
    when the object carries no `id`. Raises MalformedMessage."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MalformedMessage("not a JSON object")
    message_id = obj.get("id", fallback_id)
    if not isinstance(message_id, str) or not message_id:
        raise MalformedMessage("no string 'id'")
    topic = obj.get("topic")
    ts = obj.get("ts")
    return Message(id=message_id, topic=topic if isinstance(topic, str) else "",
                   ts=ts if isinstance(ts, int) else 0, data=obj.get("data"), raw=raw)


def ack_frames(ids: list[str]) -> Iterator[str]:
    """The WebSocket text frames acknowledging `ids`, at most MAX_ACK_IDS per frame."""
    for start in range(0, len(ids), MAX_ACK_IDS):
        chunk = ids[start:start + MAX_ACK_IDS]
        body = {"type": "ack", "id": chunk[0]} if len(chunk) == 1 else {"type": "ack",
                                                                         "ids": chunk}
        yield orjson.dumps(body).decode()


def close_hint(code: int | None, reason: str) -> int | None:
    """`reconnect_after_ms` from a 4000-4099 close reason, or None (other codes, no JSON, no
    non-negative integer hint)."""
    if code not in HINT_CODES:
        return None
    return hint_ms(reason)


def hint_ms(payload: str) -> int | None:
    """`reconnect_after_ms` in a JSON object, if it is a non-negative integer."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("reconnect_after_ms") if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def endpoint(base_url: str, transport: str, *, last_id: str | None = None) -> str:
    """The device URL: `ws(s)://host:port[/prefix]/ws[?last_id=ID]` for "ws",
    `http(s)://host:port[/prefix]/sse` for "sse" (whose resume point travels in Last-Event-ID).
    `base_url` is the edge's base, http(s):// or ws(s)://, possibly with a path prefix."""
    parts = urlsplit(base_url)
    secure = parts.scheme in ("https", "wss")
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ValueError(f"not an http(s):// or ws(s):// base URL: {base_url!r}")
    if parts.query or parts.fragment:
        raise ValueError("the base URL takes no query or fragment; pass the token separately")
    path = parts.path.rstrip("/")
    if transport == "ws":
        query = urlencode({"last_id": last_id}) if last_id else ""
        return urlunsplit(("wss" if secure else "ws", parts.netloc, path + "/ws", query, ""))
    if transport == "sse":
        return urlunsplit(("https" if secure else "http", parts.netloc, path + "/sse", "", ""))
    raise ValueError(f"transport must be 'ws' or 'sse', not {transport!r}")
