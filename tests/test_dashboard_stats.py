"""`router.dashboard_stats`: the dashboard's snapshot from node records and counters, no I/O."""

from __future__ import annotations

from registry.base import NodeInfo, NodeState
from router.dashboard_stats import Rates, Sample, merge_nodes, snapshot


def node(node_id: str, connections: int = 0, *, state: NodeState = NodeState.ACTIVE,
         delivered: int = 0, shed: int = 0, region: str = "eu") -> NodeInfo:
    return NodeInfo(node_id, f"{node_id}:80", region, state, connections,
                    (("phone", connections),), (("ws", connections),),
                    (("delivered", delivered), ("shed", shed)))


def test_the_local_record_replaces_the_registry_copy_and_nodes_are_sorted() -> None:
    merged = merge_nodes([node("b", 1), node("a", 2, region="us")], [node("b", 5)])
    assert [(n.node_id, n.connections) for n in merged] == [("b", 5), ("a", 2)]


def test_snapshot_sums_connections_by_transport_and_device_type() -> None:
    nodes = [node("a", 2), NodeInfo("b", "b:80", "eu", NodeState.DRAINING, 3,
                                    (("tv", 3),), (("sse", 1), ("ws", 2)))]
    snap = snapshot(nodes, {"deduped": 4}, mode="fleet", at_s=10.0, rates=Rates())
    assert snap["connections"] == {"total": 5, "active_nodes": 1,
                                   "by_transport": {"sse": 1, "ws": 4},
                                   "by_device_type": {"phone": 2, "tv": 3}}
    assert [n["state"] for n in snap["nodes"]] == ["active", "draining"]  # type: ignore[index]
    counters = snap["counters"]
    assert counters == {  # a record without totals (an older node) counts as zero
        "delivered": {"total": 0, "per_s": 0.0, "scope": "fleet"},
        "shed": {"total": 0, "per_s": 0.0, "scope": "fleet"},
        "deduped": {"total": 4, "per_s": 0.0, "scope": "process"}}


def test_rates_come_from_deltas_per_source() -> None:
    rates = Rates(window_s=5.0)
    snapshot([node("a", delivered=100)], {"expired": 1}, mode="serve", at_s=0.0, rates=rates)
    snap = snapshot([node("a", delivered=150)], {"expired": 3}, mode="serve", at_s=2.0,
                    rates=rates)
    counters = snap["counters"]
    assert counters["delivered"]["per_s"] == 25.0  # type: ignore[index]
    assert counters["expired"]["per_s"] == 1.0  # type: ignore[index]


def test_a_node_that_leaves_or_restarts_never_makes_a_rate_negative() -> None:
    rates = Rates(window_s=5.0)
    rates.update(Sample(0.0, {("a", "delivered"): 100, ("b", "delivered"): 500}))
    got = rates.update(Sample(1.0, {("a", "delivered"): 110, ("c", "delivered"): 7}))
    assert got == {"delivered": 10.0}  # b left, c is new: neither counts
    got = rates.update(Sample(2.0, {("a", "delivered"): 3}))  # a restarted
    assert got == {"delivered": 0.0}


def test_rates_cover_the_window_only() -> None:
    rates = Rates(window_s=2.0)
    for t, total in [(0.0, 0), (1.0, 100), (2.0, 100), (3.0, 100), (4.0, 104)]:
        got = rates.update(Sample(t, {("a", "delivered"): total}))
    assert got == {"delivered": 2.0}  # (104 - 100) over the last 2 s
    assert rates.update(Sample(4.0, {})) == {}
