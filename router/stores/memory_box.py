"""`SortedBox`: entries kept sorted by id, the in-memory store under one client's inbox and under
the broadcast history."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import Generic, TypeVar

from router.base import Broadcast, InboxEntry

E = TypeVar("E", InboxEntry, Broadcast)


class SortedBox(Generic[E]):
    """One client's entries (or the broadcast history): `ids` sorted (time-ordered ids),
    `entries` by id, `marks` (entry id -> given mark, `router.base.Inbox`) for those given and
    `handed` (entry id -> peer regions) for those forwarded."""

    __slots__ = ("entries", "handed", "ids", "marks")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.entries: dict[str, E] = {}
        self.marks: dict[str, str] = {}
        self.handed: dict[str, set[str]] = {}  # entry id -> regions it was forwarded to

    def add(self, entry: E, cap: int) -> None:
        if entry.id in self.entries:
            return
        self.entries[entry.id] = entry
        # Ids from different processes may arrive slightly out of order: insert in place.
        insort(self.ids, entry.id)
        excess = len(self.ids) - cap
        if excess > 0:
            self.drop_first(excess)

    def drop_first(self, n: int) -> int:
        for entry_id in self.ids[:n]:
            del self.entries[entry_id]
            self.marks.pop(entry_id, None)
            self.handed.pop(entry_id, None)
        removed = min(n, len(self.ids))
        del self.ids[:n]
        return removed

    def remove(self, entry_id: str) -> bool:
        if self.entries.pop(entry_id, None) is None:
            return False
        self.marks.pop(entry_id, None)
        self.handed.pop(entry_id, None)
        del self.ids[bisect_left(self.ids, entry_id)]
        return True

    def expired(self, now_ms: int) -> list[str]:
        return [i for i, e in self.entries.items() if now_ms >= e.expires_at_ms]

    def mark(self, entry_id: str, mark: str) -> None:
        """Record `entry_id` given with `mark`, if present; a mark only rises."""
        if entry_id in self.entries and mark > self.marks.get(entry_id, ""):
            self.marks[entry_id] = mark

    def received(self, resume_id: str) -> list[str]:
        """The ids a device resuming after `resume_id` has: that id, and those given with a
        mark below it."""
        found = {i for i, mark in self.marks.items() if mark < resume_id}
        if resume_id in self.entries:
            found.add(resume_id)
        return list(found)

    def after(self, last_id: str | None, limit: int, now_ms: int) -> list[E]:
        """Up to `limit` unexpired entries after `last_id`; the expired ones passed are removed."""
        start = 0 if last_id is None else bisect_right(self.ids, last_id)
        found: list[E] = []
        expired: list[str] = []
        for index in range(start, len(self.ids)):
            entry = self.entries[self.ids[index]]
            if now_ms >= entry.expires_at_ms:
                expired.append(entry.id)
                continue
            found.append(entry)
            if len(found) >= limit:
                break
        for entry_id in expired:
            self.remove(entry_id)
        return found
