"""`GivenLedger`: the high-water id of each connection and the marks waiting to be written."""

from __future__ import annotations

from dataclasses import dataclass

from zuulpush.edge.given import MAX_PENDING, GivenLedger


@dataclass(eq=False)
class Conn:
    client_id: str
    hw: str = ""


def test_writes_in_id_order_are_marked_with_their_own_ids() -> None:
    ledger, conn = GivenLedger(), Conn("c1")
    for message_id in ("a1", "a2", "a3"):
        ledger.wrote(conn, message_id, stored=True)
    assert conn.hw == "a3"
    assert ledger.due() == []  # recorded since the last interval: not due yet
    assert ledger.due() == [("c1", [("a1", "a1"), ("a2", "a2"), ("a3", "a3")])]
    assert ledger.due() == [] and len(ledger) == 0


def test_a_late_write_is_marked_with_the_high_water_id() -> None:
    ledger, conn = GivenLedger(), Conn("c1")
    ledger.wrote(conn, "a5", stored=True)
    ledger.wrote(conn, "a3", stored=True)  # older than what the connection already got
    ledger.due()
    assert ledger.due() == [("c1", [("a5", "a5"), ("a3", "a5")])]


def test_the_high_water_id_starts_at_the_resume_point_and_counts_broadcasts() -> None:
    ledger, conn = GivenLedger(), Conn("c1", hw="a4")  # resumed after a4
    ledger.wrote(conn, "a2", stored=True)  # a replayed entry older than the resume point
    ledger.wrote(conn, "b7", stored=False)  # a broadcast: in no inbox, but the device may
    ledger.wrote(conn, "a6", stored=True)  # resume from it
    assert conn.hw == "b7"
    ledger.due()
    assert ledger.due() == [("c1", [("a2", "a4"), ("a6", "b7")])]


def test_an_ack_cancels_the_marks_still_waiting() -> None:
    ledger, conn = GivenLedger(), Conn("c1")
    ledger.wrote(conn, "a1", stored=True)
    ledger.due()  # a1 is one interval old
    ledger.wrote(conn, "a2", stored=True)
    ledger.wrote(conn, "a3", stored=True)
    ledger.acked(conn, ["a1", "a3", "zz"])
    ledger.acked(Conn("other"), ["a2"])
    assert ledger.due() == []
    assert ledger.due() == [("c1", [("a2", "a2")])]


def test_a_closed_connections_marks_are_ready_at_once() -> None:
    ledger, one, two = GivenLedger(), Conn("c1"), Conn("c2")
    ledger.wrote(one, "a1", stored=True)
    ledger.due()
    ledger.wrote(one, "a2", stored=True)
    ledger.wrote(two, "a3", stored=True)
    ledger.closed(one)
    ledger.closed(Conn("never-written"))
    assert ledger.ready() == [("c1", [("a1", "a1"), ("a2", "a2")])]
    assert ledger.ready() == []
    ledger.due()
    assert ledger.due() == [("c2", [("a3", "a3")])]


def test_marks_waiting_per_connection_are_bounded() -> None:
    ledger, conn = GivenLedger(), Conn("c1")
    for n in range(MAX_PENDING + 10):
        ledger.wrote(conn, f"a{n:05d}", stored=True)
    assert len(ledger) == MAX_PENDING
    ledger.due()
    [(_, marks)] = ledger.due()
    assert marks[0] == ("a00010", "a00010")  # the oldest dropped: replayed again at worst
