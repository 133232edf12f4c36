"""Unit tests of `zuulpush.edge.wheel.TimerWheel`, driven by hand with explicit `now` values."""

from __future__ import annotations

import itertools
from collections import Counter

from zuulpush.edge.wheel import TimerWheel

T0 = 1000.0
PERIOD = 8.0  # with min_tick_s=1.0: 8 slots of exactly 1 s, so times add up exactly


def wheel(now: float = T0) -> TimerWheel[str]:
    return TimerWheel(PERIOD, now=now, min_tick_s=1.0)


def visits(w: TimerWheel[str], start: float, end: float) -> list[tuple[float, str]]:
    """(tick time, member) for every visit at each whole second in (start, end]."""
    seen = []
    now = start
    while now < end:
        now += 1.0
        seen += [(now, member) for member in w.due(now)]
    return seen


def test_slots_and_tick() -> None:
    assert (len(wheel()._buckets), wheel().tick_s) == (8, 1.0)
    big = TimerWheel[str](30.0, now=0.0)
    assert len(big._buckets) == 256 and abs(big.tick_s - 30.0 / 256) < 1e-12
    tiny = TimerWheel[str](0.01, now=0.0)
    assert len(tiny._buckets) == 1 and tiny.tick_s == 0.01


def test_added_member_is_first_visited_a_full_period_later() -> None:
    w = wheel()
    w.add("a")
    assert visits(w, T0, T0 + PERIOD - 1) == []
    assert list(w.due(T0 + PERIOD)) == ["a"]


def test_every_member_is_visited_once_per_period_spread_over_the_slots() -> None:
    w = wheel()
    added: dict[str, float] = {}
    now = T0
    for i in range(16):  # two members per second, added mid-tick
        now = T0 + i / 2 + 0.25
        list(w.due(now))
        member = f"m{i}"
        w.add(member)
        added[member] = now
    seen = visits(w, T0 + 7.0, T0 + 7.0 + 3 * PERIOD)  # ticks 1008 .. 1031
    first = {m: min(t for t, n in seen if n == m) for m in added}
    # Everyone once per period, three periods in a row.
    assert Counter(member for _, member in seen) == {m: 3 for m in added}
    for member in added:
        times = sorted(t for t, n in seen if n == member)
        assert [b - a for a, b in itertools.pairwise(times)] == [PERIOD, PERIOD]
    # Each first visit comes a period after its add, to within one tick.
    assert all(PERIOD - 1.0 <= first[m] - added[m] <= PERIOD for m in added)
    # Spread: members added in different seconds are visited in different ticks.
    per_tick = Counter(t for t, _ in seen)
    assert sorted(per_tick) == [T0 + 8.0 + i for i in range(3 * int(PERIOD))]
    assert set(per_tick.values()) == {2}


def test_member_added_right_at_a_tick_waits_exactly_a_period() -> None:
    w = wheel()
    list(w.due(T0 + 3.0))
    w.add("a")
    assert visits(w, T0 + 3.0, T0 + 3.0 + PERIOD) == [(T0 + 3.0 + PERIOD, "a")]


def test_due_catches_up_after_a_late_call() -> None:
    w = wheel()
    w.add("a")
    list(w.due(T0 + 4.5))
    w.add("b")
    assert sorted(w.due(T0 + 19.0)) == ["a", "a", "b"]  # a at 1008 and 1016, b at 1012


def test_discard_removes_a_member() -> None:
    w = wheel()
    slot = w.add("a")
    w.add("b")
    w.discard("a", slot)
    w.discard("a", slot)  # idempotent
    assert list(w.due(T0 + PERIOD)) == ["b"]
    assert len(w) == 1


def test_members_discarded_while_iterating_due_are_not_visited() -> None:
    w = wheel()
    slots = {m: w.add(m) for m in "abcd"}  # added together: one bucket
    visited = []
    for member in w.due(T0 + PERIOD):
        visited.append(member)
        for other, slot in slots.items():  # the first one visited drops the others
            if other != member:
                w.discard(other, slot)
    assert len(visited) == 1
    assert len(w) == 1


def test_member_of_a_later_bucket_discarded_while_iterating_due_is_not_visited() -> None:
    w = wheel()
    slot_a = w.add("a")
    list(w.due(T0 + 1.0))
    slot_b = w.add("b")
    visited = []
    for member in w.due(T0 + PERIOD + 1.0):  # a's tick, then b's, in one call
        visited.append(member)
        w.discard("b", slot_b)
    assert visited == ["a"]
    assert list(w.members()) == ["a"] and slot_a != slot_b


def test_discard_self_and_add_while_iterating_due() -> None:
    w = wheel()
    slot = w.add("old")
    for member in w.due(T0 + PERIOD):
        w.discard(member, slot)
        w.add("new")  # not visited in this pass; a full period from now
    assert visits(w, T0 + PERIOD, T0 + 2 * PERIOD - 1) == []
    assert list(w.due(T0 + 2 * PERIOD)) == ["new"]


def test_members_and_len() -> None:
    w = wheel()
    w.add("a")
    list(w.due(T0 + 2.0))
    slot_b = w.add("b")
    w.add("c")
    assert sorted(w.members()) == ["a", "b", "c"]
    assert len(w) == 3
    for member in w.members():  # a snapshot: discarding meanwhile is safe
        if member == "b":
            w.discard("b", slot_b)
    assert sorted(w.members()) == ["a", "c"]


def test_discarding_and_adding_again_in_one_tick_is_one_member() -> None:
    w = wheel()
    slot = w.add("a")
    w.discard("a", slot)
    assert w.add("a") == slot
    assert len(w) == 1
    assert list(w.due(T0 + PERIOD)) == ["a"]
    assert list(w.due(T0 + 2 * PERIOD)) == ["a"]


def test_a_discarded_member_is_dropped_at_its_buckets_next_visit() -> None:
    w = wheel()
    slots = {m: w.add(m) for m in "abc"}
    w.discard("b", slots["b"])
    assert len(w) == 2 and sorted(w.members()) == ["a", "c"]
    assert list(w.due(T0 + PERIOD)) == ["a", "c"]
    assert w._buckets[slots["a"]] == ["a", "c"] and not w._gone[slots["a"]]
