"""Node records carry connections by transport and the edge's totals, in Redis and in the
replication stream; records written before those existed still decode."""

from __future__ import annotations

import orjson

from registry.base import NodeInfo, NodeState
from registry.changes import NodeBeat, decode, encode
from registry.redis_layout import decode_node, encode_node

NODE = NodeInfo("n1", "10.0.0.1:8080", "eu", NodeState.DRAINING, 3, (("phone", 2), ("tv", 1)),
                (("sse", 1), ("ws", 2)), (("delivered", 40), ("shed", 5)))


def test_a_node_record_round_trips() -> None:
    assert decode_node(encode_node(NODE)) == NODE


def test_an_older_node_record_decodes_without_transports_or_totals() -> None:
    old = orjson.dumps(["n1", "a:1", "eu", "active", 2, [["phone", 2]]])
    assert decode_node(old) == NodeInfo("n1", "a:1", "eu", NodeState.ACTIVE, 2, (("phone", 2),))


def test_a_node_change_round_trips_and_an_older_one_decodes() -> None:
    assert decode(encode(NodeBeat(NODE, 123), "r1")) == ("r1", NodeBeat(NODE, 123))
    old = orjson.dumps({"op": "node", "o": "r1", "x": 5,
                        "n": ["n1", "a:1", "eu", "active", 2, [["phone", 2]]]})
    assert decode(old) == ("r1", NodeBeat(
        NodeInfo("n1", "a:1", "eu", NodeState.ACTIVE, 2, (("phone", 2),)), 5))
