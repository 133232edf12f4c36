"""`Listener`: the node's listening socket (TLS when configured) and its once-a-second probe, which
notes running out of file descriptors and listens again if the socket was closed under the node
(docs/edge.md, Running out of file descriptors)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import ssl
from collections.abc import Callable

from core.outage import OutageLog
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.stats import EdgeStats
from zuulpush.tls import optional_context

log = logging.getLogger("zuulpush.edge")


def fd_limit() -> int | None:
    """This process's soft limit of open files (None: unlimited or unknown)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def edge_tls(config: EdgeConfig) -> ssl.SSLContext | None:
    """The edge's TLS context (None without `tls_cert_file`); `TlsConfigError` if the files or
    ciphers cannot be used."""
    return optional_context(config.tls_cert_file, config.tls_key_file,
                            what="edge TLS (tls_cert_file, tls_key_file)",
                            ciphers=config.tls_ciphers)


def listener_status(server: asyncio.Server | None, port: int) -> str:
    """"ok" if the server's socket still listens on `port`; "exhausted" if no file descriptor
    can be had to look (EMFILE/ENFILE); "gone" if it was closed."""
    sockets = server.sockets if server is not None else ()
    if not sockets:
        return "gone"
    try:
        fd = os.dup(sockets[0].fileno())
    except OSError as exc:
        return "exhausted" if exc.errno in (errno.EMFILE, errno.ENFILE) else "gone"
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return "gone"
    with sock:
        try:
            listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
            return "ok" if listening and sock.getsockname()[1] == port else "gone"
        except OSError:
            return "gone"


class Listener:
    """Listens on the configured host and port (`port`: the bound one, once listening)."""

    def __init__(self, config: EdgeConfig, protocol: Callable[[], asyncio.Protocol], *,
                 tls: ssl.SSLContext | None, stats: EdgeStats, served: Callable[[], int]) -> None:
        """`protocol` makes each accepted socket's protocol; `served` counts the sockets the
        node serves (for the log line when descriptors run out)."""
        self._config = config
        self._protocol = protocol
        self.tls = tls
        self._stats = stats
        self._served = served
        self.server: asyncio.Server | None = None
        self.port = config.port
        self.fds_exhausted = False
        self._relisten = OutageLog(log, level=logging.ERROR)

    async def listen(self) -> None:
        self.server = await self._listen(self._config.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _listen(self, port: int) -> asyncio.Server:
        """Listen on `port`; with TLS, a socket's TLS handshake comes before `connection_made`
        (and so before admission) and must end within `handshake_timeout_s`."""
        loop = asyncio.get_running_loop()
        config = self._config
        return await loop.create_server(
            self._protocol, config.host, port, backlog=4096, reuse_port=config.reuse_port,
            ssl=self.tls, ssl_handshake_timeout=config.handshake_timeout_s if self.tls else None)

    def close(self) -> None:
        """Stop accepting (idempotent); the node's connections stay."""
        if self.server is not None:
            self.server.close()

    async def closed(self) -> None:
        """Close, and wait until the server is closed; the listener is done then."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def warn_about_fd_limit(self, hard_max_connections: int) -> None:
        limit = fd_limit()
        if limit is not None and hard_max_connections > limit - 16:
            log.warning("hard_max_connections %d is at or above the file-descriptor limit %d: "
                        "past it, the kernel refuses accepts (EMFILE) and they are dropped "
                        "uncounted; raise the limit (ulimit -n) or lower the ceiling",
                        hard_max_connections, limit)

    async def check(self, *, relisten: bool = True) -> None:
        """The probe, once a second: note running out of file descriptors (once per episode),
        and listen again (when `relisten`: the node is active) if the listening socket was
        closed under us."""
        status = listener_status(self.server, self.port)
        if status == "exhausted" and not self.fds_exhausted:
            self.fds_exhausted = True
            self._stats.fd_exhaustion_episodes += 1
            log.warning("out of file descriptors with %d connections (limit %s): new "
                        "connections are closed at accept until some close",
                        self._served(), fd_limit())
        elif status != "exhausted" and self.fds_exhausted:
            self.fds_exhausted = False
            log.warning("file descriptors available again")
        if status == "gone" and relisten and self.server is not None:
            await self._listen_again()

    async def _listen_again(self) -> None:
        old = self.server
        try:
            self.server = await self._listen(self.port)
        except OSError as exc:
            self._relisten.failed("the listening socket on port %d is gone and listening again "
                                  "failed (%s); retrying", self.port, exc)
            return
        self._relisten.recovered()
        self._stats.relistens += 1
        log.error("the listening socket on port %d was closed under us; listening again",
                  self.port)
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
