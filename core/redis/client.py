"""Making redis-py asyncio clients from URLs, for the registry and its neighbours.

`connect(url)` understands one server and Redis Cluster URLs (see its docstring). A single-server
client it makes packs commands with hiredis when hiredis is installed, as redis-py's synchronous
client already does (its asyncio client packs in Python, about 1 us per argument): the registry
sends EVALSHA calls with thousands of arguments, and packing them was most of the cost of a
batch. A Cluster client packs in Python (redis-py's `RedisCluster` takes no connection class).
"""

from __future__ import annotations

import importlib
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, DataError
from redis.utils import HIREDIS_AVAILABLE

# hiredis is a dependency (redis[hiredis]); without it everything works, packing in Python.
hiredis: Any = importlib.import_module("hiredis") if HIREDIS_AVAILABLE else None

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
RECONNECT_RETRY = Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), 2,
                        supported_errors=(ConnectionError,))
"""A call whose connection breaks under it (Redis restarted or failed over while a blocking read
waited, a proxy dropped the connection) reconnects and is sent again, twice at most, backing
off up to half a second, instead of failing. Only connection errors: a timeout is not retried
(it may have run, and it already took `socket_timeout`). Sending again may run a command twice
if its reply, not the command, was lost; every call the seams make is idempotent or, for
enqueues and publishes, at least once (message ids make repeats harmless)."""
CLIENT_DEFAULTS: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0,
                                   "retry": RECONNECT_RETRY}
MAX_CONNECTIONS = 64
POOL_TIMEOUT_S = 10.0

Client = Redis | RedisCluster


def connect(url: str, **kwargs: Any) -> Client:
    """A redis-py asyncio client for `url`, with bytes replies.

    - `redis://[user:password@]host:port/db`, `rediss://...` (TLS), `unix:///path.sock`: one
      server (redis-py's URL syntax, query options included).
    - `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS):
      a Redis Cluster, discovered from any of the listed nodes.

    `kwargs` go to the client and override the defaults (5 s socket timeout, 2 s connect
    timeout, `RECONNECT_RETRY`); options in a single-server URL's query override both. A
    single-server client holds at most `max_connections` (64) connections, and a call finding
    all of them busy waits for one (up to 10 s) rather than failing: many concurrent callers
    queue, Redis sees a bounded number of clients. `decode_responses` is refused: the registry
    reads bytes.
    """
    if kwargs.get("decode_responses"):
        raise ValueError("the registry reads bytes: decode_responses must be False")
    options = {**CLIENT_DEFAULTS, **kwargs}
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a Redis URL: {url!r}")
    if scheme.lower() in CLUSTER_SCHEMES:
        return _cluster(scheme.lower(), rest, options)
    options.update(parse_url(url))
    connection_class = options.pop("connection_class", Connection)
    if _utf8(options):
        connection_class = _packing_with_hiredis(connection_class)
    pool = BlockingConnectionPool(connection_class=connection_class,
                                  max_connections=options.pop("max_connections", MAX_CONNECTIONS),
                                  timeout=POOL_TIMEOUT_S, **options)
    return Redis.from_pool(pool)


def _utf8(options: dict[str, Any]) -> bool:
    encoding = str(options.get("encoding", "utf-8")).lower().replace("-", "").replace("_", "")
    return encoding == "utf8" and options.get("encoding_errors", "strict") == "strict"


def _cluster(scheme: str, rest: str, options: dict[str, Any]) -> RedisCluster:
    credentials, _, hosts = rest.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = [_cluster_node(hostport) for hostport in hosts.rstrip("/").split(",")]
    return RedisCluster(startup_nodes=nodes, username=username or None,
                        password=password or None, ssl=scheme.startswith("rediss"), **options)


def _cluster_node(hostport: str) -> ClusterNode:
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a cluster node must be host:port, got {hostport!r}")
    return ClusterNode(host.strip("[]"), int(port))


def pack_with_hiredis(*args: Any) -> list[bytes]:
    """One command in RESP, packed by hiredis the way redis-py's sync client packs it."""
    if isinstance(args[0], str):
        args = (*args[0].encode().split(), *args[1:])
    elif b" " in args[0]:
        args = (*args[0].split(), *args[1:])
    try:
        return [hiredis.pack_command(args)]
    except TypeError:
        pass
    args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
    try:
        return [hiredis.pack_command(args)]
    except TypeError as e:
        raise DataError(str(e)) from e


class _HiredisConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_with_hiredis(*args)


class _HiredisSSLConnection(SSLConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_with_hiredis(*args)


class _HiredisUnixConnection(UnixDomainSocketConnection):
    def pack_command(self, *args: Any) -> list[bytes]:
        return pack_with_hiredis(*args)


_WITH_HIREDIS: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _HiredisConnection,
    SSLConnection: _HiredisSSLConnection,
    UnixDomainSocketConnection: _HiredisUnixConnection,
}


def _packing_with_hiredis(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """`cls`, or its hiredis-packing twin when hiredis is installed. Only for redis-py's default
    encoding (strict UTF-8), which is how hiredis encodes `str`."""
    if hiredis is None:
        return cls
    return _WITH_HIREDIS.get(cls, cls)
