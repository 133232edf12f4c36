"""`core.auth_throttle`: failed authentications per source address, on a fake clock (the
clock is a number passed in; nothing sleeps)."""

from __future__ import annotations

import math

import pytest

from core.auth_throttle import MAX_SOURCES, FailureLimiter, source_of
from core.errors import AuthThrottled, RateLimited
from zuulpush.edge.config import EdgeConfig

T0 = 5000.0
ROLE = "api_key"


def limiter(failures_max: int = 5, window_s: float = 60.0, **kwargs: int) -> FailureLimiter:
    return FailureLimiter(ROLE, failures_max, window_s, **kwargs)


def fail(limit: FailureLimiter, source: str, times: int, now: float = T0) -> None:
    for _ in range(times):
        limit.failed(source, now)


def refused(limit: FailureLimiter, source: str, now: float) -> AuthThrottled:
    with pytest.raises(AuthThrottled) as info:
        limit.check(source, now)
    return info.value


def test_a_source_may_fail_failures_max_times_and_is_then_refused() -> None:
    limit = limiter(5)
    for _ in range(5):
        limit.check("192.0.2.1", T0)  # not over: nothing raised
        limit.failed("192.0.2.1", T0)
    error = refused(limit, "192.0.2.1", T0)
    assert error.http_status == 429 and isinstance(error, RateLimited)
    assert error.code == "auth_throttled" and error.role == ROLE
    assert error.retry_after_s == pytest.approx(60.0 / 5)  # until one failure has drained
    assert error.headers == (("retry-after", "12"),)
    assert "too many failed" in error.message and "12 s" in error.message


def test_successes_and_checks_never_fill_the_budget() -> None:
    limit = limiter(3)
    for _ in range(1000):
        limit.check("192.0.2.1", T0)  # what a correct request does: check, then no failure
    fail(limit, "192.0.2.1", 2)
    limit.check("192.0.2.1", T0)  # two of three: still let through
    assert limit.wait_s("192.0.2.1", T0) == 0.0


def test_the_budget_comes_back_at_failures_max_per_window() -> None:
    limit = limiter(4, window_s=40.0)  # drains one failure every 10 s
    fail(limit, "192.0.2.1", 4)
    assert limit.wait_s("192.0.2.1", T0) == pytest.approx(10.0)
    assert limit.wait_s("192.0.2.1", T0 + 4) == pytest.approx(6.0)
    limit.check("192.0.2.1", T0 + 10)  # one failure drained: one more try
    limit.failed("192.0.2.1", T0 + 10)
    assert refused(limit, "192.0.2.1", T0 + 10).retry_after_s == pytest.approx(10.0)
    # A whole window without failures: the whole budget again.
    fail(limit, "192.0.2.1", 4, now=T0 + 50)
    refused(limit, "192.0.2.1", T0 + 50)


def test_a_sustained_brute_force_gets_failures_max_per_window_and_no_more() -> None:
    limit = limiter(10, window_s=60.0)
    tried = 0
    for step in range(36_000):  # one attempt every 10 ms for six minutes
        now = T0 + step / 100
        if limit.wait_s("198.51.100.7", now) == 0.0:
            limit.failed("198.51.100.7", now)
            tried += 1
    assert tried == pytest.approx(10 + 6 * 10, abs=1)  # the burst, then 10 a minute


def test_failures_while_racing_past_the_limit_lengthen_the_wait() -> None:
    # Several attempts checked before any failed (a login reads its body in between): each
    # failure still counts, so the source waits for all of them to drain.
    limit = limiter(5, window_s=50.0)
    fail(limit, "192.0.2.1", 8)
    assert limit.wait_s("192.0.2.1", T0) == pytest.approx(4 * 10.0)


def test_sources_are_apart() -> None:
    limit = limiter(2)
    fail(limit, "192.0.2.1", 2)
    refused(limit, "192.0.2.1", T0)
    limit.check("192.0.2.2", T0)
    limit.check("2001:db8::1", T0)


def test_a_clock_that_steps_back_drains_nothing() -> None:
    limit = limiter(2, window_s=20.0)
    fail(limit, "192.0.2.1", 2)
    assert limit.wait_s("192.0.2.1", T0 - 100) == pytest.approx(10.0)
    assert limit.wait_s("192.0.2.1", T0 + 10) == 0.0


def test_failures_max_zero_turns_it_off() -> None:
    limit = limiter(0)
    fail(limit, "192.0.2.1", 10_000)
    limit.check("192.0.2.1", T0)
    assert len(limit) == 0


def test_the_table_is_capped_and_the_stalest_source_goes_first() -> None:
    limit = limiter(3, max_sources=100)
    fail(limit, "10.0.0.0", 3, now=T0)  # the oldest
    for n in range(1, 100):
        limit.failed(f"10.0.0.{n}", T0 + 1)
    assert len(limit) == 100
    refused(limit, "10.0.0.0", T0 + 1)
    limit.failed("10.0.1.0", T0 + 2)  # the 101st source: the stalest is forgotten
    assert len(limit) == 100
    limit.check("10.0.0.0", T0 + 2)
    for n in range(200_000):  # many more addresses: the table stays at its cap
        limit.failed(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", T0 + 3)
    assert len(limit) == 100


def test_a_recent_failure_keeps_a_source_in_the_table() -> None:
    limit = limiter(3, max_sources=3)
    fail(limit, "a", 3)
    fail(limit, "b", 1, now=T0 + 1)
    limit.failed("a", T0 + 2)  # a fails again: now b is the stalest
    fail(limit, "c", 1, now=T0 + 3)
    limit.failed("d", T0 + 4)
    refused(limit, "a", T0 + 4)
    assert len(limit) == 3


def test_drained_sources_are_forgotten() -> None:
    limit = limiter(2, window_s=10.0)
    fail(limit, "192.0.2.1", 2)
    assert len(limit) == 1
    limit.check("192.0.2.1", T0 + 11)  # drained: nothing to remember
    assert len(limit) == 0


def test_the_default_cap() -> None:
    assert limiter().max_sources == MAX_SOURCES == 10_000


@pytest.mark.parametrize(("failures_max", "window_s"), [(-1, 60.0), (5, 0.0), (5, -1.0)])
def test_nonsense_settings_are_refused(failures_max: int, window_s: float) -> None:
    with pytest.raises(ValueError):
        FailureLimiter(ROLE, failures_max, window_s)


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    limit = limiter(3, window_s=1.0)  # one failure drains in 1/3 s
    fail(limit, "192.0.2.1", 3)
    error = refused(limit, "192.0.2.1", T0)
    assert math.ceil(error.retry_after_s) == 1
    assert error.headers == (("retry-after", "1"),)


# sources

@pytest.mark.parametrize(("address", "source"), [
    ("192.0.2.7", "192.0.2.7"),
    ("127.0.0.1", "127.0.0.1"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2::9", "2001:db8:1:2::/64"),
    ("::1", "::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4 on a dual-stack socket: the IPv4 address
    ("fe80::1%eth0", "fe80::/64"),
    ("", ""),
    (None, ""),
    ("not-an-address", "not-an-address"),
])
def test_source_of_groups_ipv6_by_64_and_keeps_ipv4_addresses(address: str | None,
                                                               source: str) -> None:
    assert source_of(address) == source


def test_addresses_of_one_ipv6_64_share_one_budget() -> None:
    limit = limiter(3)
    for host in ("2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:abcd::3"):
        limit.failed(source_of(host), T0)
    refused(limit, source_of("2001:db8:0:1:ffff::4"), T0)
    limit.check(source_of("2001:db8:0:2::1"), T0)  # the next /64 is another source


@pytest.mark.parametrize(("settings", "named"), [
    ({"edge_admin_failures_max": -1}, "edge_admin_failures_max"),
    ({"edge_admin_failures_window_s": 0.0}, "edge_admin_failures_window_s"),
])
def test_the_edge_settings_are_checked(settings: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        EdgeConfig(**settings)  # type: ignore[arg-type]
