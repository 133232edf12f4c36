"""Unit tests of `zuulpush.edge.shedding`: the token bucket, ceilings, loop lag and Retry-After,
on explicit `now` values (no clock, no loop)."""

from __future__ import annotations

import random

import pytest

from zuulpush.edge.shedding import (
    MAX_RETRY_AFTER_S,
    Admission,
    Limits,
    LoopLag,
    Shed,
    derive_ceilings,
)

T0 = 1000.0


def limits(**overrides: object) -> Limits:
    values: dict[str, object] = {
        "max_connections": 100, "hard_max_connections": 120, "accept_rate_per_s": 10.0,
        "accept_burst": 5, "shed_loop_lag_s": 0.1, "retry_after_s": 4}
    values.update(overrides)
    return Limits(**values)  # type: ignore[arg-type]


def admission(**overrides: object) -> Admission:
    return Admission(limits(**overrides), now=T0, rng=random.Random(7))


# ceilings


def test_derived_ceilings_keep_a_reserve_of_the_fd_limit() -> None:
    assert derive_ceilings(20_000, 0, 0) == (17_100, 19_000)
    assert derive_ceilings(1024, 0, 0) == (864, 960)
    assert derive_ceilings(None, 0, 0) == ((1 << 20) * 9 // 10, 1 << 20)
    assert derive_ceilings(20_000, 500, 0) == (500, 19_000)
    assert derive_ceilings(20_000, 0, 1000) == (900, 1000)
    assert derive_ceilings(20_000, 10, 20) == (10, 20)
    assert derive_ceilings(50, 0, 0) == (1, 1)


def test_soft_ceiling_sheds_with_503_and_the_hard_one_closes() -> None:
    policy = admission(accept_rate_per_s=0.0)
    assert policy.decide(T0, served=99, shedding=0) is None
    assert policy.decide(T0, served=100, shedding=0) is Shed.MAX_CONNECTIONS
    assert policy.decide(T0, served=100, shedding=19) is Shed.MAX_CONNECTIONS
    assert policy.decide(T0, served=100, shedding=20) is Shed.HARD_LIMIT
    assert policy.decide(T0, served=120, shedding=0) is Shed.HARD_LIMIT


def test_rate_limit_sheds_past_the_burst() -> None:
    policy = admission()
    decisions = [policy.decide(T0, served=0, shedding=0) for _ in range(7)]
    assert decisions == [None] * 5 + [Shed.RATE] * 2
    assert policy.decide(T0 + 0.1, served=0, shedding=0) is None


def test_ceilings_and_lag_spend_no_token() -> None:
    policy = admission(accept_burst=1)
    assert policy.decide(T0, served=100, shedding=0) is Shed.MAX_CONNECTIONS
    policy.lag.arm(T0)
    policy.lag.sampled(T0 + 0.5)  # 450 ms late
    assert policy.decide(T0 + 0.5, served=0, shedding=0) is Shed.LOOP_LAG
    policy.lag.sampled(T0 + 0.55)  # on time again
    assert policy.decide(T0 + 0.55, served=0, shedding=0) is None  # the one token is still there


# loop lag


def test_unarmed_lag_is_zero() -> None:
    lag = LoopLag(0.05)
    assert lag.current(T0 + 100) == 0.0
    assert lag.sampled(T0) == 0.0


def test_lag_is_the_samplers_lateness_and_the_peak_is_kept() -> None:
    lag = LoopLag(0.05)
    lag.arm(T0)
    assert lag.sampled(T0 + 0.05) == 0.0
    assert lag.sampled(T0 + 0.30) == pytest.approx(0.2)
    assert lag.current(T0 + 0.31) == pytest.approx(0.2)
    assert lag.sampled(T0 + 0.35) == pytest.approx(0.0)
    assert lag.current(T0 + 0.36) == pytest.approx(0.0)
    assert lag.peak_s == pytest.approx(0.2)


def test_an_overdue_sample_counts_as_lag_before_it_fires() -> None:
    lag = LoopLag(0.05)
    lag.arm(T0)
    assert lag.current(T0 + 0.04) == 0.0
    assert lag.current(T0 + 0.30) == pytest.approx(0.25)  # one long iteration, still running


def test_lag_sheds_while_over_the_threshold_only() -> None:
    policy = admission(accept_rate_per_s=0.0)
    policy.lag.arm(T0)
    assert policy.decide(T0 + 0.14, served=0, shedding=0) is None  # 90 ms overdue
    assert policy.decide(T0 + 0.16, served=0, shedding=0) is Shed.LOOP_LAG
    policy.lag.sampled(T0 + 0.16)
    assert policy.decide(T0 + 0.17, served=0, shedding=0) is Shed.LOOP_LAG  # last sample: 110
    policy.lag.sampled(T0 + 0.21)
    assert policy.decide(T0 + 0.22, served=0, shedding=0) is None


def test_lag_threshold_zero_never_sheds_for_lag() -> None:
    policy = admission(accept_rate_per_s=0.0, shed_loop_lag_s=0.0)
    policy.lag.arm(T0)
    assert policy.decide(T0 + 10, served=0, shedding=0) is None


# Retry-After


def test_retry_after_is_jittered_whole_seconds_within_the_base_window() -> None:
    policy = admission()
    values = [policy.retry_after_s(T0) for _ in range(2000)]
    assert set(values) == {1, 2, 3, 4}
    assert min(values.count(v) for v in (1, 2, 3, 4)) > 400  # about uniform


def test_retry_after_window_grows_with_recent_sheds_over_the_rate() -> None:
    policy = admission(accept_rate_per_s=100.0, accept_burst=1)
    for _ in range(2001):
        policy.decide(T0 + 0.5, served=0, shedding=0)  # 1 served, 2000 shed
    values = [policy.retry_after_s(T0 + 0.6) for _ in range(5000)]
    assert min(values) == 1 and max(values) == 20  # 2000 sheds / 100 per s
    assert len(set(values)) == 20
    # Two seconds later, with nothing shed meanwhile, back to the base window.
    assert max(policy.retry_after_s(T0 + 2.6) for _ in range(500)) == 4


def test_retry_after_is_capped() -> None:
    policy = admission(accept_rate_per_s=1.0, accept_burst=1)
    for _ in range(1000):
        policy.decide(T0, served=0, shedding=0)
    assert max(policy.retry_after_s(T0) for _ in range(5000)) == MAX_RETRY_AFTER_S


def test_late_tells_a_handshake_to_wait_while_the_loop_is_late_and_counts_it() -> None:
    policy = admission(accept_rate_per_s=1.0)
    assert not policy.late(T0)  # unarmed: never late
    policy.lag.arm(T0)
    assert not policy.late(T0 + 0.1)
    assert all(policy.late(T0 + 0.2) for _ in range(10))  # 150 ms overdue
    # Counted as sheds: 10 in this second at 1 per s widen the Retry-After window to 10 s.
    assert max(policy.retry_after_s(T0 + 0.2) for _ in range(1000)) == 10
    assert not admission(shed_loop_lag_s=0.0).late(T0 + 10)
