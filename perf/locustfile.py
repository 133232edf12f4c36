"""Locust kit for zuulpush: devices that hold connections, backends that push to them.

- `DeviceUser` holds one WebSocket (or, for `--sse-share` of them, one SSE stream) to the edge
  named by `--host`, answers the server's pings (websocket-client does), acks what it gets
  (WebSocket only; batched every `--ack-interval-ms`, well inside the edge's inbound rate limit)
  and reports each message as request type `PUSH` (`ws push`, `sse push`) with response time
  = arrival - the message's `ts` (the API's clock when it accepted the push, whole ms). Connects
  are `CONNECT` (`ws connect`, `sse connect`): the handshake time, or a failure; a connection the
  server ends is a `DISCONNECT` named by its close code (a failure unless it is a go-away, 4000),
  and the device connects again (after the go-away's `reconnect_after_ms`, or 0.5-2 s).
- `BackendUser` (`--backend-users` of them, a fixed count) POSTs `/v1/push` and `/v1/push/batch`
  to `--api-url` with `--api-key`, at `--push-rate` per second each, choosing per request a target
  kind by `--push-mix` (one client, one user, a broadcast narrowed to `--device-type`, or a batch
  of `--batch-size` single-client messages) and a priority by `--priorities`.

Targets are the devices this locust process holds connected at that moment (client ids are
`<prefix>-<n>`, `--devices-per-user` of them share a user id): a backend never pushes to a device
that is not there. With `--processes` or `--worker`, each process only targets its own devices
(broadcasts reach everyone's). See perf/README.md.

    locust -f perf/locustfile.py --headless -u 200 -r 50 -t 60s \\
        --host http://127.0.0.1:8080 --api-url http://127.0.0.1:8081
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import random
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import gevent
import requests
import websocket
from locust import FastHttpUser, User, constant, constant_throughput, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

from core.tokens import issue_token

DEFAULT_EDGE = "http://127.0.0.1:8080"
DEFAULT_API = "http://127.0.0.1:8081"
TARGET_KINDS = ("client", "user", "broadcast", "batch")
PRIORITIES = ("high", "normal", "low")
GO_AWAY = 4000
IDLE_RECV_S = 1.0
"""How long a WebSocket read waits when no ack is due: the task returns between reads, so a
stopping test ends the user within this."""
SSE_READ_TIMEOUT_S = 120.0
"""An SSE stream sends a keepalive every heartbeat interval (30 s by default); silence this long
means it is dead."""
RECENT_IDS = 1024
"""Message ids a device remembers to tell a repeat (at-least-once delivery) from a new message."""


# configuration


@dataclass(frozen=True, slots=True)
class KitConfig:
    """What the users read, built from locust's parsed options at each test start."""

    edge_url: str
    api_url: str
    api_key: str
    secret: str
    id_prefix: str
    device_type: str
    devices_per_user: int
    sse_share: float
    ack_interval_ms: float
    connect_timeout_s: float
    backend_users: int
    push_rate_per_s: float
    push_mix: tuple[tuple[str, float], ...]
    priorities: tuple[tuple[str, float], ...]
    batch_size: int
    push_ttl_s: int
    topic: str

    @classmethod
    def from_options(cls, options: Any, host: str | None) -> KitConfig:
        return cls(
            edge_url=(host or DEFAULT_EDGE).rstrip("/"),
            api_url=options.api_url.rstrip("/"),
            api_key=options.api_key or _first(os.environ.get("ZUULPUSH_API_KEYS", "")),
            secret=options.secret or os.environ.get("ZUULPUSH_SECRET", ""),
            id_prefix=options.id_prefix or f"locust-{os.getpid()}-{os.urandom(2).hex()}",
            device_type=options.device_type,
            devices_per_user=max(1, options.devices_per_user),
            sse_share=min(1.0, max(0.0, options.sse_share)),
            ack_interval_ms=max(0.0, options.ack_interval_ms),
            connect_timeout_s=options.connect_timeout_s,
            backend_users=max(0, options.backend_users),
            push_rate_per_s=options.push_rate,
            push_mix=parse_weights(options.push_mix, TARGET_KINDS, "--push-mix"),
            priorities=parse_weights(options.priorities, PRIORITIES, "--priorities"),
            batch_size=max(1, options.batch_size),
            push_ttl_s=options.push_ttl_s,
            topic=options.topic,
        )


def _first(keys: str) -> str:
    return keys.split(",")[0].strip()


def parse_weights(text: str, names: Sequence[str], option: str) -> tuple[tuple[str, float], ...]:
    """`"client:6,user:2"` -> (("client", 6.0), ("user", 2.0)); names not given weigh 0.
    Raises ValueError naming `option` on an unknown name, a bad number or no positive weight."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition(":")
        if name not in names:
            raise ValueError(f"{option}: unknown {name!r} (one of {', '.join(names)})")
        try:
            weights[name] = float(value or 1)
        except ValueError:
            raise ValueError(f"{option}: {value!r} is not a number") from None
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"{option}: give at least one positive weight, e.g. {names[0]}:1")
    return tuple((name, weights[name]) for name in names if weights.get(name, 0) > 0)


def choose(weights: tuple[tuple[str, float], ...]) -> str:
    return random.choices([n for n, _ in weights], [w for _, w in weights])[0]


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    add = parser.add_argument  # (not a group: only the parser takes locust's is_secret)
    add("--api-url", default=DEFAULT_API, help="push-send API base URL (BackendUser)")
    add("--api-key", default="", is_secret=True,
        help="API key (default: first of $ZUULPUSH_API_KEYS)")
    add("--secret", default="", is_secret=True,
        help="HS256 secret to sign device tokens (default: $ZUULPUSH_SECRET)")
    add("--id-prefix", default="", help="client id prefix (default: locust-<pid>-<random>)")
    add("--device-type", default="locust", help="device type of the devices' tokens")
    add("--devices-per-user", type=int, default=2, help="devices that share one user id")
    add("--sse-share", type=float, default=0.0, help="share of devices on SSE (0..1)")
    add("--ack-interval-ms", type=float, default=50.0,
        help="WebSocket acks are sent together at most this often (0: each at once)")
    add("--connect-timeout-s", type=float, default=10.0, help="device handshake timeout")
    add("--backend-users", type=int, default=1, help="BackendUsers (a fixed count of -u)")
    add("--push-rate", type=float, default=10.0,
        help="requests per second per BackendUser (0: as fast as it can)")
    add("--push-mix", default="client:6,user:2,broadcast:1,batch:1",
        help="weights of the target kinds: client, user, broadcast, batch")
    add("--priorities", default="high:1,normal:8,low:1", help="weights of high, normal, low")
    add("--batch-size", type=int, default=10, help="messages per /v1/push/batch")
    add("--push-ttl-s", type=int, default=60, help="ttl of each pushed message")
    add("--topic", default="locust", help="topic of each pushed message")


# the devices this process holds


class Fleet:
    """Client ids handed out in this process, and which of them are connected now.
    Picks are O(1): connected ids live in a list, removed by swapping with the last."""

    def __init__(self, prefix: str, devices_per_user: int) -> None:
        self._prefix = prefix
        self._per_user = devices_per_user
        self._seq = itertools.count()
        self._ids: list[str] = []
        self._index: dict[str, int] = {}

    def new_identity(self) -> tuple[int, str, str]:
        """A number, and from it a client id no other user of this process has, and its user."""
        n = next(self._seq)
        return n, f"{self._prefix}-{n}", self.user_of(n)

    def user_of(self, n: int) -> str:
        return f"{self._prefix}-u{n // self._per_user}"

    def connected(self, client_id: str) -> None:
        if client_id not in self._index:
            self._index[client_id] = len(self._ids)
            self._ids.append(client_id)

    def disconnected(self, client_id: str) -> None:
        i = self._index.pop(client_id, None)
        if i is None:
            return
        last = self._ids.pop()
        if last != client_id:
            self._ids[i] = last
            self._index[last] = i

    def __len__(self) -> int:
        return len(self._ids)

    def pick_client(self) -> str:
        return random.choice(self._ids)

    def pick_user(self) -> str:
        """The user of a connected device (users with more devices are picked more often)."""
        client = self.pick_client()
        return self.user_of(int(client.rsplit("-", 1)[1]))


@dataclass(slots=True)
class Kit:
    config: KitConfig
    fleet: Fleet


_KITS: weakref.WeakKeyDictionary[Environment, Kit] = weakref.WeakKeyDictionary()


def kit_of(environment: Environment) -> Kit:
    """This environment's config and fleet (made at test start, or here when run without one)."""
    if environment not in _KITS:
        _start_kit(environment)
    return _KITS[environment]


@events.test_start.add_listener
def _start_kit(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options or _defaults()
    config = KitConfig.from_options(options, environment.host or DeviceUser.host)
    if isinstance(environment.runner, WorkerRunner):  # workers share the master's --id-prefix
        prefix = f"{config.id_prefix}-w{environment.runner.worker_index}"
        config = dataclasses.replace(config, id_prefix=prefix)
    if not config.secret:
        raise SystemExit("zuulpush kit: no device-token secret: set ZUULPUSH_SECRET or --secret")
    BackendUser.fixed_count = config.backend_users
    _KITS[environment] = Kit(config, Fleet(config.id_prefix, config.devices_per_user))


def _defaults() -> Any:
    """The options' defaults, for an Environment made without locust's parser (run_single_user)."""
    from locust.argument_parser import get_parser

    return get_parser().parse_args([])


# reporting


def report(environment: Environment, request_type: str, name: str, response_time_ms: float,
           length: int = 0, exception: BaseException | None = None) -> None:
    environment.events.request.fire(
        request_type=request_type, name=name, response_time=response_time_ms,
        response_length=length, exception=exception, context={})


class Closed(Exception):
    """The server ended the connection: `code` (WebSocket close code, or SSE reconnect code)
    and the reconnect hint it gave, if any."""

    def __init__(self, code: int | None, reason: str, reconnect_after_ms: int | None) -> None:
        super().__init__(f"closed {code}: {reason}" if code else f"closed: {reason}")
        self.code = code
        self.reconnect_after_ms = reconnect_after_ms


# one device's connection, per transport


class Connection(Protocol):
    """A device's connection (strategy per transport): receive messages, ack them, close."""

    name: str

    def receive(self, ack_due_s: float | None) -> list[bytes]:
        """Message payloads (JSON objects) that arrived; [] when none did within `ack_due_s`
        (or a read interval). Raises `Closed` when the server ended the stream."""
        ...

    def ack(self, ids: list[str]) -> None: ...

    def close(self) -> None: ...


class WsConnection:
    """WebSocket on websocket-client: blocking socket calls, which locust's gevent makes
    cooperative. Pings are answered inside `recv_data`."""

    name = "ws"
    __slots__ = ("_ws",)

    def __init__(self, url: str, token: str, timeout_s: float) -> None:
        ws_url = url.replace("http", "ws", 1) + "/ws?token=" + quote(token)
        self._ws = websocket.create_connection(ws_url, timeout=timeout_s, enable_multithread=False)

    def receive(self, ack_due_s: float | None) -> list[bytes]:
        self._ws.settimeout(IDLE_RECV_S if ack_due_s is None else max(ack_due_s, 0.001))
        try:
            opcode, data = self._ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return []
        except (websocket.WebSocketConnectionClosedException, OSError) as e:
            raise Closed(None, str(e) or type(e).__name__, None) from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise _ws_closed(data)
        return [data]

    def ack(self, ids: list[str]) -> None:
        body = {"type": "ack", "id": ids[0]} if len(ids) == 1 else {"type": "ack", "ids": ids}
        self._ws.send(json.dumps(body))

    def close(self) -> None:
        try:
            self._ws.close(timeout=1)
        except (websocket.WebSocketException, OSError):
            self._ws.shutdown()


def _ws_closed(data: bytes) -> Closed:
    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
    reason = data[2:].decode(errors="replace")
    hint = None
    if code == GO_AWAY:  # go-away: reason is {"reason", "reconnect_after_ms"}
        try:
            hint = int(json.loads(reason)["reconnect_after_ms"])
        except (ValueError, KeyError, TypeError):
            hint = None
    return Closed(code, reason, hint)


class SseConnection:
    """An SSE stream read with `requests` (streaming). SSE devices do not ack on the stream:
    they resume with `Last-Event-ID`, which this sends when it connects again."""

    name = "sse"
    __slots__ = ("_chunks", "_parser", "_response")

    def __init__(self, url: str, token: str, timeout_s: float, last_id: str | None) -> None:
        session = requests.Session()
        session.trust_env = False  # loopback tests: never through an environment proxy
        headers = {"Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        self._response = session.get(f"{url}/sse", params={"token": token}, headers=headers,
                                     stream=True, timeout=(timeout_s, SSE_READ_TIMEOUT_S))
        self._response.raise_for_status()
        self._chunks: Iterator[bytes] = self._response.iter_content(chunk_size=None)
        self._parser = SseParser()

    def receive(self, ack_due_s: float | None) -> list[bytes]:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            raise Closed(None, "stream ended", None) from None
        except requests.RequestException as e:
            raise Closed(None, str(e), None) from None
        messages = []
        for name, data in self._parser.feed(chunk):
            if name == "reconnect":
                raise _sse_closed(data)
            if name == "message":
                messages.append(data)
        return messages

    def ack(self, ids: list[str]) -> None:
        pass  # acked by resuming with Last-Event-ID

    def close(self) -> None:
        self._response.close()


def _sse_closed(data: bytes) -> Closed:
    try:
        body = json.loads(data)
        return Closed(int(body["code"]), str(body.get("reason", "")),
                      body.get("reconnect_after_ms"))
    except (ValueError, KeyError, TypeError):
        return Closed(None, data.decode(errors="replace"), None)


class SseParser:
    """Server-Sent Events, sans I/O: feed bytes, get (event name, data) of complete events.
    Comments (keepalives) and `retry:`-only blocks give nothing."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self._buffer += data.replace(b"\r\n", b"\n")
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        return [event for block in blocks if (event := _parse_block(block)) is not None]


def _parse_block(block: bytes) -> tuple[str, bytes] | None:
    name, data = "message", []
    for line in block.split(b"\n"):
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"event":
            name = value.decode(errors="replace")
        elif field == b"data":
            data.append(value)
    return (name, b"\n".join(data)) if data else None


# the users


class DeviceUser(User):
    """One device: connects, holds the connection, reports each message's push latency."""

    host = DEFAULT_EDGE
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.kit = kit_of(environment)
        n, self.client_id, self.user_id = self.kit.fleet.new_identity()
        self.transport = "sse" if on_sse(n, self.kit.config.sse_share) else "ws"
        self.conn: Connection | None = None
        self.last_id: str | None = None
        self.pending: list[str] = []
        self.ack_due = 0.0
        self.recent: deque[str] = deque(maxlen=RECENT_IDS)
        self.seen: set[str] = set()

    @task
    def hold(self) -> None:
        if self.conn is None:
            self._connect()
            return
        try:
            payloads = self.conn.receive(self._ack_due_in())
        except Closed as closed:
            self._lost(closed)
            return
        for payload in payloads:
            self._on_message(payload, len(payload))
        self._flush_acks(force=False)

    def on_stop(self) -> None:
        if self.conn is not None:
            self._flush_acks(force=True)
            self.kit.fleet.disconnected(self.client_id)
            self.conn.close()
            self.conn = None

    def _connect(self) -> None:
        config = self.kit.config
        token = issue_token(config.secret, client_id=self.client_id, user_id=self.user_id,
                            device_type=config.device_type)
        started = time.perf_counter()
        try:
            self.conn = self._open(token)
        except Exception as e:  # any failure to connect is a CONNECT failure, then a retry
            report(self.environment, "CONNECT", f"{self.transport} connect", _ms_since(started),
                   exception=e)
            gevent.sleep(random.uniform(0.5, 2.0))
            return
        report(self.environment, "CONNECT", f"{self.transport} connect", _ms_since(started))
        self.kit.fleet.connected(self.client_id)

    def _open(self, token: str) -> Connection:
        config = self.kit.config
        if self.transport == "sse":
            return SseConnection(config.edge_url, token, config.connect_timeout_s, self.last_id)
        return WsConnection(config.edge_url, token, config.connect_timeout_s)

    def _lost(self, closed: Closed) -> None:
        self.kit.fleet.disconnected(self.client_id)
        assert self.conn is not None
        self.conn.close()
        self.conn = None
        self.pending.clear()  # unacked: the inbox replays them on the next connection
        name = f"{self.transport} closed {closed.code or 'abruptly'}"
        # a go-away (drain, lifetime, shutdown) is the server working as designed: counted, not
        # failed; anything else (slow consumer, replaced, a dropped socket) is a failure
        failure = None if closed.code == GO_AWAY else closed
        report(self.environment, "DISCONNECT", name, 0, exception=failure)
        wait_ms = closed.reconnect_after_ms or random.uniform(500, 2000)
        gevent.sleep(min(wait_ms, 30_000) / 1000)

    def _on_message(self, payload: bytes, length: int) -> None:
        now_ms = time.time() * 1000
        try:
            message = json.loads(payload)
            message_id, ts = str(message["id"]), float(message["ts"])
        except (ValueError, KeyError, TypeError) as e:
            report(self.environment, "PUSH", f"{self.transport} push", 0, length, e)
            return
        repeat = message_id in self.seen
        self._remember(message_id)
        name = f"{self.transport} push" + (" (repeat)" if repeat else "")
        report(self.environment, "PUSH", name, max(0.0, now_ms - ts), length)
        self.last_id = message_id
        if not self.pending:
            self.ack_due = time.monotonic() + self.kit.config.ack_interval_ms / 1000
        self.pending.append(message_id)

    def _remember(self, message_id: str) -> None:
        if len(self.recent) == self.recent.maxlen:
            self.seen.discard(self.recent[0])
        self.recent.append(message_id)
        self.seen.add(message_id)

    def _ack_due_in(self) -> float | None:
        return self.ack_due - time.monotonic() if self.pending else None

    def _flush_acks(self, *, force: bool) -> None:
        if not self.pending or self.conn is None:
            return
        if not force and time.monotonic() < self.ack_due and len(self.pending) < 1000:
            return
        ids, self.pending = self.pending, []
        # a failed ack means the connection is going: the next receive reports it
        with contextlib.suppress(websocket.WebSocketException, OSError):
            self.conn.ack(ids)


def on_sse(n: int, share: float) -> bool:
    """Whether device `n` uses SSE: spread evenly, so that any `k` devices in a row hold
    `k * share` SSE streams, rounded (random draws would leave a small run with none)."""
    return int((n + 1) * share) > int(n * share)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class BackendUser(FastHttpUser):
    """A backend service: pushes to the devices this process holds connected."""

    fixed_count = 1

    def __init__(self, environment: Environment) -> None:
        self.kit = kit_of(environment)
        self.host = self.kit.config.api_url  # --host is the edge's; this user talks to the API
        super().__init__(environment)
        rate = self.kit.config.push_rate_per_s
        self._pace: Callable[[User], float] = (
            constant_throughput(rate) if rate > 0 else constant(0))
        self._seq = itertools.count()

    def wait_time(self) -> float:
        return self._pace(self)

    @task
    def push(self) -> None:
        if not self.kit.fleet:
            gevent.sleep(0.2)  # no device connected (yet): nothing to push to
            return
        kind = choose(self.kit.config.push_mix)
        if kind == "batch":
            size = self.kit.config.batch_size
            self._post("/v1/push/batch", {"messages": [self._message("client")
                                                       for _ in range(size)]}, "/v1/push/batch")
        else:
            self._post("/v1/push", self._message(kind), f"/v1/push {kind}")

    def _message(self, kind: str) -> dict[str, Any]:
        config, fleet = self.kit.config, self.kit.fleet
        to: dict[str, Any]
        if kind == "client":
            to = {"clients": [fleet.pick_client()]}
        elif kind == "user":
            to = {"users": [fleet.pick_user()]}
        else:
            to = {"broadcast": True, "device_types": [config.device_type]}
        return {"to": to, "topic": config.topic, "priority": choose(config.priorities),
                "ttl": config.push_ttl_s,
                "data": {"seq": next(self._seq), "sent_ms": time.time() * 1000}}

    def _post(self, path: str, body: dict[str, Any], name: str) -> None:
        headers = {"Authorization": f"Bearer {self.kit.config.api_key}"}
        with self.client.post(path, json=body, headers=headers, name=name,
                              catch_response=True) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
