"""The banner of `zuulpush serve` (`EmbeddedApp.describe`): its addresses, then lines to paste.

Every line meant to be pasted works as printed in another terminal, from any directory, with any
PATH: commands name this very `zuulpush` by its absolute path (`zuulpush_command`). Only secrets
made for this run are printed; a configured one is named by its variable instead (README, Quick
start, says what each case prints).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from core.tokens import issue_token
from zuulpush import __version__
from zuulpush.app.sites import schemes

DEMO_CLIENT, DEMO_USER, DEMO_DEVICE_TYPE = "demo-device", "demo-user", "web"
DEMO_TOKEN_TTL_S = 24 * 3600


def zuulpush_command(argv0: str | None = None, executable: str | None = None) -> str:
    """The shell words that run this same `zuulpush` from anywhere: the `zuulpush` script this
    process was started as, by its absolute path, else this interpreter's absolute path with
    `-m zuulpush` (started as `python -m zuulpush`). Neither needs a PATH."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    script = Path(argv0)
    if script.name == "zuulpush" and script.is_file():
        return shlex.quote(str(script.absolute()))
    return shlex.join([os.path.abspath(executable or sys.executable), "-m", "zuulpush"])


def serve_banner(app: Any, generated: Sequence[str], *, config_file: str | None = None) -> str:
    """The banner of `zuulpush serve` for a started `EmbeddedApp` (its `describe`)."""
    config = app.config
    edge = f"{config.edge.host}:{app.edge.port}"
    http, ws = schemes(app.edge.tls)
    api = f"{schemes(app.api.tls)[0]}://{config.api.api_host}:{app.api_port}"
    lines = _addresses(app, generated, edge, api)
    if not config.auth.secret:
        lines += ["", "Device tokens are verified with the configured public key: sign them "
                  "(RS256/ES256) with its private key.", "Push with:", _push_line(app, generated,
                                                                                    api)]
        return "\n".join(lines)
    command = zuulpush_command()
    if "secret" in generated:
        lines += _with_made_secret(config.auth.secret, command, http, ws, edge)
    else:
        lines += _with_configured_secret(command, config_file, ws, edge)
    lines += ["Push to it from another terminal:", _push_line(app, generated, api)]
    if "api_keys" in generated:
        lines += ["The demo page's push API line reads the API key from your shell:",
                  f"  export ZUULPUSH_API_KEY={shlex.quote(config.auth.api_keys[0])}"]
    return "\n".join(lines)


def _addresses(app: Any, generated: Sequence[str], edge: str, api: str) -> list[str]:
    config = app.config
    http, ws = schemes(app.edge.tls)
    lines = [
        f"zuulpush {__version__} serving in one process (in-memory registry, queue, inbox)",
        f"  edge: {ws}://{edge}/ws   sse: {http}://{edge}/sse",
        f"  api:  {api}/v1/push",
        f"  dashboard: {api}/  (log in with the admin key"
        + (f": {config.auth.admin_key})" if "admin_key" in generated else
           ", ZUULPUSH_ADMIN_KEY)"),
    ]
    if app.demo:
        lines.append(f"  demo: open {api}/demo in a browser and push to it")
    lines.append(f"  ready: edge={http}://{edge} api={api} node={app.edge.node_id}")
    if generated:
        names = ", ".join("ZUULPUSH_" + name.upper() for name in generated)
        lines.append(f"  made for this run only (set {names} to keep them)")
    if app.edge.tls is not None or app.api.tls is not None:
        lines.append("  TLS: clients must trust the certificate's issuer (a self-signed "
                     "certificate: curl --cacert FILE, zuulpush listen --cacert FILE)")
    return lines


def _token_args(client_id: str) -> str:
    return shlex.join(["--client", client_id, "--user", DEMO_USER,
                       "--device-type", DEMO_DEVICE_TYPE])


def _with_made_secret(secret: str, command: str, http: str, ws: str, edge: str) -> list[str]:
    token = issue_token(secret, client_id=DEMO_CLIENT, user_id=DEMO_USER,
                        device_type=DEMO_DEVICE_TYPE, ttl_s=DEMO_TOKEN_TTL_S)
    return [
        "",
        f"A device token for client {DEMO_CLIENT!r} (user {DEMO_USER!r}, type "
        f"{DEMO_DEVICE_TYPE!r}), valid {DEMO_TOKEN_TTL_S // 3600} h:",
        f"  {token}",
        "Listen as that device over SSE:",
        f"  curl -N '{http}://{edge}/sse?token={token}'",
        "or over WebSocket:",
        f"  {command} listen '{ws}://{edge}/ws?token={token}'",
        "Make more device tokens with this run's secret (a client id of their own each):",
        f"  ZUULPUSH_SECRET={shlex.quote(secret)} {command} token "
        + _token_args(f"{DEMO_CLIENT}-2"),
    ]


def _with_configured_secret(command: str, config_file: str | None, ws: str,
                            edge: str) -> list[str]:
    source = "ZUULPUSH_SECRET in your shell"
    options = ""
    if config_file is not None:
        source = f"'secret' in {config_file}, or ZUULPUSH_SECRET in your shell"
        options = f"--config {shlex.quote(os.path.abspath(config_file))} "
    token = f"{command} token {options}{_token_args(DEMO_CLIENT)}"
    return [
        "",
        f"Make a device token for client {DEMO_CLIENT!r} (user {DEMO_USER!r}, type "
        f"{DEMO_DEVICE_TYPE!r}) with the configured secret ({source}):",
        f"  {token}",
        "Listen as that device over WebSocket, with such a token:",
        f'  {command} listen "{ws}://{edge}/ws?token=$({token})"',
    ]


def _push_line(app: Any, generated: Sequence[str], api: str) -> str:
    # A configured key is a production secret, and stdout ends up in logs: only a key made for
    # this run is printed (as for the admin key).
    key = app.config.auth.api_keys[0] if "api_keys" in generated else "<api key>"
    body = orjson.dumps({"to": {"clients": [DEMO_CLIENT]}, "topic": "hello",
                         "data": {"text": "Hello from zuulpush"}}).decode()
    return (f"  curl -X POST {api}/v1/push -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}")
