"""`ResumePoint`: the id a device resumes after, sans I/O.

The edge takes a resume point `L` to mean: "I have processed every message this connection gave
me up to `L`" and removes those from the inbox (`router.base.Inbox.resume_many`). With acks in
arrival order (auto_ack) that is the last message processed. An application that acks itself
may ack out of order; the resume point then stops at the first message received and not yet
acked, so that a restart resuming from it is given that message again rather than never.
"""

from __future__ import annotations

from collections import OrderedDict


class ResumePoint:
    """Tracks messages received and processed; `value` is the point to resume after."""

    __slots__ = ("_capacity", "_open", "value")

    def __init__(self, value: str | None = None, *, capacity: int = 10_000) -> None:
        self.value = value
        self._open: OrderedDict[str, bool] = OrderedDict()  # arrival order -> processed
        self._capacity = capacity

    def received(self, message_id: str) -> None:
        """A message was received (not a repeat) and is on its way to the application."""
        self._open[message_id] = False
        if len(self._open) > self._capacity:  # never processed: stop waiting for the oldest
            self._open.popitem(last=False)
            self._advance()

    def processed(self, message_id: str) -> None:
        """The application is done with `message_id`: the point moves past every message
        received before it that is done too. An id never received (one the application
        passes in itself) becomes the point when nothing received is still open."""
        if message_id in self._open:
            self._open[message_id] = True
            self._advance()
        elif not self._open:
            self.value = message_id

    def _advance(self) -> None:
        while self._open:
            message_id, done = next(iter(self._open.items()))
            if not done:
                return
            self._open.popitem(last=False)
            self.value = message_id
