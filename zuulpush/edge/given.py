"""What each connection has been given: the marks of `router.base.Inbox`, kept by the edge.

Every message the edge writes to a device connection raises the connection's *high-water id*
(`hw`): the highest id written on it so far, starting from its resume point. An inbox entry
written is recorded with its mark, the `hw` just after the write (so never below the entry's own
id). A broadcast raises `hw` too (a device may resume from a broadcast's id) but is in no inbox,
so it records nothing.

Marks wait here, by connection, at least one interval (`due`'s two generations) before they are
written to the inbox in one batch: a device that acks (the SDK over WebSocket) cancels them
first, since an acked entry is removed from the inbox and its mark is moot. A mark written late,
or never (the node died), costs at most a repeat: an entry without its mark is replayed again.
Why a mark proves what it claims, whenever it lands: docs/delivery.md.

No I/O here: the node calls `due` on a timer and writes what it answers with
`Inbox.given_many`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

MAX_PENDING = 1000
"""Marks waiting per connection at most; past it the oldest are dropped (their entries stay in
the inbox unmarked: at worst replayed again)."""


class Written(Protocol):
    """What the ledger needs of a connection: its high-water id and its client."""

    hw: str

    @property
    def client_id(self) -> str: ...


Marks = dict[str, str]


class GivenLedger:
    """Marks of the entries written to each connection, waiting for confirmation."""

    __slots__ = ("_closed", "_new", "_old")

    def __init__(self) -> None:
        self._new: dict[Written, Marks] = {}
        self._old: dict[Written, Marks] = {}
        self._closed: list[tuple[str, Sequence[tuple[str, str]]]] = []

    def wrote(self, conn: Written, message_id: str, *, stored: bool) -> None:
        """`message_id` was just written to `conn`; `stored`: it is an inbox entry (not a
        broadcast), whose mark waits for confirmation."""
        hw = conn.hw
        if message_id > hw:
            conn.hw = hw = message_id
        if not stored:
            return
        marks = self._new.get(conn)
        if marks is None:
            self._new[conn] = {message_id: hw}
            return
        marks[message_id] = hw  # written twice on one connection: the later, higher mark
        if len(marks) > MAX_PENDING:
            del marks[next(iter(marks))]

    def acked(self, conn: Written, ids: Iterable[str]) -> None:
        """The device acked these ids: their entries go, so their marks need not be written."""
        new, old = self._new.get(conn), self._old.get(conn)
        if new is None and old is None:
            return
        for message_id in ids:
            if new is not None:
                new.pop(message_id, None)
            if old is not None:
                old.pop(message_id, None)

    def closed(self, conn: Written) -> None:
        """`conn` is gone: no ack can cancel its marks any more, so they are due at once (the
        device's next resume finds them, unless it comes back first)."""
        marks = self._old.pop(conn, {})
        marks.update(self._new.pop(conn, {}))
        if marks:
            self._closed.append((conn.client_id, list(marks.items())))

    def ready(self) -> list[tuple[str, Sequence[tuple[str, str]]]]:
        """The marks of connections closed since the last call (`closed`)."""
        ready, self._closed = self._closed, []
        return ready

    def due(self) -> list[tuple[str, Sequence[tuple[str, str]]]]:
        """Once per interval: the marks recorded before the previous call, as
        `(client_id, [(id, mark), ...])` for `Inbox.given_many`."""
        old, self._old, self._new = self._old, self._new, {}
        return [(conn.client_id, list(marks.items())) for conn, marks in old.items() if marks]

    def __len__(self) -> int:
        """Marks waiting, in all."""
        return sum(map(len, self._new.values())) + sum(map(len, self._old.values())) + \
            sum(len(marks) for _, marks in self._closed)
