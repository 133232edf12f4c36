"""A bounded fuzz run against a real `zuulpush serve` (issue 9, item 2).

One well-behaved device (the `websockets` client) stays connected and receives pushes, while
`CONCURRENCY` raw TCP clients, driven by a seeded `random.Random`, keep opening connections and
sending malformed, truncated and oversized requests, header floods, and after a valid upgrade
random, damaged, unmasked, reserved-bit, compressed (RSV1), binary, fragmented and flooding
frames. Each raw connection must end in an HTTP answer (with a JSON body when it is an error) or
a WebSocket close with a documented code (or the server closing it after its deadlines); the
counts are printed (`pytest -s`).

At the end: the good device received every push, the node's socket count (`/healthz`) returns to
the baseline (no leaked connection), the server's RSS grew by at most `RSS_GROWTH_MB` after a
warm-up, and the process exits cleanly (the fixture fails on a traceback or a non-zero exit).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import struct
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from tests.integration.clients import host_port, push_api, ws_connect, ws_recv_json, ws_url
from tests.integration.conftest import ServeFactory

SEED = 9
WARMUP_S = 5.0
RUN_S = float(os.environ.get("ZUULPUSH_FUZZ_S", "20"))
"""Seconds of fuzzing: 20 in the suite; for a long run,
`ZUULPUSH_FUZZ_S=300 pytest -s tests/integration/test_fuzz.py`."""
CONCURRENCY = 16
RSS_GROWTH_MB = 20.0
"""After the warm-up, allocator noise is a few MB; a leak of one connection's state per fuzz
connection (thousands of them) would be far more."""
READ_TIMEOUT_S = 4.0
DOCUMENTED = {1000, 1002, 1003, 1007, 1008, 1009, 4000, 4002, 4003}
ECHOED = {3000, 4999}
"""Valid close codes `_frames` sends, which the edge answers with the same code."""
WS_KEY = base64.b64encode(b"0123456789abcdef").decode()


def _mask(first: int, payload: bytes, rng: random.Random, *, masked: bool = True) -> bytes:
    length = len(payload)
    if length < 126:
        head = bytes((first, (0x80 if masked else 0) | length))
    elif length < 1 << 16:
        head = bytes((first, (0x80 if masked else 0) | 126)) + struct.pack("!H", length)
    else:
        head = bytes((first, (0x80 if masked else 0) | 127)) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = rng.randbytes(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _frames(rng: random.Random) -> bytes:
    """A few client frames, mostly valid, some broken in one of the ways issue 9 lists."""
    out = bytearray()
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(14)
        if kind == 0:
            out += _mask(0x81, orjson.dumps({"type": "ack", "ids": ["01X"]}), rng)
        elif kind == 1:
            out += _mask(0x89, rng.randbytes(rng.randint(0, 125)), rng)  # ping
        elif kind == 2:
            out += b"".join(_mask(0x89, b"p", rng) for _ in range(rng.randint(50, 400)))  # flood
        elif kind == 3:
            out += _mask(0x81, rng.randbytes(rng.randint(1, 40)), rng)  # text, maybe bad UTF-8
        elif kind == 4:
            out += _mask(0x82, rng.randbytes(rng.randint(0, 40)), rng)  # binary
        elif kind == 5:
            out += _mask(0x81, b"x", rng, masked=False)  # unmasked
        elif kind == 6:
            out += _mask(rng.choice([0xC1, 0xA1, 0x91]), b"{}", rng)  # RSV1 (deflate), RSV2/3
        elif kind == 7:
            out += _mask(rng.choice([0x83, 0x87, 0x8B, 0x8F]), b"", rng)  # reserved opcodes
        elif kind == 8:
            out += _mask(0x01, b'{"type":', rng) + _mask(0x89, b"", rng) \
                + _mask(0x80, b'"ack","id":"1"}', rng)  # fragmented, a ping between
        elif kind == 9:
            out += _mask(0x01, b"a", rng) + _mask(0x81, b"b", rng)  # new message mid-message
        elif kind == 10:
            code = rng.choice([1000, 1004, 1005, 1006, 2000, 3000, 4999, 5000])
            out += _mask(0x88, struct.pack("!H", code) + rng.randbytes(rng.randint(0, 3)), rng)
        elif kind == 11:
            out += _mask(0x81, b" " * rng.choice([70_000, 200_000]), rng)  # too big
        elif kind == 12:
            out += rng.randbytes(rng.randint(1, 64))  # noise
        else:
            out += _mask(0x89, b"x" * 126, rng)  # control frame over 125 bytes
    return bytes(out)


def _request(rng: random.Random, token: str) -> tuple[bytes, bool]:
    """Bytes to send first, and whether they are a valid upgrade (frames follow)."""
    kind = rng.randrange(9)
    upgrade = (f"GET /ws?token={token} HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    if kind <= 2:
        return upgrade, True
    if kind == 3:
        return rng.randbytes(rng.randint(1, 2000)), False
    if kind == 4:
        return upgrade[:rng.randint(1, len(upgrade) - 1)], False  # truncated
    if kind == 5:  # header flood: many headers, or one huge one
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(rng.randint(100, 400)))
        return b"GET /ws HTTP/1.1\r\nHost: fuzz\r\n" + many + b"\r\n", False
    if kind == 6:
        damaged = bytearray(upgrade)
        for _ in range(rng.randint(1, 5)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        return bytes(damaged), False
    if kind == 7:
        bad = token[:-4] + "AAAA" if rng.random() < 0.5 else "a.b.c"
        return upgrade.replace(token.encode(), bad.encode()), False
    target = rng.choice([b"/sse", b"/nowhere", b"/admin/status", b"/ws?last_id=%00", b"*"])
    return b"GET " + target + b" HTTP/1.1\r\nHost: fuzz\r\n\r\n", False


def _outcome(data: bytes) -> str:
    """What the server answered, as a short label; fails on an undocumented answer."""
    if not data:
        return "closed silently"
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        if status >= 400:
            body = orjson.loads(rest[:rest.index(b"}}") + 2])
            assert body["error"]["code"], data[:300]
        return f"HTTP {status}"
    code = _close_code(rest)
    assert code is None or code in DOCUMENTED | ECHOED, (code, rest[-200:])
    return f"WS close {code}" if code is not None else "WS ended without close"


def _close_code(stream: bytes) -> int | None:
    """The code of the server's close frame in `stream` (server frames are unmasked)."""
    at = 0
    while at + 2 <= len(stream):
        opcode, length = stream[at] & 0x0F, stream[at + 1] & 0x7F
        at += 2
        if length == 126:
            length = struct.unpack("!H", stream[at:at + 2])[0]
            at += 2
        elif length == 127:
            length = struct.unpack("!Q", stream[at:at + 8])[0]
            at += 8
        if opcode == 0x8:
            return int(struct.unpack("!H", stream[at:at + 2])[0]) if length >= 2 else 1005
        at += length
    return None


async def _one(host: str, port: int, rng: random.Random, token: str) -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except OSError as exc:
        return f"connect failed: {type(exc).__name__}"
    received = bytearray()
    try:
        first, upgraded = _request(rng, token)
        writer.write(first)
        if upgraded:
            writer.write(_frames(rng))
        if rng.random() < 0.3:
            writer.write_eof()  # half-close: the server answers, then closes
        await writer.drain()
        deadline = time.monotonic() + READ_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                break
            received += chunk
    except OSError as exc:  # reset, timed out, or closed by the server before our half-close
        if not received:
            return f"no answer: {type(exc).__name__}"
    finally:
        writer.close()
    return _outcome(bytes(received))


async def _status(session: aiohttp.ClientSession, edge: str) -> dict[str, Any]:
    async with session.get(edge + "/healthz") as response:
        return dict(await response.json())


def _rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


@pytest.mark.timeout(90 + 2 * RUN_S)
async def test_a_fuzz_run_leaves_the_good_device_served_and_nothing_leaked(
        serve_factory: ServeFactory) -> None:
    server = serve_factory(ZUULPUSH_WS_MAX_MESSAGE_BYTES="65536")
    host, port = host_port(server.edge)
    outcomes: Counter[str] = Counter()
    pushed: list[str] = []
    received: list[str] = []
    rng = random.Random(SEED)
    async with ws_connect(ws_url(server.edge, token=server.token("fuzz-good"))) as good, \
            push_api(server.api, server.api_key) as api, aiohttp.ClientSession() as session:
        baseline = await _status(session, server.edge)

        async def read_good() -> None:
            while True:
                received.append((await ws_recv_json(good, 30))["id"])

        async def push_loop(until: float) -> None:
            while time.monotonic() < until:
                pushed.append(await api.send({"n": len(pushed)}, clients=["fuzz-good"]))
                await asyncio.sleep(0.05)

        async def fuzz_loop(worker: int, until: float) -> None:
            local = random.Random(rng.random())
            n = 0
            while time.monotonic() < until:
                n += 1
                token = server.token(f"fuzz-{worker}-{n % 50}")
                outcomes[await _one(host, port, local, token)] += 1

        reader = asyncio.create_task(read_good())
        tasks: list[asyncio.Task[None]] = []
        try:
            until = time.monotonic() + WARMUP_S + RUN_S
            tasks += [asyncio.create_task(fuzz_loop(i, until)) for i in range(CONCURRENCY)]
            tasks.append(asyncio.create_task(push_loop(until)))
            await asyncio.sleep(WARMUP_S)
            rss_warm = _rss_mb(server.pid)
            await asyncio.gather(*tasks)
            rss_end = _rss_mb(server.pid)
            for _ in range(100):  # the last pushes, and the deadlines of the last fuzz sockets
                status = await _status(session, server.edge)
                if len(received) >= len(pushed) and status["sockets"] == baseline["sockets"]:
                    break
                await asyncio.sleep(0.1)
        finally:
            for task in [reader, *tasks]:
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)
    total = sum(outcomes.values())
    print(f"\nfuzz: {total} raw connections in {RUN_S + WARMUP_S:.0f} s "
          f"(seed {SEED}, {CONCURRENCY} at a time); pushed {len(pushed)}, "
          f"received {len(received)}")
    for label, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {count:6d}  {label}")
    print(f"sockets: baseline {baseline['sockets']}, end {status['sockets']}; connections: "
          f"baseline {baseline['connections']}, end {status['connections']}")
    print(f"RSS: warm {rss_warm:.1f} MB, end {rss_end:.1f} MB "
          f"(+{rss_end - rss_warm:.1f} MB, bound {RSS_GROWTH_MB} MB); pid {server.pid} "
          f"cpu {psutil.Process(server.pid).cpu_times().user:.1f} s user")
    assert total > 200, outcomes
    assert not [label for label in outcomes if label.startswith("connect failed")], outcomes
    assert sorted(received) == sorted(pushed) and len(set(received)) == len(received)
    assert status["sockets"] == baseline["sockets"], status
    assert status["connections"] == baseline["connections"] == 1, status
    assert rss_end - rss_warm <= RSS_GROWTH_MB
    assert server.proc.poll() is None  # alive; the fixture then stops it and checks its exit
