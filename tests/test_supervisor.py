"""`zuulpush edge --workers N` without processes: the restart delays, and the flags reaching the
configs (the supervisor itself runs in tests/integration/test_edge_workers.py)."""

from __future__ import annotations

import pytest

from zuulpush.cli import build_parser, main
from zuulpush.config import FleetConfig, build, load_settings
from zuulpush.edge.config import EdgeConfig
from zuulpush.supervisor import Backoff


def test_a_worker_that_ran_long_is_forked_again_at_once() -> None:
    backoff = Backoff(first_s=0.5, max_s=30.0, stable_s=10.0)
    assert backoff.delay_after(3600.0) == 0.0
    assert backoff.delay_after(10.0) == 0.0


def test_quick_exits_in_a_row_double_the_delay_up_to_the_cap_and_a_long_run_resets_it() -> None:
    backoff = Backoff(first_s=0.5, max_s=30.0, stable_s=10.0)
    assert [backoff.delay_after(1.0) for _ in range(9)] == \
        [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.delay_after(60.0) == 0.0
    assert backoff.delay_after(1.0) == 0.5


def test_workers_and_reuse_port_flags_reach_their_configs() -> None:
    args = build_parser().parse_args(["edge", "--redis", "redis://127.0.0.1:1/0",
                                      "--workers", "4", "--reuse-port"])
    settings = load_settings(None, {"edge_workers": args.edge_workers,
                                    "reuse_port": args.reuse_port}, environ={})
    assert build(FleetConfig, settings).edge_workers == 4
    assert build(EdgeConfig, settings).reuse_port is True
    unset = build_parser().parse_args(["edge"])
    assert (unset.edge_workers, unset.reuse_port) == (None, None)
    defaults = load_settings(None, {}, environ={"ZUULPUSH_EDGE_WORKERS": "3"})
    assert build(FleetConfig, defaults).edge_workers == 3
    assert build(EdgeConfig, defaults).reuse_port is False


def test_serve_has_no_workers_option() -> None:
    # One process, in memory: workers would not share the registry, inboxes or queue.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", "2"])


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_fewer_than_one_worker_is_a_configuration_error(
        workers: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("zuulpush.cli.options.start_logging", lambda args, settings: None)
    monkeypatch.setenv("ZUULPUSH_SECRET", "s" * 32)
    assert main(["edge", "--redis", "redis://127.0.0.1:1/0", "--workers", workers]) == 2
    assert "--workers (edge_workers) must be at least 1" in capsys.readouterr().err
