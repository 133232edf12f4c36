"""`Replay`: what a connection is sent from the stores as it opens (its inbox, and the broadcasts
it missed when it resumes), or again once its lost registration is back; the registrar calls it
after writing the registrations (why that order loses nothing: docs/edge.md)."""

from __future__ import annotations

import asyncio

from router.base import Broadcast, BroadcastLog, Inbox, InboxEntry, merge_replay
from zuulpush.edge.protocol import EdgeConnection
from zuulpush.edge.state import State
from zuulpush.edge.stats import EdgeStats
from zuulpush.edge.wire import Outgoing

ADMIT_SLICE = 64
"""Connections replayed between two yields to the loop (memory seams never yield by themselves)."""
REDELIVER_BATCH = 1024
"""Connections whose inboxes one `resume_many` call reads when their registrations were lost."""


class Replay:
    """Reads inboxes and the broadcast history for connections, and hands each its replay."""

    def __init__(self, inbox: Inbox, history: BroadcastLog | None, *, page_size: int,
                 stats: EdgeStats) -> None:
        """Without `history`, resuming devices get their inbox only (no missed broadcasts)."""
        self.inbox = inbox
        self.history = history
        self._page_size = page_size
        self._stats = stats

    async def opened(self, conns: list[EdgeConnection]) -> None:
        """Replay to each of these (registered, REPLAYING) connections its inbox and, if it
        resumes from a last id, the broadcasts after it of its device type, in id order, each
        id once (`merge_replay`). The whole batch's inboxes are read in one call (each resume
        removes what the device has, `Inbox.resume_many`, and answers the first page of the
        rest), the broadcast history once from the oldest resume point."""
        reads = [(conn.client_id, conn.resume_after) for conn in conns]
        pages = await self.inbox.resume_many(reads, self._page_size)
        resumes = [last_id for _, last_id in reads if last_id is not None]
        missed: list[Broadcast] = []
        if resumes and self.history is not None:
            missed = await self._missed_broadcasts(self.history, min(resumes))
        for i, (conn, (client_id, last_id), entries) in enumerate(zip(conns, reads, pages,
                                                                        strict=True)):
            if i % ADMIT_SLICE == ADMIT_SLICE - 1:
                await asyncio.sleep(0)  # a storm's batch must not hold the loop
            if conn.state is not State.REPLAYING:
                continue  # closed meanwhile
            entries = await self._whole(client_id, entries)
            replay = [Outgoing(entry.id, entry.payload) for entry in entries]
            if last_id is not None and missed:
                after = [b for b in missed if b.id > last_id]
                device_type = conn.registration.device_type  # type: ignore[union-attr]
                stored = {entry.id for entry in entries}
                replay = [Outgoing(entry.id, entry.payload, entry.id in stored)
                          for entry in merge_replay(entries, after, device_type)]
            conn.replayed(replay)
            self._stats.replayed += len(replay)
            self._stats.inbox_depth.add(len(replay))

    async def redeliver(self, conns: list[EdgeConnection]) -> None:
        """Write to each (open) connection, as live pushes, what waits in its inbox (some of it
        it may have had: at least once). Only after its registration is back: a message stored
        later is found by its router's lookup instead."""
        page_size = self._page_size
        for start in range(0, len(conns), REDELIVER_BATCH):
            batch = conns[start:start + REDELIVER_BATCH]
            pages = await self.inbox.resume_many([(c.client_id, None) for c in batch], page_size)
            for conn, first in zip(batch, pages, strict=True):
                entries = await self._whole(conn.client_id, first)
                for entry in entries:
                    conn.deliver(Outgoing(entry.id, entry.payload))
                self._stats.redelivered += len(entries)

    async def _whole(self, client_id: str, first: list[InboxEntry]) -> list[InboxEntry]:
        """`first`, the first page of a client's inbox, with the rest of it, read a page at a
        time. All of it: a replay cut short and followed by newer live pushes would make the
        device's next resume point skip what was left out. The inbox's per-client cap bounds
        it."""
        page_size = self._page_size
        entries, page = list(first), first
        while len(page) == page_size:
            page = await self.inbox.after(client_id, page[-1].id, page_size)
            entries.extend(page)
        return entries

    async def _missed_broadcasts(self, history: BroadcastLog, last_id: str) -> list[Broadcast]:
        """The whole broadcast history after `last_id`, a page at a time (its cap bounds it)."""
        page_size = self._page_size
        found: list[Broadcast] = []
        while True:
            page = await history.after(last_id, page_size)
            found.extend(page)
            if len(page) < page_size:
                return found
            last_id = page[-1].id
