"""Dropping repeats by message id, in bounded memory, sans I/O.

Delivery is at least once: a message may arrive again after a reconnect (replayed from the
inbox), from a router that took over another's batch, or from another region's inbox. `Deduper`
remembers the last `capacity` ids it let through (insertion order, oldest forgotten first).

Why no "every id at or below the last one is a repeat" rule, although ids sort by time
(core/ids.py): they are strictly ordered only within one process. In a fleet, API processes
on different hosts make ids that order by their clocks, so such a rule would silently drop every
message from a host whose clock runs behind. A repeat is cheap (the contract is at least once);
a silent drop is not. The resume point already makes the server skip everything up to the last
processed id, so old repeats arrive only through rarer paths, and `capacity` (10,000 by default,
ten times the server's default inbox cap) covers a whole replay.
"""

from __future__ import annotations


class Deduper:
    """`admit(id)` is True the first time an id is seen within the last `capacity` ids.

    It also remembers whether each admitted id has been processed, so the caller can tell a
    repeat of a message already handled (ack it again) from one still waiting in its queue."""

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._ids: dict[str, bool] = {}  # insertion order, oldest first; value: processed

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def admit(self, message_id: str) -> bool:
        """True (and remembered) if `message_id` is new; False for a repeat."""
        if message_id in self._ids:
            return False
        self._ids[message_id] = False
        if len(self._ids) > self._capacity:
            del self._ids[next(iter(self._ids))]
        return True

    def mark_processed(self, message_id: str) -> None:
        if message_id in self._ids:
            self._ids[message_id] = True

    def processed(self, message_id: str) -> bool:
        """Whether a remembered id has been marked processed."""
        return self._ids.get(message_id, False)
