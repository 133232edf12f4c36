"""Unit tests of `zuulpush.edge.lifetime.Lifetime`: lifetimes drawn visit by visit come out
uniform over the window, whatever the window and the interval."""

from __future__ import annotations

import random

import pytest

from zuulpush.edge.lifetime import Lifetime


def draw(lifetime: Lifetime, rng: random.Random) -> float:
    """One connection's lifetime, as the server draws it: visit 0 at accept, then one visit
    per interval until `due_in` names the moment."""
    visits = 0
    while True:
        delay = lifetime.due_in(visits, rng.random(), rng.random())
        if delay is not None:
            assert 0.0 <= delay < lifetime.interval_s or delay == 0.0
            return visits * lifetime.interval_s + delay
        visits += 1
        assert visits < 10_000


@pytest.mark.parametrize(("low", "high", "interval"), [
    (1500.0, 2100.0, 30.0),   # the defaults: the window is whole intervals
    (1000.0, 1010.0, 30.0),   # a window inside one interval
    (7.0, 100.0, 30.0),       # edges in the middle of intervals
    (0.0, 5.0, 30.0),         # may end before the first visit
    (2.0, 4.0, 0.5),          # the integration tests' heartbeat
])
def test_lifetimes_are_uniform_over_the_window(low: float, high: float, interval: float
                                               ) -> None:
    rng = random.Random(1)
    lifetime = Lifetime(low, high, interval)
    samples = [draw(lifetime, rng) for _ in range(20_000)]
    assert low <= min(samples) and max(samples) <= high
    bins = [0] * 10
    for sample in samples:
        bins[min(9, int((sample - low) / (high - low) * 10))] += 1
    assert all(1700 < count < 2300 for count in bins), bins  # 2000 each, about


def test_a_fixed_lifetime_ends_exactly_then() -> None:
    rng = random.Random(2)
    assert {draw(Lifetime(45.0, 45.0, 30.0), rng) for _ in range(100)} == {45.0}
    assert {draw(Lifetime(60.0, 60.0, 30.0), rng) for _ in range(100)} == {60.0}


def test_no_connection_ends_before_its_window() -> None:
    lifetime = Lifetime(1500.0, 2100.0, 30.0)
    for visits in range(50):  # ages 0 .. 1470 s: the interval after each ends by 1500
        assert lifetime.due_in(visits, 0.0, 0.0) is None
    assert lifetime.due_in(50, 0.0, 0.0) == 0.0


def test_the_last_interval_of_the_window_always_ends() -> None:
    lifetime = Lifetime(1500.0, 2100.0, 30.0)
    assert lifetime.due_in(69, 0.999999, 0.5) == pytest.approx(15.0)
    assert lifetime.due_in(75, 0.999999, 0.5) == 0.0  # a visit past the window: now


def test_max_zero_is_no_lifetime() -> None:
    lifetime = Lifetime(0.0, 0.0, 30.0)
    assert not lifetime.enabled
    assert all(lifetime.due_in(n, 0.0, 0.0) is None for n in range(1000))


def test_a_bad_window_is_refused() -> None:
    with pytest.raises(ValueError):
        Lifetime(10.0, 5.0, 30.0)
    with pytest.raises(ValueError):
        Lifetime(1.0, 5.0, 0.0)
