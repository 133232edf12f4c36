"""What the client does after a connection ends or fails: the reconnect policy, sans I/O."""

from __future__ import annotations

import random

import pytest

from zuulpush.client.backoff import Backoff
from zuulpush.client.errors import AuthError, ConnectError, ReplacedError
from zuulpush.client.policy import Closed, Failed, ReconnectPolicy, Retry, Stop

BACKOFF = Backoff(base_s=1.0, cap_s=16.0, reset_after_s=30.0, hint_cap_s=60.0)


def policy(*, can_refresh: bool = False, reconnect: bool = True, seed: int = 3
           ) -> ReconnectPolicy:
    return ReconnectPolicy(BACKOFF, can_refresh=can_refresh, reconnect=reconnect,
                           rng=random.Random(seed))


def retry(decision: Retry | Stop) -> Retry:
    assert isinstance(decision, Retry), decision
    return decision


def test_failures_back_off_exponentially_with_full_jitter() -> None:
    p = policy()
    expected_rng = random.Random(3)
    for attempt in range(8):
        delay = retry(p.decide(Failed(None, "refused"))).delay_s
        assert delay == expected_rng.uniform(0, min(16.0, 2.0 ** attempt))
    assert p.attempt == 8


def test_a_connection_that_stayed_up_resets_the_backoff() -> None:
    p = policy()
    for _ in range(6):
        p.decide(Failed(None, "refused"))
    p.decide(Closed(1006, "", up_s=5.0))  # short-lived: still counting
    assert p.attempt == 7
    assert retry(p.decide(Closed(None, "reset", up_s=31.0))).delay_s <= 1.0
    assert p.attempt == 1


def test_go_away_hints_are_used_as_they_are() -> None:
    p = policy()
    for _ in range(5):
        p.decide(Failed(None, "refused"))
    hinted = retry(p.decide(Closed(4000, '{"reason":"shutdown"}', hint_ms=1500, up_s=1.0)))
    assert hinted.delay_s == 1.5 and not hinted.client_bug
    assert retry(p.decide(Closed(4002, "slow", hint_ms=10**9))).delay_s == 60.0  # capped


def test_retry_after_and_sse_retry_are_floors_plus_jitter() -> None:
    p = policy()
    waits = [retry(p.decide(Failed(503, "busy", retry_after_s=5.0))).delay_s for _ in range(30)]
    assert all(5.0 <= w <= 5.0 + 16.0 for w in waits)
    assert len(set(waits)) == len(waits)  # jittered: clients told "5 s" do not all return at 5 s
    p = policy()
    sse_end = retry(p.decide(Closed(None, "stream ended", floor_ms=3000)))
    assert 3.0 <= sse_end.delay_s <= 4.0
    # a hint wins over the floor (the edge sends both, equal, on a go-away)
    assert retry(p.decide(Closed(4000, "", hint_ms=700, floor_ms=700))).delay_s == 0.7


def test_replaced_stops() -> None:
    decision = policy().decide(Closed(4003, "replaced by a newer connection", up_s=100))
    assert isinstance(decision, Stop) and isinstance(decision.error, ReplacedError)
    assert decision.error.close_code == 4003


def test_401_without_a_provider_stops() -> None:
    decision = policy().decide(Failed(401, "device token expired"))
    assert isinstance(decision, Stop) and isinstance(decision.error, AuthError)
    assert decision.error.status == 401 and "expired" in str(decision.error)


def test_401_with_a_provider_refreshes_at_once_then_with_backoff() -> None:
    p = policy(can_refresh=True)
    first = retry(p.decide(Failed(401, "expired")))
    assert (first.delay_s, first.refresh_token) == (0.0, True)
    second = retry(p.decide(Failed(401, "expired")))
    assert second.refresh_token and 0.0 < second.delay_s <= 2.0
    p.connected()  # a new token worked: the next 401 is again retried at once
    assert retry(p.decide(Failed(401, "expired"))).delay_s == 0.0


@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 1009])
def test_client_bugs_back_off_and_are_flagged(code: int) -> None:
    decision = retry(policy().decide(Closed(code, "violation")))
    assert decision.client_bug and 0 <= decision.delay_s <= 1.0


@pytest.mark.parametrize("outcome", [Closed(1000, "bye"), Closed(1001, ""), Closed(1011, ""),
                                     Closed(None, "no traffic"), Closed(4000, "no json"),
                                     Failed(None, "timeout"), Failed(500, "oops"),
                                     Failed(404, "not found")])
def test_everything_else_backs_off(outcome: Closed | Failed) -> None:
    decision = retry(policy().decide(outcome))
    assert not decision.refresh_token and not decision.client_bug and decision.delay_s <= 1.0


def test_without_reconnect_every_outcome_stops() -> None:
    failed = policy(reconnect=False).decide(Failed(503, "busy", retry_after_s=1))
    assert isinstance(failed, Stop) and isinstance(failed.error, ConnectError)
    assert failed.error.status == 503
    assert policy(reconnect=False).decide(Closed(4000, "", hint_ms=5)) == Stop(None)
    replaced = policy(reconnect=False).decide(Closed(4003, ""))
    assert isinstance(replaced, Stop) and isinstance(replaced.error, ReplacedError)
    auth = policy(reconnect=False, can_refresh=True).decide(Failed(401, "expired"))
    assert isinstance(auth, Stop) and isinstance(auth.error, ConnectError)
