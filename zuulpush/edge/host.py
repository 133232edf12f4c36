"""`ConnectionHost`: what one connection needs of its node, and nothing more. An `EdgeConnection`
is handed one (the node wires it from its parts), never the node; the connection's type is a
parameter, so this module needs nothing of the connection's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.request import Accept, Headers
from zuulpush.edge.shedding import Shed
from zuulpush.edge.stats import EdgeStats

C_contra = TypeVar("C_contra", contravariant=True)


class ConnectionHost(Protocol[C_contra]):
    """The node as one connection sees it. Calls never block and never raise."""

    @property
    def config(self) -> EdgeConfig: ...

    @property
    def stats(self) -> EdgeStats:
        """Counters the connection bumps itself (rejects, violations, heartbeat timeouts...)."""
        ...

    @property
    def node_id(self) -> str:
        """The node a device's registration names."""
        ...

    def clock(self) -> float:
        """Monotonic seconds (the node's injected clock)."""
        ...

    # admission

    def admit(self) -> Shed | None:
        """A socket was accepted: None to serve it (counted as served until `lost`), else why
        it is shed (counted as shedding until `shed_lost`)."""
        ...

    def shed_late(self) -> bool:
        """A served socket's request came while the loop runs too late: True if it is to be
        shed unparsed (counted from now on as shedding), False to go on."""
        ...

    def retry_after_s(self) -> int:
        """A jittered `Retry-After` for a shed request's `503`."""
        ...

    # the request

    def handshake_started(self, conn: C_contra) -> None:
        """Start `conn`'s handshake deadline (`conn.handshake_due()` is called then)."""
        ...

    def decide(self, method: bytes, target: bytes, headers: Headers,
               source: Callable[[], str]) -> Accept:
        """`zuulpush.edge.request.decide` with the node's token verifier, admin key, origins
        and admin brake; raises what it raises."""
        ...

    def answer(self, accept: Accept) -> bytes:
        """The whole HTTP answer to a one-shot route (health, metrics, admin)."""
        ...

    def accepted(self, conn: C_contra) -> None:
        """`conn` is upgraded (REPLAYING or ECHO): it joins the heartbeat wheel; a device's
        connection replaces the client's older one here, and is registered, then replayed
        (`conn.replayed()`)."""
        ...

    # an open connection

    def wrote(self, conn: C_contra, message_id: str, *, stored: bool) -> None:
        """`message_id` was just written to `conn` (`zuulpush.edge.given.GivenLedger.wrote`)."""
        ...

    def ack(self, conn: C_contra, ids: list[str]) -> None:
        """The device acknowledged these ids: they leave its inbox at the next flush."""
        ...

    def linger(self, conn: C_contra) -> None:
        """`conn` has written its last bytes and waits for the peer's close: an upgraded one is
        aborted at the heartbeat wheel's visit a whole interval later."""
        ...

    def lost(self, conn: C_contra) -> None:
        """A served `conn`'s transport is gone: it leaves the node (and the registry)."""
        ...

    def shed_lost(self) -> None:
        """A shed socket's transport is gone."""
        ...
