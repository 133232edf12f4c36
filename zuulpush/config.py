"""Build the frozen component configs from a TOML file, `ZUULPUSH_*` environment and flags.

Every setting has one flat key, the name of its field in a component config (`port`,
`api_port`, `secret`, `heartbeat_interval_s`, ...). It is read, lowest precedence first, from:

1. the field's default;
2. the TOML file given with `--config` (top-level keys, or keys inside any table: tables are only
   for grouping, so `[edge] port = 9000` and `port = 9000` mean the same);
3. the environment variable `ZUULPUSH_<KEY>` in upper case (`ZUULPUSH_API_KEYS=a,b`);
4. command-line flags.

Lists (`api_keys`) are comma-separated in the environment; an empty variable counts as unset.
Unknown keys are an error, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from core.tokens import AuthConfig
from registry.config import RegistryConfig
from router.config import ApiConfig, RouterConfig
from zuulpush.edge.config import EdgeConfig

ENV_PREFIX = "ZUULPUSH_"
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The router's seams on Redis, shared by `zuulpush api`, `zuulpush router` and
    `zuulpush edge --redis` (all on the one `redis_url`).

    `claim_idle_s` is the queue's visibility timeout: a router that died with messages taken
    and not done has them claimed by another after this long (a live router must finish a
    batch within it, or the batch may be handled twice).

    `edge_workers`: the edge nodes one `zuulpush edge` runs, each a process of its own under a
    supervisor (`zuulpush.supervisor`) when more than 1.
    """

    router_workers: int = 1
    edge_workers: int = 1
    router_prefix: str = "zp"
    claim_idle_s: float = 30.0
    queue_max_depth: int = 1_000_000


LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class OpsConfig:
    """How a long-running process reports: its log lines (`text`, or `json`: one object per
    line, `zuulpush.logs`), and for `zuulpush router`, which has no HTTP port of its own, where
    it serves `GET /metrics` (`metrics_port` -1: nowhere; 0: a free port, printed)."""

    log_format: str = "text"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = -1

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be -1 (none), 0 (a free port) or a port")


COMPONENTS: tuple[type, ...] = (EdgeConfig, AuthConfig, ApiConfig, RouterConfig, RegistryConfig,
                                FleetConfig, OpsConfig)


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the key and where it came from."""


def known_keys() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for c in COMPONENTS for f in dataclasses.fields(c)}


def load_settings(
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The merged flat settings: file, then environment, then flags (None flags are skipped)."""
    keys = known_keys()
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(_from_toml(Path(config_file), keys))
    env = os.environ if environ is None else environ
    for key, field in keys.items():
        raw = env.get(ENV_PREFIX + key.upper())
        if raw:
            merged[key] = _coerce(raw, field, f"${ENV_PREFIX}{key.upper()}")
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in keys:
            raise ConfigError(f"unknown setting {key!r}")
        merged[key] = _coerce(value, keys[key], f"--{key.replace('_', '-')}")
    return merged


def build(component: type[C], settings: Mapping[str, Any], **overrides: Any) -> C:
    """One component config from the merged settings (plus explicit overrides)."""
    names = {f.name for f in dataclasses.fields(component)}  # type: ignore[arg-type]
    values = {k: v for k, v in settings.items() if k in names}
    values.update(overrides)
    return component(**values)


class Components:
    """Mixin for a frozen dataclass whose fields are component configs (`edge: EdgeConfig`, ...):
    `from_settings` builds every field from the same merged settings, by the field's type."""

    __slots__ = ()

    @classmethod
    def from_settings(cls: type[C], settings: Mapping[str, Any]) -> C:
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: build(hints[f.name], settings)
                      for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def _from_toml(path: Path, keys: Mapping[str, dataclasses.Field[Any]]) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in document.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for name, item in items:
            if name not in keys:
                raise ConfigError(f"unknown setting {name!r} in {path}")
            flat[name] = _coerce(item, keys[name], f"{name} in {path}")
    return flat


def _coerce(value: Any, field: dataclasses.Field[Any], where: str) -> Any:
    kind = _field_type(field)
    try:
        if kind is bool:
            return _to_bool(value)
        if kind is tuple:
            if isinstance(value, str):
                return tuple(item.strip() for item in value.split(",") if item.strip())
            return tuple(str(item) for item in value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {kind.__name__}") from None


def _field_type(field: dataclasses.Field[Any]) -> type:
    hint = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "str")
    base = str(hint).split("[")[0]
    return {"int": int, "float": float, "bool": bool, "str": str, "tuple": tuple}.get(base, str)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


__all__ = ["Components", "ConfigError", "FleetConfig", "OpsConfig", "build", "known_keys",
           "load_settings"]
