"""The device protocol from the device's side, sans I/O: URLs, messages, acks, close hints."""

from __future__ import annotations

import orjson
import pytest

from zuulpush.client.wire import (
    MAX_ACK_IDS,
    MalformedMessage,
    ack_frames,
    close_hint,
    endpoint,
    hint_ms,
    parse_message,
)
from zuulpush.edge.inbound import parse_acks


def test_endpoints() -> None:
    assert endpoint("http://127.0.0.1:8080", "ws") == "ws://127.0.0.1:8080/ws"
    assert endpoint("https://push.example/", "ws", last_id="01AB") == \
        "wss://push.example/ws?last_id=01AB"
    assert endpoint("wss://push.example/zp", "sse") == "https://push.example/zp/sse"
    assert endpoint("ws://h:1", "ws", last_id="a b&c") == "ws://h:1/ws?last_id=a+b%26c"
    for bad in ("127.0.0.1:8080", "ftp://h/", "http://h/?token=x", "http:///x"):
        with pytest.raises(ValueError):
            endpoint(bad, "ws")
    with pytest.raises(ValueError):
        endpoint("http://h", "longpoll")


def test_parse_message() -> None:
    raw = '{"id":"01A","topic":"news","ts":17,"data":{"x":[1,2]}}'
    message = parse_message(raw)
    assert (message.id, message.topic, message.ts, message.data, message.raw) == \
        ("01A", "news", 17, {"x": [1, 2]}, raw)
    assert parse_message('{"data":null}', fallback_id="ev-1").id == "ev-1"
    assert parse_message('{"id":"01B","data":null}').topic == ""
    for bad in ("nope", "[1]", '{"data":1}', '{"id":7,"data":1}', '{"id":"","data":1}'):
        with pytest.raises(MalformedMessage):
            parse_message(bad)


def test_ack_frames_batch_at_most_a_thousand_ids_and_the_edge_accepts_them() -> None:
    assert list(ack_frames([])) == []
    assert [orjson.loads(f) for f in ack_frames(["a"])] == [{"type": "ack", "id": "a"}]
    ids = [f"id{n}" for n in range(2 * MAX_ACK_IDS + 1)]
    frames = list(ack_frames(ids))
    assert len(frames) == 3
    # the edge's own parser (zuulpush.edge.inbound) reads them back, in order
    assert [i for f in frames for i in parse_acks(f.encode(), text=True)] == ids


def test_close_hints() -> None:
    reason = '{"reason":"shutdown","reconnect_after_ms":1234}'
    assert close_hint(4000, reason) == 1234
    assert close_hint(4002, reason) == 1234
    assert close_hint(4099, '{"reconnect_after_ms":0}') == 0
    assert close_hint(4100, reason) is None  # outside the hint range
    assert close_hint(1001, reason) is None
    assert close_hint(None, reason) is None
    assert close_hint(4000, "shutdown") is None
    for bad in ('{"reconnect_after_ms":-1}', '{"reconnect_after_ms":"5"}',
                '{"reconnect_after_ms":true}', "[1]"):
        assert hint_ms(bad) is None, bad
    assert hint_ms('{"reconnect_after_ms":12.7}') == 12
