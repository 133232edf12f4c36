"""Dropping repeats by id in bounded memory."""

from __future__ import annotations

import pytest

from zuulpush.client.dedup import Deduper


def test_repeats_are_refused_and_memory_is_bounded() -> None:
    dedup = Deduper(capacity=3)
    assert [dedup.admit(i) for i in ("a", "b", "a", "c", "b")] == [True, True, False, True, False]
    assert dedup.admit("d") and len(dedup) == 3
    assert "a" not in dedup  # the oldest is forgotten first
    assert dedup.admit("a")  # so it gets through again: at least once, never silently lost


def test_an_older_id_that_was_never_seen_is_not_taken_for_a_repeat() -> None:
    # ids order by the clock of the process that made them; a late one from a host whose
    # clock runs behind is a new message, not a repeat
    dedup = Deduper(capacity=2)
    for message_id in ("05", "06", "07"):
        dedup.admit(message_id)
    assert dedup.admit("01")


def test_processed_marks() -> None:
    dedup = Deduper()
    dedup.admit("a")
    assert not dedup.processed("a")
    dedup.mark_processed("a")
    dedup.mark_processed("never-admitted")
    assert dedup.processed("a") and not dedup.processed("never-admitted")


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Deduper(0)
