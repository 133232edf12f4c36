"""Devices on the real client SDK, many to a process, for tests with real processes.

The device side (run as its own process, on uvloop):

    python -m tests.support.sdk_devices --url http://127.0.0.1:PORT --secret S \\
        --prefix herd-0- --count 1000 [--ramp-per-s 500] [--idle-timeout-s 12.5]

starts `count` `zuulpush.client.PushClient`s (WebSocket, auto-ack, the SDK's default backoff),
client ids `<prefix><i>`, each with its own token (`core.tokens.issue_token` with the secret),
at most `ramp-per-s` a second; prints `ready: clients=N` once all are started (not connected);
then answers one command per stdin line with one JSON line on stdout:

- `status`: `{"clients", "connected", "ever_connected", "messages", "duplicates", "stopped"}`,
  totals, and
  `loop_lag_ms_peak`, how late this process's event loop ran at worst (a 50 ms timer's delay);
- `report`: `{"clients": {client_id: {...}}}`, per client: `attempts` (when each connection
  attempt began), `connects` (when each handshake was accepted), `refusals` (`[t, status,
  retry_after_s, reason]` of each failed attempt), `closes` (`[t, code, reason]` of each
  connection's end), `messages` (`[id, t]` of each message handed to the application, so after
  the SDK dropped repeats), `duplicates` (repeats it dropped), `state` and `error`;
- `close`: closes every client (`{"closed": N}`).

The end of stdin closes every client and ends the process. Times are `time.monotonic()`, which
on Linux is one clock for every process on the machine, so the test compares them with its own.

How attempts are seen without touching the SDK's internals: its transports are strategy objects
looked up by name (`zuulpush.client.transport.TRANSPORTS`). In this process (made for tests
only) the `ws` entry is replaced by a wrapper of the WebSocket strategy that notes each attempt,
its answer and how the connection ended, and hands everything through unchanged. It knows the
device by the token it is given.

The test side is `DeviceProcess` (asyncio subprocess): `start`, `status`, `report`, `stop`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from core.tokens import issue_token
from tests.support.lag import LagSampler
from tests.support.procs import wait_or_kill
from zuulpush.client import ClientState, Message, PushClient
from zuulpush.client.policy import Closed
from zuulpush.client.transport import TRANSPORTS, ConnectFailed, Frame, Link, SslOption

ROOT = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
LINE_LIMIT = 256 * 1024 * 1024
"""A `report` is one line; 1,000 devices with their messages fit well within this."""


# the device side

@dataclass(slots=True)
class DeviceLog:
    client_id: str
    attempts: list[float] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    refusals: list[tuple[float, int | None, float | None, str]] = field(default_factory=list)
    closes: list[tuple[float, int | None, str]] = field(default_factory=list)
    messages: list[tuple[str, float]] = field(default_factory=list)
    client: PushClient | None = None

    def on_message(self, message: Message) -> None:
        self.messages.append((message.id, time.monotonic()))

    def as_json(self) -> dict[str, Any]:
        client = self.client
        assert client is not None
        return {"attempts": self.attempts, "connects": self.connects, "refusals": self.refusals,
                "closes": self.closes, "messages": self.messages,
                "duplicates": client.stats.duplicates, "state": client.state.value,
                "error": None if client.error is None else str(client.error)}


class ObservedLink:
    """A WebSocket link whose end is noted in the device's log."""

    __slots__ = ("_link", "_log")

    def __init__(self, link: Link, log: DeviceLog) -> None:
        self._link = link
        self._log = log

    async def receive(self, idle_timeout_s: float | None) -> Frame | Closed:
        item = await self._link.receive(idle_timeout_s)
        if isinstance(item, Closed):
            self._log.closes.append((time.monotonic(), item.code, item.reason))
        return item

    async def send_ack(self, frame: str) -> None:
        await self._link.send_ack(frame)

    async def close(self) -> None:
        await self._link.close()


class ObservedTransport:
    """The SDK's WebSocket transport, noting each attempt in the log of the token's device."""

    name = "ws"
    can_ack = True

    def __init__(self) -> None:
        self.logs: dict[str, DeviceLog] = {}  # token -> log
        self._inner = TRANSPORTS["ws"]
        assert not isinstance(self._inner, ObservedTransport)

    async def open(self, http: aiohttp.ClientSession, base_url: str, token: str, *,
                   last_id: str | None, timeout_s: float, ssl: SslOption) -> Link:
        log = self.logs[token]
        log.attempts.append(time.monotonic())
        try:
            link = await self._inner.open(http, base_url, token, last_id=last_id,
                                          timeout_s=timeout_s, ssl=ssl)
        except ConnectFailed as exc:
            failed = exc.outcome
            log.refusals.append((time.monotonic(), failed.status, failed.retry_after_s,
                                 failed.reason))
            raise
        log.connects.append(time.monotonic())
        return ObservedLink(link, log)


async def run_devices(args: argparse.Namespace) -> None:
    lag = LagSampler()
    lag.start()
    observed = ObservedTransport()
    TRANSPORTS["ws"] = observed
    logs = [DeviceLog(f"{args.prefix}{i}") for i in range(args.count)]
    started = time.monotonic()
    for i, log in enumerate(logs):
        token = issue_token(args.secret, client_id=log.client_id, user_id=f"u-{log.client_id}",
                            device_type="phone", ttl_s=3600)
        observed.logs[token] = log
        log.client = PushClient(args.url, token, on_message=log.on_message,
                                idle_timeout_s=args.idle_timeout_s)
        await log.client.start()
        if args.ramp_per_s > 0:  # pace the starts
            await asyncio.sleep(max(0.0, started + (i + 1) / args.ramp_per_s - time.monotonic()))
    print(f"ready: clients={len(logs)}", flush=True)
    try:
        await _serve_commands(logs, lag)
    finally:
        lag.stop()
        await _close_all(logs)


async def _serve_commands(logs: list[DeviceLog], lag: LagSampler) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = line.decode().strip()
        if not command:
            continue
        answer = await _answer(logs, command, lag)
        sys.stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
        sys.stdout.flush()


async def _answer(logs: list[DeviceLog], command: str, lag: LagSampler) -> dict[str, Any]:
    clients = [log.client for log in logs if log.client is not None]
    if command == "status":
        return {"clients": len(clients),
                "connected": sum(1 for c in clients if c.connected),
                "ever_connected": sum(1 for c in clients if c.stats.connects),
                "messages": sum(len(log.messages) for log in logs),
                "duplicates": sum(c.stats.duplicates for c in clients),
                "stopped": sum(1 for c in clients if c.state is ClientState.CLOSED),
                "loop_lag_ms_peak": round(lag.peak_s * 1000, 1)}
    if command == "report":
        return {"clients": {log.client_id: log.as_json() for log in logs}}
    if command == "close":
        await _close_all(logs)
        return {"closed": len(clients)}
    return {"error": f"unknown command {command!r}"}


async def _close_all(logs: list[DeviceLog]) -> None:
    clients = [log.client for log in logs if log.client is not None]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_TIMEOUT_S / 2):
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the edge's (or the balancer's) base URL")
    p.add_argument("--secret", required=True, help="HS256 device-token secret")
    p.add_argument("--prefix", required=True, help="client ids are <prefix><i>")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--ramp-per-s", type=float, default=0.0, help="starts per second; 0: all")
    p.add_argument("--idle-timeout-s", type=float, default=75.0,
                   help="the SDK's idle_timeout_s: about 2.5x the edge's heartbeat interval")
    p.add_argument("--nice", type=int, default=0, help="lower this process's priority by this")
    args = p.parse_args()
    if args.nice:
        os.nice(args.nice)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    uvloop.run(run_devices(args))


# the test side

@dataclass
class DeviceProcess:
    """One device process started by a test; every call is bounded; `stop()` ends it by PID."""

    proc: asyncio.subprocess.Process
    prefix: str
    count: int
    stderr_path: Path

    @classmethod
    async def start(cls, url: str, secret: str, prefix: str, count: int, stderr_path: Path, *,
                    ramp_per_s: float = 0.0, idle_timeout_s: float = 75.0,
                    nice: int = 0) -> DeviceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
        with stderr_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.support.sdk_devices", "--url", url,
                "--secret", secret, "--prefix", prefix, "--count", str(count),
                "--ramp-per-s", str(ramp_per_s), "--idle-timeout-s", str(idle_timeout_s),
                "--nice", str(nice),
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                limit=LINE_LIMIT)
        devices = cls(proc, prefix, count, stderr_path)
        try:
            line = await devices._line(REPLY_TIMEOUT_S + count / max(ramp_per_s, 100.0))
            if not line.startswith("ready:"):
                raise AssertionError(f"device process said {line!r}: {devices.stderr_tail()}")
        except BaseException:
            await devices.stop()
            raise
        return devices

    @property
    def client_ids(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]

    async def ask(self, command: str, timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        answer = json.loads(await self._line(timeout_s))
        assert isinstance(answer, dict) and "error" not in answer, answer
        return answer

    async def status(self) -> dict[str, int]:
        return await self.ask("status")

    async def report(self) -> dict[str, dict[str, Any]]:
        clients: dict[str, dict[str, Any]] = (await self.ask("report"))["clients"]
        return clients

    async def stop(self) -> int:
        """Close the clients (end of stdin), wait for the exit; SIGKILL this PID if it hangs."""
        proc = self.proc
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.close()
        return await wait_or_kill(proc, STOP_TIMEOUT_S)

    def stderr_tail(self, chars: int = 4000) -> str:
        return self.stderr_path.read_text(errors="replace")[-chars:]

    async def _line(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not raw:
            raise AssertionError(f"device process ended: {self.stderr_tail()}")
        return raw.decode().strip()


async def start_devices(url: str, secret: str, prefix: str, total: int, processes: int,
                        directory: Path, **options: Any) -> list[DeviceProcess]:
    """`total` devices over `processes` processes (ids `<prefix><p>-<i>`), started concurrently;
    if one fails, the others are stopped before the error is raised."""
    per = -(-total // processes)
    counts = [min(per, total - p * per) for p in range(processes) if total - p * per > 0]
    results = await asyncio.gather(*(
        DeviceProcess.start(url, secret, f"{prefix}{p}-", n, directory / f"devices-{prefix}{p}.err",
                            **options)
        for p, n in enumerate(counts)), return_exceptions=True)
    started = [r for r in results if isinstance(r, DeviceProcess)]
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        await stop_devices(started)
        raise failed[0]
    return started


async def stop_devices(devices: Sequence[DeviceProcess]) -> list[int]:
    return list(await asyncio.gather(*(d.stop() for d in devices)))


if __name__ == "__main__":
    main()
