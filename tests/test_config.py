"""Settings: defaults, then the TOML file, then ZUULPUSH_* environment, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.tokens import AuthConfig
from zuulpush.config import ConfigError, build, load_settings
from zuulpush.edge.config import EdgeConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zuulpush.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_given() -> None:
    assert load_settings(environ={}) == {}
    assert build(EdgeConfig, {}) == EdgeConfig()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 9000\napi_port = 9001\nhost = "127.0.0.2"\n')
    settings = load_settings(path, {"port": 9100},
                             environ={"ZUULPUSH_PORT": "9050", "ZUULPUSH_API_PORT": "9051"})
    assert (settings["port"], settings["api_port"], settings["host"]) == (9100, 9051, "127.0.0.2")


def test_tables_only_group_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[edge]\nheartbeat_interval_s = 5\n[auth]\napi_keys = ["a", "b"]\n')
    settings = load_settings(path, environ={})
    assert settings == {"heartbeat_interval_s": 5.0, "api_keys": ("a", "b")}
    assert build(AuthConfig, settings).api_keys == ("a", "b")


def test_environment_values_are_typed() -> None:
    settings = load_settings(environ={
        "ZUULPUSH_API_KEYS": "k1, k2,", "ZUULPUSH_ECHO": "yes", "ZUULPUSH_PORT": "81",
        "ZUULPUSH_HEARTBEAT_INTERVAL_S": "2.5", "ZUULPUSH_SECRET": "s" * 32})
    assert settings == {"api_keys": ("k1", "k2"), "echo": True, "port": 81,
                        "heartbeat_interval_s": 2.5, "secret": "s" * 32}


def test_none_flags_are_not_given() -> None:
    assert load_settings(flags={"port": None, "echo": None}, environ={}) == {}


@pytest.mark.parametrize("source", ["file", "flag"])
def test_an_unknown_key_is_an_error(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError, match="colour"):
        if source == "file":
            load_settings(write(tmp_path, "colour = 1\n"), environ={})
        else:
            load_settings(flags={"colour": 1}, environ={})


@pytest.mark.parametrize("env, where", [
    ({"ZUULPUSH_PORT": "eighty"}, "ZUULPUSH_PORT"),
    ({"ZUULPUSH_ECHO": "maybe"}, "ZUULPUSH_ECHO"),
    ({"ZUULPUSH_PORT": "80.5"}, "ZUULPUSH_PORT"),
])
def test_a_bad_value_names_where_it_came_from(env: dict[str, str], where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        load_settings(environ=env)


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(write(tmp_path, "port = \n"), environ={})


def test_ops_settings_are_checked() -> None:
    from zuulpush.config import OpsConfig
    settings = load_settings(environ={"ZUULPUSH_LOG_FORMAT": "json",
                                      "ZUULPUSH_METRICS_PORT": "0"})
    assert build(OpsConfig, settings) == OpsConfig(log_format="json", metrics_port=0)
    with pytest.raises(ValueError, match="log_format"):
        OpsConfig(log_format="xml")
    with pytest.raises(ValueError, match="metrics_port"):
        OpsConfig(metrics_port=-2)
