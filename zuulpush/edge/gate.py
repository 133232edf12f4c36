"""`Gate`: the node's admission at accept. It counts the sockets it serves and those it is still
shedding, and puts every new one to the shedding policy (`zuulpush.edge.shedding.Admission`)."""

from __future__ import annotations

import random
from collections.abc import Callable

from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.shedding import Admission, Limits, LoopLag, Shed, derive_ceilings
from zuulpush.edge.stats import EdgeStats


class Gate:
    """Sockets `served` (admitted, any state, until closed) and `shedding` (lingering 503s)."""

    __slots__ = ("_clock", "_stats", "policy", "served", "shedding")

    def __init__(self, config: EdgeConfig, *, fd_limit: int | None, clock: Callable[[], float],
                 lag: LoopLag, rng: random.Random, stats: EdgeStats) -> None:
        """Ceilings left at 0 are derived from `fd_limit` (`derive_ceilings`)."""
        soft, hard = derive_ceilings(fd_limit, config.max_connections,
                                     config.hard_max_connections)
        self.policy = Admission(
            Limits(soft, hard, config.accept_rate_per_s, config.accept_burst,
                   config.shed_loop_lag_ms / 1000, config.shed_retry_after_s),
            now=clock(), lag=lag, rng=rng)
        self._clock = clock
        self._stats = stats
        self.served = 0
        self.shedding = 0

    @property
    def limits(self) -> Limits:
        return self.policy.limits

    def admit(self) -> Shed | None:
        """A socket was accepted: None to serve it, else why it is shed (counted)."""
        reason = self.policy.decide(self._clock(), served=self.served, shedding=self.shedding)
        if reason is None:
            self.served += 1
        else:
            self.shedding += 1
            self._stats.shed[reason] += 1
        return reason

    def shed_late(self) -> bool:
        """A served socket's request just arrived: True if it is to be shed because the loop
        runs too late (counted as shedding from now on), False to go on with the handshake."""
        if not self.policy.late(self._clock()):
            return False
        self.served -= 1
        self.shedding += 1
        self._stats.shed[Shed.LOOP_LAG] += 1
        return True

    def retry_after_s(self) -> int:
        return self.policy.retry_after_s(self._clock())

    def served_closed(self) -> None:
        self.served -= 1

    def shed_closed(self) -> None:
        self.shedding -= 1
