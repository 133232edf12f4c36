"""`MemoryInbox`: the `Inbox` seam in one process's memory (`zuulpush serve`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from core.clock import ClockMs, wall_ms
from router.base import InboxEntry
from router.stores.memory_box import SortedBox


class MemoryInbox:
    """`Inbox` in memory: per client, entries sorted by id, at most `max_per_client`, with the
    marks of those given (`router.base.Inbox`).

    An entry expires at its `expires_at_ms` on the `clock_ms` wall clock: reads skip and prune
    it, and a sweep over every client at most once per `sweep_interval_ms` (run by `add`) prunes
    entries nobody reads. A client whose inbox empties is forgotten.
    """

    def __init__(
        self,
        max_per_client: int,
        *,
        clock_ms: ClockMs = wall_ms,
        sweep_interval_ms: int = 60_000,
        peered: bool = False,
    ) -> None:
        """`peered`: this is one region's inbox in a fleet of several (`Inbox.resume_many`)."""
        if max_per_client < 1:
            raise ValueError("max_per_client must be at least 1")
        self._cap = max_per_client
        self._clock_ms = clock_ms
        self._sweep_interval_ms = sweep_interval_ms
        self._next_sweep_ms = 0
        self._boxes: dict[str, SortedBox[InboxEntry]] = {}
        self._peered = peered

    async def add(self, client_ids: Iterable[str], entry: InboxEntry) -> None:
        now = self._clock_ms()
        self._maybe_sweep(now)
        if now >= entry.expires_at_ms:
            return
        for client_id in client_ids:
            box = self._boxes.get(client_id)
            if box is None:
                box = self._boxes[client_id] = SortedBox()
            box.add(entry, self._cap)

    async def add_many(self, items: Sequence[tuple[Sequence[str], InboxEntry]]) -> None:
        for client_ids, entry in items:
            await self.add(client_ids, entry)

    async def after(self, client_id: str, last_id: str | None, limit: int) -> list[InboxEntry]:
        box = self._boxes.get(client_id)
        if box is None or limit <= 0:
            return []
        found = box.after(last_id, limit, self._clock_ms())
        self._forget_if_empty(client_id, box)
        return found

    async def pull(self, client_id: str, last_id: str | None, limit: int) -> list[InboxEntry]:
        found = await self.after(client_id, last_id, limit)
        box = self._boxes.get(client_id)
        if box is not None:
            for entry in found:
                box.mark(entry.id, entry.id)
        return found

    async def resume_many(self, resumes: Sequence[tuple[str, str | None]],
                          limit: int) -> list[list[InboxEntry]]:
        pages: list[list[InboxEntry]] = []
        for client_id, resume_id in resumes:
            if resume_id is not None:
                await self.through(client_id, resume_id)
            pages.append(await self.after(client_id, None, limit))
        return pages

    async def through(self, client_id: str, last_id: str) -> int:
        box = self._boxes.get(client_id)
        if box is None:
            return 0
        own = box.entries.get(last_id)
        if self._peered and (own is None or own.forwarded or last_id not in box.marks):
            # One region of several: the marks here say nothing of what the device got
            # elsewhere (`Inbox.resume_many`); only the resume id's own entry goes.
            return self._remove(client_id, box, [last_id])
        return self._remove(client_id, box, box.received(last_id))

    async def given_many(self, items: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        for client_id, marks in items:
            box = self._boxes.get(client_id)
            if box is not None:
                for entry_id, mark in marks:
                    box.mark(entry_id, mark)

    async def handed_many(self, region: str, items: Sequence[tuple[str, Sequence[str]]]) -> None:
        for client_id, ids in items:
            box = self._boxes.get(client_id)
            if box is not None:
                for entry_id in ids:
                    if entry_id in box.entries:
                        box.handed.setdefault(entry_id, set()).add(region)

    async def unhanded_many(self, region: str,
                            client_ids: Sequence[str]) -> list[list[InboxEntry]]:
        pages: list[list[InboxEntry]] = []
        for client_id in client_ids:
            entries = await self.after(client_id, None, self._cap)
            box = self._boxes.get(client_id)
            handed = box.handed if box is not None else {}
            pages.append([e for e in entries if region not in handed.get(e.id, ())])
        return pages

    async def ack(self, client_id: str, ids: Sequence[str]) -> int:
        box = self._boxes.get(client_id)
        if box is None:
            return 0
        return self._remove(client_id, box, ids)

    async def ack_many(self, acks: Sequence[tuple[str, Sequence[str]]]) -> int:
        return sum([await self.ack(client_id, ids) for client_id, ids in acks])

    async def close(self) -> None:
        self._boxes.clear()

    def clients(self) -> int:
        """Clients with at least one stored entry (expired ones included until pruned)."""
        return len(self._boxes)

    def _remove(self, client_id: str, box: SortedBox[InboxEntry], ids: Iterable[str]) -> int:
        removed = sum(box.remove(entry_id) for entry_id in ids)
        self._forget_if_empty(client_id, box)
        return removed

    def _forget_if_empty(self, client_id: str, box: SortedBox[InboxEntry]) -> None:
        if not box.ids:
            self._boxes.pop(client_id, None)

    def _maybe_sweep(self, now_ms: int) -> None:
        if now_ms < self._next_sweep_ms:
            return
        self._next_sweep_ms = now_ms + self._sweep_interval_ms
        for client_id, box in list(self._boxes.items()):
            self._remove(client_id, box, box.expired(now_ms))
