"""The shedding and lifetime flags of `zuulpush serve` and `zuulpush edge` reach `EdgeConfig`."""

from __future__ import annotations

import pytest

from zuulpush.cli import build_parser
from zuulpush.cli.options import edge_limit_flags
from zuulpush.config import build, load_settings
from zuulpush.edge.config import EdgeConfig

FLAGS = ["--max-connections", "100", "--hard-max-connections", "120", "--accept-rate", "50.5",
         "--accept-burst", "7", "--shed-loop-lag-ms", "40", "--shed-retry-after-s", "2",
         "--lifetime-min-s", "60", "--lifetime-max-s", "90"]


@pytest.mark.parametrize("command", [["serve"], ["edge", "--redis", "redis://127.0.0.1:1/0"]])
def test_flags_set_the_edge_config(command: list[str]) -> None:
    args = build_parser().parse_args([*command, *FLAGS])
    config = build(EdgeConfig, load_settings(None, edge_limit_flags(args), environ={}))
    assert (config.max_connections, config.hard_max_connections) == (100, 120)
    assert (config.accept_rate_per_s, config.accept_burst) == (50.5, 7)
    assert (config.shed_loop_lag_ms, config.shed_retry_after_s) == (40, 2)
    assert (config.lifetime_min_s, config.lifetime_max_s) == (60.0, 90.0)


def test_unset_flags_leave_the_defaults_and_the_environment() -> None:
    args = build_parser().parse_args(["serve"])
    settings = load_settings(None, edge_limit_flags(args),
                             environ={"ZUULPUSH_ACCEPT_RATE_PER_S": "12"})
    config = build(EdgeConfig, settings)
    assert config.accept_rate_per_s == 12.0
    assert config.lifetime_max_s == EdgeConfig().lifetime_max_s


@pytest.mark.parametrize("bad", [{"lifetime_min_s": 10.0, "lifetime_max_s": 5.0},
                                 {"accept_burst": 0}, {"max_connections": -1},
                                 {"shed_retry_after_s": 0}])
def test_bad_values_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EdgeConfig(**bad)  # type: ignore[arg-type]


def test_lifetime_max_zero_turns_lifetimes_off_whatever_the_min() -> None:
    assert EdgeConfig(lifetime_min_s=1500.0, lifetime_max_s=0.0).lifetime_max_s == 0.0
