"""Unit tests of `zuulpush.edge.inbound`: what a device may send, and how often."""

from __future__ import annotations

import orjson
import pytest

from zuulpush.edge.inbound import MAX_ACK_IDS, MAX_ID_LENGTH, parse_acks, rate_step
from zuulpush.edge.wsframes import Close
from zuulpush.errors import FrameViolation


def close_code(data: bytes, *, text: bool = True) -> int:
    with pytest.raises(FrameViolation) as info:
        parse_acks(data, text=text)
    return info.value.close_code


# acks


def test_single_id() -> None:
    assert parse_acks(b'{"type":"ack","id":"m1"}', text=True) == ["m1"]


def test_many_ids_in_order() -> None:
    assert parse_acks(b'{"type":"ack","ids":["m3","m1","m2"]}', text=True) == ["m3", "m1", "m2"]


def test_ids_win_over_id_when_both_are_given() -> None:
    assert parse_acks(b'{"type":"ack","id":"a","ids":["b"]}', text=True) == ["b"]


def test_extra_fields_and_whitespace_are_allowed() -> None:
    assert parse_acks(b' { "type" : "ack", "id" : "m1", "v": 1 } \n', text=True) == ["m1"]


def test_limits_are_inclusive() -> None:
    ids = [f"{i:0{MAX_ID_LENGTH}d}" for i in range(MAX_ACK_IDS)]
    assert parse_acks(orjson.dumps({"type": "ack", "ids": ids}), text=True) == ids


def test_binary_frame_is_1003() -> None:
    assert close_code(b'{"type":"ack","id":"m1"}', text=False) == Close.UNSUPPORTED_DATA


@pytest.mark.parametrize("data", [b"", b"ack", b"{", b'{"type":"ack",}', b"[1,]", b"NaN"])
def test_non_json_is_1008(data: bytes) -> None:
    assert close_code(data) == Close.POLICY_VIOLATION


@pytest.mark.parametrize(
    "message",
    [[], ["ack"], "ack", 1, None, {}, {"type": "nack", "id": "m1"}, {"type": "ACK", "id": "m"},
     {"id": "m1"}, {"type": "ack"}, {"type": "ack", "ids": "m1"}, {"type": "ack", "ids": []},
     {"type": "ack", "ids": None}, {"type": "ack", "ids": {"m1": True}}],
)
def test_wrong_shape_is_1008(message: object) -> None:
    assert close_code(orjson.dumps(message)) == Close.POLICY_VIOLATION


def test_too_many_ids_is_1008() -> None:
    ids = [f"m{i}" for i in range(MAX_ACK_IDS + 1)]
    assert close_code(orjson.dumps({"type": "ack", "ids": ids})) == Close.POLICY_VIOLATION


@pytest.mark.parametrize("bad", [1, None, "", "x" * (MAX_ID_LENGTH + 1), ["m"], {"id": "m"}])
def test_bad_id_is_1008(bad: object) -> None:
    assert close_code(orjson.dumps({"type": "ack", "id": bad})) == Close.POLICY_VIOLATION
    assert close_code(orjson.dumps({"type": "ack", "ids": ["ok", bad]})) == Close.POLICY_VIOLATION


# rate


def test_burst_is_allowed_within_a_window_then_1008() -> None:
    # burst 5 at 1/s: windows of 5 s, [100, 105) here.
    state = 0
    for _ in range(5):
        state = rate_step(state, 100.0, rate_per_s=1.0, burst=5)
    with pytest.raises(FrameViolation) as info:
        rate_step(state, 104.9, rate_per_s=1.0, burst=5)
    assert info.value.close_code == Close.POLICY_VIOLATION


def test_a_new_window_resets_the_count() -> None:
    state = 0
    for _ in range(5):
        state = rate_step(state, 100.0, rate_per_s=1.0, burst=5)
    for now in (105.0, 105.5, 106.0, 107.0, 109.9):
        state = rate_step(state, now, rate_per_s=1.0, burst=5)
    with pytest.raises(FrameViolation):
        rate_step(state, 109.95, rate_per_s=1.0, burst=5)


def test_steady_rate_at_the_limit_never_trips() -> None:
    state = 0
    for i in range(1000):
        state = rate_step(state, 1000.0 + i / 50, rate_per_s=50.0, burst=200)


def test_any_old_state_starts_a_fresh_count() -> None:
    stale = rate_step(0, 10.0, rate_per_s=1.0, burst=3)
    state = rate_step(stale, 12345.0, rate_per_s=1.0, burst=3)
    state = rate_step(state, 12345.0, rate_per_s=1.0, burst=3)
    state = rate_step(state, 12345.0, rate_per_s=1.0, burst=3)
    with pytest.raises(FrameViolation):
        rate_step(state, 12345.0, rate_per_s=1.0, burst=3)


def test_burst_of_one() -> None:
    state = rate_step(0, 10.0, rate_per_s=2.0, burst=1)  # windows of 0.5 s
    with pytest.raises(FrameViolation):
        rate_step(state, 10.4, rate_per_s=2.0, burst=1)
    rate_step(state, 10.5, rate_per_s=2.0, burst=1)
