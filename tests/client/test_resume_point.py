"""`ResumePoint`: where a device resumes, with acks in order and out of order."""

from __future__ import annotations

from zuulpush.client.resume import ResumePoint


def test_in_order_the_point_is_the_last_processed() -> None:
    point = ResumePoint("a0")
    for message_id in ("a1", "a2"):
        point.received(message_id)
        point.processed(message_id)
        assert point.value == message_id


def test_out_of_order_acks_stop_at_the_first_open_message() -> None:
    point = ResumePoint()
    for message_id in ("a1", "a3", "a2", "a4"):  # arrival order, not id order
        point.received(message_id)
    point.processed("a4")
    point.processed("a3")
    assert point.value is None  # a1 not yet: resuming after a4 would lose it on a restart
    point.processed("a1")
    assert point.value == "a3"  # a2 arrived after a3 and is still open
    point.processed("a2")
    assert point.value == "a4"


def test_an_id_never_received_counts_only_when_nothing_is_open() -> None:
    point = ResumePoint()
    point.processed("x9")
    assert point.value == "x9"
    point.received("a1")
    point.processed("x10")
    assert point.value == "x9"


def test_the_open_messages_are_bounded() -> None:
    point = ResumePoint(capacity=3)
    for n in range(5):
        point.received(f"a{n}")
    point.processed("a4")
    assert point.value is None  # a2 and a3 are still open
    point.processed("a2")
    point.processed("a3")
    assert point.value == "a4"
