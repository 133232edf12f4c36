"""`router.pages.dashboard_stats`: the dashboard's snapshot from node records and counters, no
I/O."""

from __future__ import annotations

from registry.base import NodeInfo, NodeState
from router.pages.dashboard_stats import Rates, Sample, merge_nodes, snapshot
from router.pages.process_stats import ProcessStats


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


def test_in_a_fleet_process_counters_are_summed_over_the_records_with_scope_fleet() -> None:
    records = [ProcessStats.of("api-1", "api", "eu", {"enqueued": 10, "deduped": 2}),
               ProcessStats.of("api-2", "api", "eu", {"enqueued": 5, "deduped": 1}),
               ProcessStats.of("r-1", "router", "eu", {"expired": 3, "taken": 15})]
    snap = snapshot([node("a", delivered=7)], {}, mode="fleet", at_s=1.0, rates=Rates(),
                    processes=records)
    counters = snap["counters"]
    assert counters == {
        "delivered": {"total": 7, "per_s": 0.0, "scope": "fleet"},
        "shed": {"total": 0, "per_s": 0.0, "scope": "fleet"},
        "enqueued": {"total": 15, "per_s": 0.0, "scope": "fleet"},
        "deduped": {"total": 3, "per_s": 0.0, "scope": "fleet"},
        "expired": {"total": 3, "per_s": 0.0, "scope": "fleet"},
        "taken": {"total": 15, "per_s": 0.0, "scope": "fleet"}}


def test_with_no_process_records_yet_the_fleet_counters_show_zero() -> None:
    snap = snapshot([], {}, mode="fleet", at_s=1.0, rates=Rates(), processes=[])
    counters = snap["counters"]
    assert {name: c["total"] for name, c in counters.items()} == {  # type: ignore[attr-defined]
        "delivered": 0, "shed": 0, "enqueued": 0, "deduped": 0, "expired": 0}
    assert {c["scope"] for c in counters.values()} == {"fleet"}  # type: ignore[attr-defined]


def test_process_rates_come_from_deltas_per_process_and_survive_a_restart() -> None:
    rates = Rates(window_s=10.0)

    def at(t: float, *records: ProcessStats) -> dict[str, object]:
        snap = snapshot([], {}, mode="fleet", at_s=t, rates=rates, processes=list(records))
        return snap["counters"]  # type: ignore[return-value]

    def router(process_id: str, expired: int) -> ProcessStats:
        return ProcessStats.of(process_id, "router", "eu", {"expired": expired})

    at(0.0, router("r-1", 100), router("r-2", 50))
    counters = at(2.0, router("r-1", 110), router("r-2", 60))
    assert counters["expired"] == {"total": 170, "per_s": 10.0, "scope": "fleet"}
    # r-2 restarted under a new id (from zero), r-1 left: no negative rate, no spike.
    counters = at(4.0, router("r-3", 4))
    assert counters["expired"]["per_s"] >= 0  # type: ignore[index]
    assert counters["expired"]["total"] == 4  # type: ignore[index]


def test_serve_keeps_its_own_counters_with_scope_process() -> None:
    snap = snapshot([node("a")], {"deduped": 1, "expired": 2}, mode="serve", at_s=1.0,
                    rates=Rates())
    counters = snap["counters"]
    assert counters["expired"] == {"total": 2, "per_s": 0.0,  # type: ignore[index]
                                   "scope": "process"}
    assert "enqueued" not in counters  # type: ignore[operator]
