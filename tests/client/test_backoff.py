"""Backoff with full jitter and the server's hints, sans I/O, with seeded random draws."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from zuulpush.client.backoff import Backoff, parse_retry_after


def test_window_doubles_from_base_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=10.0)
    assert [backoff.window_s(n) for n in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert backoff.window_s(10_000) == 10.0  # no float overflow on a long outage


def test_full_jitter_spreads_over_the_whole_window() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0)
    rng = random.Random(7)
    draws = [backoff.delay_s(3, rng) for _ in range(2000)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    # full jitter, not "half plus jitter": the lowest and highest eighths are both used
    assert min(draws) < 1.0 and max(draws) > 7.0
    assert 3.6 < sum(draws) / len(draws) < 4.4


def test_draws_are_reproducible_with_a_seeded_rng() -> None:
    backoff = Backoff()
    first = [backoff.delay_s(n, random.Random(42)) for n in range(5)]
    again = [backoff.delay_s(n, random.Random(42)) for n in range(5)]
    assert first == again


def test_a_floor_is_a_minimum_plus_jitter_and_hints_are_taken_as_they_are() -> None:
    backoff = Backoff(base_s=1.0, cap_s=4.0, hint_cap_s=30.0)
    rng = random.Random(1)
    waits = [backoff.after_floor_s(5.0, 0, rng) for _ in range(500)]
    assert all(5.0 <= w <= 6.0 for w in waits) and max(waits) - min(waits) > 0.5
    assert backoff.hinted_s(1234) == 1.234
    assert backoff.hinted_s(-5) == 0.0
    assert backoff.hinted_s(10**9) == 30.0  # capped: a server cannot park a client for days
    assert 30.0 <= backoff.after_floor_s(10**6, 0, rng) <= 31.0


@pytest.mark.parametrize("kwargs", [{"base_s": 0}, {"base_s": 5, "cap_s": 1},
                                    {"reset_after_s": -1}, {"hint_cap_s": -1}])
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    date = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30.0)
    past = format_datetime(datetime.fromtimestamp(now - 30, UTC), usegmt=True)
    assert parse_retry_after(past, now) == 0.0
    for junk in (None, "", "-3", "1.5", "soon", "Mon, 99 Foo 2024"):
        assert parse_retry_after(junk, now) is None, junk
