"""Dashboard sessions: the signed cookie, and the seam that makes a logout stick.

The cookie (`router.pages.dashboard`) is `<expiry>.<session id>.<HMAC-SHA256 keyed by the admin
key>`:
any API process with the admin key can check it without asking anyone, so on its own it would
stay good for its whole lifetime, logout or not. A logout therefore *revokes* the session id in a
`SessionRevocations` store until the cookie would have expired (plus `REVOCATION_MARGIN_S` for
clocks that differ between processes), and every process asks the store before honouring a
cookie. `zuulpush serve` keeps revocations in its memory (`MemorySessionRevocations`); a fleet's
API processes share them in the region's Redis (`router.stores.redis_sessions`), so a logout on one
API ends the session on all of them.

The session id is 32 random hex digits chosen at login: two logins (two browsers, or the same
second) are two sessions, and logging out of one leaves the other.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

REVOCATION_MARGIN_S = 300.0
"""How much longer than its cookie a revocation lives: another API's wall clock may be behind."""

_COOKIE = re.compile(r"(?P<expiry>[0-9]{1,12})\.(?P<id>[0-9a-f]{32})\.(?P<sig>[0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class Session:
    """A dashboard session as its cookie states it (signature checked)."""

    session_id: str
    expires_at_s: int

    def revocation_ttl_s(self, now_s: float) -> float:
        """How long a revocation of this session must live, seen at wall time `now_s`."""
        return self.expires_at_s - now_s + REVOCATION_MARGIN_S


def new_session_id() -> str:
    return secrets.token_hex(16)


def session_cookie(admin_key: str, expires_at_s: int, session_id: str | None = None) -> str:
    """The cookie value for a session ending at `expires_at_s`; a new session id unless given."""
    session_id = new_session_id() if session_id is None else session_id
    return f"{expires_at_s}.{session_id}.{_sign(admin_key, expires_at_s, session_id)}"


def read_session(admin_key: str, cookie: str | None, now_s: float) -> Session | None:
    """The session `cookie` states, if it is well formed, signed with `admin_key` and not expired
    at `now_s`; else None. Says nothing of revocation (`SessionRevocations`)."""
    if not admin_key or not cookie:
        return None
    match = _COOKIE.fullmatch(cookie)
    if match is None:
        return None
    expiry, session_id = int(match["expiry"]), match["id"]
    good = hmac.compare_digest(match["sig"], _sign(admin_key, expiry, session_id))
    return Session(session_id, expiry) if good and expiry > now_s else None


def valid_session(admin_key: str, cookie: str | None, now_s: float) -> bool:
    """Whether `read_session` finds a session in `cookie`."""
    return read_session(admin_key, cookie, now_s) is not None


def _sign(admin_key: str, expires_at_s: int, session_id: str) -> str:
    message = f"zuulpush-dashboard-session:{expires_at_s}:{session_id}".encode()
    return hmac.new(admin_key.encode(), message, hashlib.sha256).hexdigest()


class SessionRevocations(Protocol):
    """Session ids that were logged out, each for a time. Every method is safe to call
    concurrently, from any number of processes sharing the store."""

    async def revoke(self, session_id: str, ttl_s: float) -> None:
        """Refuse `session_id` from now on, for `ttl_s` seconds, in every process sharing the
        store (nothing when `ttl_s` is not positive: that session is over anyway). Idempotent:
        revoking again sets the time again. Raises `core.errors.Unavailable` when the backing
        store cannot be reached (the logout then fails: nothing was revoked)."""
        ...

    async def is_revoked(self, session_id: str) -> bool:
        """Whether `session_id` was revoked and its time has not run out. Raises
        `core.errors.Unavailable` when the backing store cannot be reached: the caller must
        then refuse the session (fail closed)."""
        ...

    async def close(self) -> None:
        """Release connections to the backing store. Idempotent."""
        ...


class MemorySessionRevocations:
    """`SessionRevocations` in this process's memory, on `clock_s` (monotonic seconds). Expired
    entries are dropped whenever a session is revoked, so it holds only live revocations."""

    __slots__ = ("_clock_s", "_until")

    def __init__(self, clock_s: Callable[[], float] = time.monotonic) -> None:
        self._clock_s = clock_s
        self._until: dict[str, float] = {}

    async def revoke(self, session_id: str, ttl_s: float) -> None:
        now = self._clock_s()
        for gone in [s for s, until in self._until.items() if until <= now]:
            del self._until[gone]
        if ttl_s > 0:
            self._until[session_id] = now + ttl_s

    async def is_revoked(self, session_id: str) -> bool:
        until = self._until.get(session_id)
        return until is not None and until > self._clock_s()

    def __len__(self) -> int:
        """Revocations held, expired ones not yet dropped included (for tests)."""
        return len(self._until)

    async def close(self) -> None:
        pass
