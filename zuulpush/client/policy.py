"""What to do after a connection ends or fails, sans I/O: reconnect after how long, with a new
token or not, or stop.

The I/O layer reports one outcome per attempt (`Failed` before the connection was up, `Closed`
after) and does what the returned decision says. The rules, in order:

- 4003 (replaced by a newer connection of the same client id): stop with ReplacedError.
- 401: with a token provider, ask it for a new token and retry at once, the first time; after
  that keep asking before each attempt, with backoff. Without a provider: stop with AuthError.
- A go-away hint (`reconnect_after_ms` in a 4000-4099 WebSocket close or an SSE `reconnect`
  event): wait exactly that (the server jittered it).
- A server minimum (`Retry-After` on a 503 or 429; SSE `retry:` when a stream just ends): wait
  that plus full jitter.
- Anything else (refused, reset, timeouts, 5xx, 1000/1001/1011, silence): full-jitter backoff.
  1002/1003/1007/1008/1009 also mean this client broke the protocol: `Retry.client_bug` is set
  so the I/O layer logs it as an error.

With `reconnect=False` every outcome stops: a failed attempt with ConnectError (or the errors
above), a closed connection without an error unless it was replaced.

The attempt count grows with every outcome and is reset by a connection that stayed up at least
`Backoff.reset_after_s`, so a server that accepts and drops at once still sees backoff.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from zuulpush.client.backoff import Backoff
from zuulpush.client.errors import AuthError, ConnectError, PushClientError, ReplacedError
from zuulpush.client.wire import CLIENT_BUG_CODES, REPLACED


@dataclass(frozen=True, slots=True)
class Failed:
    """A connection attempt that did not get through: `status` is the HTTP answer (None for a
    network error or timeout); `retry_after_s` the parsed `Retry-After`."""

    status: int | None = None
    reason: str = ""
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Closed:
    """An open connection that ended after `up_s` seconds. `code` is the WebSocket close code or
    an SSE `reconnect` event's code (None: no close code, e.g. reset or silence); `hint_ms` the
    go-away hint; `floor_ms` an SSE stream's last `retry:` (unused when there is a hint)."""

    code: int | None = None
    reason: str = ""
    hint_ms: int | None = None
    floor_ms: int | None = None
    up_s: float = 0.0


Outcome = Failed | Closed


@dataclass(frozen=True, slots=True)
class Retry:
    """Reconnect after `delay_s`; first get a new token if `refresh_token`."""

    delay_s: float
    refresh_token: bool = False
    client_bug: bool = False
    why: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    """Do not reconnect. `error` is None for a plain end (only with `reconnect=False`)."""

    error: PushClientError | None


Decision = Retry | Stop


class ReconnectPolicy:
    """The rules of the module docstring, with their attempt count. Random draws come from `rng`
    (seed it in tests)."""

    __slots__ = ("_auth_retried", "attempt", "backoff", "can_refresh", "reconnect", "rng")

    def __init__(self, backoff: Backoff, *, can_refresh: bool, reconnect: bool = True,
                 rng: random.Random | None = None) -> None:
        self.backoff = backoff
        self.can_refresh = can_refresh
        self.reconnect = reconnect
        self.rng = rng or random.Random()
        self.attempt = 0
        self._auth_retried = False

    def connected(self) -> None:
        """A connection is up (handshake accepted)."""
        self._auth_retried = False

    def decide(self, outcome: Outcome) -> Decision:
        if isinstance(outcome, Closed):
            if outcome.up_s >= self.backoff.reset_after_s:
                self.attempt = 0
            decision = self._after_close(outcome)
        else:
            decision = self._after_failure(outcome)
        self.attempt += 1
        if self.reconnect or isinstance(decision, Stop):
            return decision
        if isinstance(outcome, Failed):
            what = "handshake refused" if outcome.status else "cannot connect"
            return Stop(ConnectError(f"{what}: {decision.why}", status=outcome.status))
        return Stop(None)

    def _after_close(self, closed: Closed) -> Decision:
        if closed.code == REPLACED:
            return Stop(ReplacedError(
                f"replaced by a newer connection of the same client id ({closed.reason})",
                close_code=REPLACED))
        why = f"closed {closed.code} {closed.reason}".strip()
        if closed.hint_ms is not None:
            return Retry(self.backoff.hinted_s(closed.hint_ms), why=why + " (server hint)")
        if closed.floor_ms is not None:
            return Retry(self.backoff.after_floor_s(closed.floor_ms / 1000, self.attempt,
                                                    self.rng), why=why + " (retry: floor)")
        return Retry(self._backoff(), client_bug=closed.code in CLIENT_BUG_CODES, why=why)

    def _after_failure(self, failed: Failed) -> Decision:
        why = f"HTTP {failed.status} {failed.reason}" if failed.status else failed.reason
        if failed.status == 401:
            if not self.can_refresh:
                return Stop(AuthError(f"token refused: {failed.reason}", status=401))
            if not self._auth_retried:
                self._auth_retried = True
                return Retry(0.0, refresh_token=True, why=why)
            return Retry(self._backoff(), refresh_token=True, why=why)
        if failed.retry_after_s is not None:
            return Retry(self.backoff.after_floor_s(failed.retry_after_s, self.attempt,
                                                    self.rng), why=why + " (Retry-After)")
        return Retry(self._backoff(), why=why)

    def _backoff(self) -> float:
        return self.backoff.delay_s(self.attempt, self.rng)
