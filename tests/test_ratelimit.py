"""`core.ratelimit.TokenBucket`: the edge's accept rate and the demo page's rates."""

from __future__ import annotations

import pytest

from core.ratelimit import TokenBucket

T0 = 1000.0


def test_bucket_starts_full_and_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(10.0, 5, now=T0)
    assert [bucket.take(T0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.take(T0 + 0.09)  # 0.9 of a token
    assert bucket.take(T0 + 0.1)
    assert not bucket.take(T0 + 0.1)


def test_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(10.0, 5, now=T0)
    later = T0 + 3600
    assert sum(bucket.take(later) for _ in range(100)) == 5


def test_bucket_admits_its_rate_over_time() -> None:
    bucket = TokenBucket(100.0, 1, now=T0)
    taken = sum(bucket.take(T0 + i / 1000) for i in range(1, 10_001))  # 10 s, asking 1000/s
    assert taken == pytest.approx(1000, abs=2)


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    bucket = TokenBucket(10.0, 1, now=T0)
    assert bucket.take(T0)
    assert not bucket.take(T0 - 5)
    assert bucket.take(T0 + 0.1)


def test_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(0.0, 1, now=T0)
    assert all(bucket.take(T0) for _ in range(10_000))


def test_wait_s_says_how_long_until_a_token() -> None:
    bucket = TokenBucket(2.0, 2, now=T0)
    assert bucket.wait_s(T0) == 0.0
    assert bucket.take(T0) and bucket.take(T0) and not bucket.take(T0)
    assert bucket.wait_s(T0) == pytest.approx(0.5)
    assert bucket.wait_s(T0 + 0.25) == pytest.approx(0.25)
    assert bucket.take(T0 + 0.5)
    assert TokenBucket(0.0, 1, now=T0).wait_s(T0) == 0.0
