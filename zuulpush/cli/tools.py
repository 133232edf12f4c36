"""The commands for trying a server out: `zuulpush token` (sign a device token), `zuulpush send`
(push through the push-send API) and `zuulpush listen` (be a device and print what arrives)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

from core.tokens import issue_token
from zuulpush.cli import options
from zuulpush.config import ConfigError, load_settings

TOKEN = ("Print a signed device token alone on stdout. The secret comes from --config, "
         "ZUULPUSH_SECRET or --secret.")
SEND = ("POST /v1/push. Name targets with --client/--user (repeatable) or --broadcast, narrow "
        "them with --device-type (alone, it names nobody: --broadcast --device-type tv sends to "
        "every tv). Prints the API's JSON answer.")
LISTEN = ("Connect to a device URL such as ws://127.0.0.1:8080/ws?token=TOKEN, print each pushed "
          "message as a JSON line and ack it. Like the SDK it is built on, it reconnects and "
          "resumes after a drain, a connection's end of life or a drop (saying so on stderr); "
          "it stops, exit 1, when replaced by a newer connection of its client id or refused "
          "its token.")


def token_arguments(p: argparse.ArgumentParser) -> None:
    options.config_file(p)
    p.add_argument("--client", required=True, help="client (device) id: claim 'cid'")
    p.add_argument("--user", required=True, help="user id: claim 'sub'")
    p.add_argument("--device-type", required=True, help="device type: claim 'dt'")
    p.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds (default 1 day)")
    p.add_argument("--secret", help="signing secret (prefer ZUULPUSH_SECRET)")


def run_token(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, {"secret": args.secret})
    secret = settings.get("secret")
    if not secret:
        raise ConfigError("no secret: set ZUULPUSH_SECRET, --secret or 'secret' in --config")
    if args.ttl <= 0:
        raise ConfigError("--ttl must be positive")
    print(issue_token(secret, client_id=args.client, user_id=args.user,
                      device_type=args.device_type, ttl_s=args.ttl))
    return 0


def send_arguments(p: argparse.ArgumentParser) -> None:
    options.config_file(p)
    p.add_argument("--client", action="append", default=[], help="client id (repeatable)")
    p.add_argument("--user", action="append", default=[], help="user id (repeatable)")
    p.add_argument("--device-type", action="append", default=[],
                   help="only devices of this type (repeatable)")
    p.add_argument("--broadcast", action="store_true", help="every connected device")
    p.add_argument("--data", default="null", help="JSON payload (default null)")
    p.add_argument("--topic", default="default", help="topic (default 'default')")
    p.add_argument("--priority", choices=["high", "normal", "low"], default="normal",
                   help="the queue it waits in: high goes first, low is never starved "
                        "(default normal)")
    p.add_argument("--ttl", type=int, help="seconds the message may wait for its device")
    p.add_argument("--dedup-key", help="drop repeats of this key within the dedup window")
    p.add_argument("--api", default=None,
                   help="API base URL (default from api_host and api_port, https:// when "
                        "api_tls_cert_file is set; else http://127.0.0.1:8081)")
    p.add_argument("--api-key", help="backend API key (default: first of ZUULPUSH_API_KEYS)")
    options.cacert(p)


def run_send(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    key = args.api_key or next(iter(settings.get("api_keys", ())), None)
    if not key:
        raise ConfigError("no API key: set ZUULPUSH_API_KEYS or pass --api-key")
    scheme = "https" if settings.get("api_tls_cert_file") else "http"
    base = args.api or (f"{scheme}://{settings.get('api_host', '127.0.0.1')}:"
                        f"{settings.get('api_port', 8081)}")
    request = urllib.request.Request(
        base.rstrip("/") + "/v1/push", data=orjson.dumps(_push_body(args)), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    context = options.client_tls(args.cacert)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode() or f"HTTP {exc.code}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"zuulpush: cannot reach {base}: {exc.reason}", file=sys.stderr)
        return 1


def _push_body(args: argparse.Namespace) -> dict[str, Any]:
    """The `POST /v1/push` body the flags describe; `ConfigError` for one the API would refuse
    for naming nobody, or for `--data` that is not JSON."""
    try:
        orjson.loads(args.data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--data is not JSON: {exc}") from None
    _check_targets(args)
    data = orjson.Fragment(args.data)  # sent as given: the API judges it (its nesting limit)
    to: dict[str, Any] = {"clients": args.client, "users": args.user,
                          "device_types": args.device_type, "broadcast": args.broadcast}
    body: dict[str, Any] = {"to": {k: v for k, v in to.items() if v}, "topic": args.topic,
                            "data": data, "priority": args.priority}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.dedup_key:
        body["dedup_key"] = args.dedup_key
    return body


def _check_targets(args: argparse.Namespace) -> None:
    """Refuse, before sending, a push that names nobody (as the API does, saying how)."""
    if args.client or args.user or args.broadcast:
        return
    if args.device_type:
        raise ConfigError("--device-type alone names nobody: add --broadcast to send to every "
                          "device of that type, or name --client or --user")
    raise ConfigError("name --client or --user (repeatable), or --broadcast for every device")


def listen_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="ws:// or wss:// device URL including ?token=")
    p.add_argument("--count", type=int, help="exit after this many messages")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    p.add_argument("--no-reconnect", action="store_true",
                   help="one connection: exit when the server closes it")
    options.cacert(p)


def run_listen(args: argparse.Namespace) -> int:
    from zuulpush.listen import listen

    context = options.client_tls(args.cacert)
    try:
        return asyncio.run(listen(args.url, count=args.count, timeout_s=args.timeout,
                                  reconnect=not args.no_reconnect,
                                  ssl=True if context is None else context))
    except KeyboardInterrupt:
        return 0
