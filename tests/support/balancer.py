"""A small L4 (TCP) load balancer for tests, run as its own process: it stands in for the HAProxy
(`mode tcp`, `balance roundrobin`, `option redispatch`) that issue 6 puts in front of the edges.

    python -m tests.support.balancer --port 0 --backend 127.0.0.1:8080 --backend 127.0.0.1:8081

prints `ready: port=N` on stdout once it listens (loopback only), then serves until SIGTERM,
SIGINT or the end of its stdin (so it never outlives the test that started it).

- Each accepted connection goes to the next backend in round-robin order; a backend that
  refuses (or does not answer within `CONNECT_TIMEOUT_S`) is skipped and the next one tried, so
  a draining edge that closed its listening socket, or a dead one, is passed over. There are no
  health checks: a backend is tried again on every connection, so an edge restarted on the same
  port is used again at once. If every backend refuses, the client's connection is closed.
- Bytes are forwarded both ways as they come, with flow control (a side whose peer's write
  buffer is full stops being read). Half-close aware: an end of stream from one side is passed
  on as a write EOF to the other (an edge answering `503` shuts its side and reads on until the
  client closes); both directions ended, or one side reset or closed, closes the pair.
- Control lines on stdin, one answer line each on stdout: `backends HOST:PORT[,HOST:PORT...]`
  replaces the backends (`ok backends=...`); `stats` answers a JSON object: connections
  accepted, open, forwarded per backend, refused and timed out per backend, closed because
  every backend refused, and the peak lag of its event loop (how late a 50 ms timer fired);
  `answers` a JSON list of `[t, backend, status]`, one per forwarded connection: when the
  backend connection was made (`time.monotonic()`, one clock for every process on Linux) and
  the HTTP status its first bytes carried (`"101"`, `"503"`; `"-"` if they were not an HTTP
  status line). That peek is for the tests' accounting only (the rate at which a node
  admitted connections); forwarding never looks at the bytes. `vanish` turns every open pair
  into what a roaming phone's vanished network is to both ends: whatever either side sends is
  dropped, and neither an end of stream nor a close is passed on, so each end finds out only by
  its own timeouts (`ok vanished=N`); new connections are forwarded as before. `cut` aborts
  every open pair (`ok cut=N`). `delay MS` holds everything forwarded, both ways, that long
  (in order) from now on: a slow link (`ok delay=MS`).

One process holds two descriptors per forwarded connection; at start it raises its soft
RLIMIT_NOFILE to the hard limit (20,000 here: 5,000 devices take 10,000).

The test side is `BalancerProcess` (asyncio subprocess): `start`, `set_backends`, `stats`,
`answers`, `stop` (by its PID).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import uvloop

from tests.support.lag import LagSampler
from tests.support.procs import wait_or_kill

CONNECT_TIMEOUT_S = 2.0
MAX_ANSWERS = 200_000
"""Forwarded connections whose first answer is remembered (`answers`), at most."""
PENDING_LIMIT = 256 * 1024
"""Bytes read from a client before its backend connection is up; past it, reading pauses."""

Backend = tuple[str, int]


@dataclass
class Stats:
    accepted: int = 0
    open: int = 0
    forwarded: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    timeouts: Counter[str] = field(default_factory=Counter)
    no_backend: int = 0
    lag: LagSampler = field(default_factory=lambda: LagSampler())

    def as_json(self) -> str:
        return json.dumps({"accepted": self.accepted, "open": self.open,
                           "forwarded": dict(self.forwarded), "refused": dict(self.refused),
                           "timeouts": dict(self.timeouts), "no_backend": self.no_backend,
                           "loop_lag_ms_peak": round(self.lag.peak_s * 1000, 1)})


def parse_backend(text: str) -> Backend:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def name(backend: Backend) -> str:
    return f"{backend[0]}:{backend[1]}"


class Balancer:
    """The backends, the round-robin position, the open pairs and the counters."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self.delay_s = 0.0
        self.stats = Stats()
        self.pairs: set[Downstream] = set()
        self.answers: list[tuple[float, str, str]] = []
        self._next = 0

    def order(self) -> list[Backend]:
        """The backends to try for a new connection: round robin, then the rest in turn."""
        backends = self.backends
        if not backends:
            return []
        start = self._next % len(backends)
        self._next += 1
        return backends[start:] + backends[:start]

    def close_all(self) -> int:
        pairs = tuple(self.pairs)
        for pair in pairs:
            pair.abort()
        return len(pairs)

    def vanish(self) -> int:
        pairs = tuple(self.pairs)
        for pair in pairs:
            pair.vanish()
        return len(pairs)


class _Side(asyncio.Protocol):
    """One socket of a forwarded pair: what it reads goes to `peer`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.read_eof = False
        self.lost = False
        self.vanished = False  # the network between the two ends is gone: pass nothing on

    # what the peer asks of this side

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_eof(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def close(self, *, abort: bool) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()  # after what is buffered has been written

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and not self.vanished:
            self._later(self.peer.send, data)

    def _later(self, send: Callable[[bytes], None], data: bytes) -> None:
        """`send(data)` now, or after the balancer's delay (timers keep their order)."""
        delay_s = self.balancer_delay_s()
        if delay_s > 0:
            asyncio.get_running_loop().call_later(delay_s, send, data)
        else:
            send(data)

    def balancer_delay_s(self) -> float:
        return 0.0

    def eof_received(self) -> bool:
        self.read_eof = True
        if self.vanished:
            self.close(abort=False)
            return True
        if self.balancer_delay_s() > 0:  # after what was read before it
            asyncio.get_running_loop().call_later(self.balancer_delay_s(), self._eof)
            return True
        return self._eof()

    def _eof(self) -> bool:
        if self.peer is not None:
            self.peer.send_eof()
            if self.peer.read_eof:  # both directions ended
                self.close(abort=False)
                self.peer.close(abort=False)
        return True  # keep our write side open for what the peer still sends

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.peer is not None and not self.vanished:
            self.peer.close(abort=exc is not None)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None \
                and not self.peer.transport.is_closing():
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None \
                and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class Upstream(_Side):
    """The balancer's connection to a backend. It is joined to its client in `connection_made`,
    not when `create_connection` returns: a backend may send (an edge's `503` goes out at
    accept) before the connecting coroutine resumes, and those bytes must reach the client."""

    def __init__(self, client: Downstream, backend: str) -> None:
        super().__init__()
        self.client = client
        self.backend = backend
        self.made_at = 0.0
        self.answered = False

    def balancer_delay_s(self) -> float:
        return self.client.balancer.delay_s

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made_at = time.monotonic()
        super().connection_made(transport)
        self.client.join(self)

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            status = data[9:12].decode("latin-1") if data.startswith(b"HTTP/1.") else "-"
            answers = self.client.balancer.answers
            if len(answers) < MAX_ANSWERS:
                answers.append((self.made_at, self.backend, status))
        super().data_received(data)


class Downstream(_Side):
    """A client's connection: buffers what it sends until a backend is connected."""

    def __init__(self, balancer: Balancer) -> None:
        super().__init__()
        self.balancer = balancer
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.task: asyncio.Task[None] | None = None

    def balancer_delay_s(self) -> float:
        return self.balancer.delay_s

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.balancer.stats.accepted += 1
        self.balancer.stats.open += 1
        self.balancer.pairs.add(self)
        self.task = asyncio.get_running_loop().create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            if not self.vanished:
                self._later(self.peer.send, data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.balancer.stats.open -= 1
        self.balancer.pairs.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def abort(self) -> None:
        self.close(abort=True)
        if self.peer is not None:
            self.peer.close(abort=True)

    def vanish(self) -> None:
        self.vanished = True
        if self.peer is not None:
            self.peer.vanished = True

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        stats = self.balancer.stats
        for backend in self.balancer.order():
            if self.peer is not None or self.lost:  # joined as a timeout fired; or gone
                return
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await loop.create_connection(
                        functools.partial(Upstream, self, name(backend)), *backend)
            except TimeoutError:
                stats.timeouts[name(backend)] += 1
                continue
            except OSError:
                stats.refused[name(backend)] += 1
                continue
            stats.forwarded[name(backend)] += 1
            return
        stats.no_backend += 1
        self.close(abort=False)

    def join(self, upstream: Upstream) -> None:
        """The backend connection is up: forward both ways from now on."""
        if self.lost:  # the client went away meanwhile
            upstream.close(abort=True)
            return
        self.peer, upstream.peer = upstream, self
        for chunk in self.pending:
            upstream.send(chunk)
        self.pending.clear()
        if self.transport is not None and self.pending_bytes > PENDING_LIMIT:
            self.transport.resume_reading()
        self.pending_bytes = 0
        if self.read_eof:
            upstream.send_eof()


# the process

def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(port: int, backends: list[Backend]) -> None:
    loop = asyncio.get_running_loop()
    balancer = Balancer(backends)
    balancer.stats.lag.start()
    server = await loop.create_server(lambda: Downstream(balancer), "127.0.0.1", port,
                                      backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready: port={bound}", flush=True)
    control = loop.create_task(_control(balancer, stop))
    try:
        await stop.wait()
    finally:
        server.close()
        balancer.stats.lag.stop()
        balancer.close_all()
        control.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await control
        await server.wait_closed()


async def _control(balancer: Balancer, stop: asyncio.Event) -> None:
    """Read control lines from stdin until it ends (then stop the balancer)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            if text := line.decode().strip():
                print(_command(balancer, text), flush=True)
    finally:
        stop.set()


def _command(balancer: Balancer, line: str) -> str:
    verb, _, rest = line.partition(" ")
    if verb == "stats":
        return balancer.stats.as_json()
    if verb == "answers":
        return json.dumps(balancer.answers)
    if verb == "backends":
        try:
            backends = [parse_backend(b) for b in rest.split(",") if b.strip()]
        except ValueError as exc:
            return f"error {exc}"
        balancer.backends = backends
        return "ok backends=" + ",".join(name(b) for b in backends)
    if verb == "vanish":
        return f"ok vanished={balancer.vanish()}"
    if verb == "cut":
        return f"ok cut={balancer.close_all()}"
    if verb == "delay":
        try:
            balancer.delay_s = max(0.0, float(rest or 0) / 1000)
        except ValueError:
            return f"error not a number of ms: {rest!r}"
        return f"ok delay={round(balancer.delay_s * 1000)}"
    return f"error unknown command {verb!r}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backend", action="append", default=[], type=parse_backend,
                   help="HOST:PORT, repeatable; tried in round-robin order")
    args = p.parse_args()
    raise_fd_limit()
    uvloop.run(serve(args.port, args.backend))


# the test side

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 10.0
LINE_LIMIT = 64 * 1024 * 1024
"""`answers` is one line: 200,000 entries fit well within this."""


@dataclass
class BalancerProcess:
    """A balancer started by a test: its port; every call is bounded; `stop()` by its PID."""

    proc: asyncio.subprocess.Process
    port: int
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    async def start(cls, backends: list[Backend], stderr_path: Path) -> BalancerProcess:
        args = [a for b in backends for a in ("--backend", name(b))]
        with stderr_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.support.balancer", "--port", "0", *args, cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                limit=LINE_LIMIT)
        balancer = cls(proc, 0, stderr_path)
        try:
            line = await balancer._line()
            if not line.startswith("ready: port="):
                raise AssertionError(f"balancer said {line!r}: {balancer.stderr_text()}")
            balancer.port = int(line.removeprefix("ready: port="))
        except BaseException:
            await balancer.stop()
            raise
        return balancer

    async def set_backends(self, backends: list[Backend]) -> None:
        answer = await self._ask("backends " + ",".join(name(b) for b in backends))
        assert answer.startswith("ok "), answer

    async def vanish(self) -> int:
        """Make every open connection a vanished network (module docstring); how many."""
        answer = await self._ask("vanish")
        assert answer.startswith("ok vanished="), answer
        return int(answer.removeprefix("ok vanished="))

    async def cut(self) -> int:
        """Abort every open connection; how many."""
        answer = await self._ask("cut")
        assert answer.startswith("ok cut="), answer
        return int(answer.removeprefix("ok cut="))

    async def delay(self, ms: float) -> None:
        """Hold what is forwarded, both ways, `ms` long from now on (0: forward at once)."""
        answer = await self._ask(f"delay {ms}")
        assert answer.startswith("ok delay="), answer

    async def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(await self._ask("stats"))
        return answer

    async def answers(self) -> list[tuple[float, str, str]]:
        """(when the backend connection was made, backend, first status) per connection."""
        return [(t, b, s) for t, b, s in json.loads(await self._ask("answers"))]

    async def stop(self) -> int:
        """SIGTERM this PID and wait (SIGKILL it if it hangs); its exit status."""
        proc = self.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        return await wait_or_kill(proc, WAIT_S)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._line()

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT_S)
        if not raw:
            raise AssertionError(f"the balancer ended: {self.stderr_text()}")
        return raw.decode().strip()


if __name__ == "__main__":
    main()
