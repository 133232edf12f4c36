"""The processes zuulpush runs, one module each:

- `EmbeddedApp` (`zuulpush serve`, `embedded`): edge, push-send API and a router worker in one
  process, in memory;
- `EdgeApp` (`zuulpush edge`, `edge`): one edge node of a fleet, on Redis;
- `ApiApp` (`zuulpush api`, `api`): a fleet's push-send API;
- `RouterApp` (`zuulpush router`, `router`): a fleet's router workers.

Each is built from its frozen config: `await start()`, `describe()` (the banner its command
prints once it serves), `await stop()`. What each opens on Redis, and how regions, process
stats and metrics fit in: docs/operations.md, "Inside the processes".
"""

from __future__ import annotations

from zuulpush.app.api import ApiApp
from zuulpush.app.edge import EdgeApp, EdgeAppConfig
from zuulpush.app.embedded import EmbeddedApp, ServeConfig
from zuulpush.app.fleet import FleetAppConfig
from zuulpush.app.router import RouterApp

__all__ = ["ApiApp", "EdgeApp", "EdgeAppConfig", "EmbeddedApp", "FleetAppConfig", "RouterApp",
           "ServeConfig"]
