"""The test load balancer (`tests.support.balancer`) as a process: round robin, a refusing
backend skipped, bytes both ways with half-closes passed on, a backend that speaks first, and
backends changed at run time. The herd tests rely on each of these."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.balancer import Backend, BalancerProcess

WAIT_S = 5.0


def refusing_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_backend(name: bytes, *, speak_first: bool = False
                        ) -> tuple[asyncio.Server, Backend]:
    """Answers `<name>:` and what the client sent, once the client has shut its side; with
    `speak_first`, sends `<name>!` at accept, before reading anything."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if speak_first:
            writer.write(name + b"!")
        data = await reader.read()  # to the client's end of stream
        writer.write(name + b":" + data)
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, ("127.0.0.1", int(server.sockets[0].getsockname()[1]))


async def exchange(balancer: BalancerProcess, data: bytes) -> bytes:
    """Send `data`, shut our side, read the answer to its end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port)
    try:
        writer.write(data)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()


@pytest.fixture
async def backends() -> AsyncIterator[list[tuple[asyncio.Server, Backend]]]:
    started = [await start_backend(b"one"), await start_backend(b"two"),
               await start_backend(b"chatty", speak_first=True)]
    yield started
    for server, _ in started:
        server.close()
        await server.wait_closed()


async def test_round_robin_skips_a_refusing_backend_and_passes_half_closes_on(
        tmp_path: Path, backends: list[tuple[asyncio.Server, Backend]]) -> None:
    (_, one), (_, two), _ = backends
    balancer = await BalancerProcess.start([one, ("127.0.0.1", refusing_port()), two],
                                           tmp_path / "balancer.err")
    try:
        answers = [await exchange(balancer, b"hi%d" % i) for i in range(6)]
        stats = await balancer.stats()
        noted = await balancer.answers()
    finally:
        assert await balancer.stop() == 0
    # one, (refused) -> two, two, one, (refused) -> two, two: every connection got an answer
    assert answers == [b"one:hi0", b"two:hi1", b"two:hi2", b"one:hi3", b"two:hi4", b"two:hi5"]
    assert stats["accepted"] == 6 and stats["open"] == 0 and stats["no_backend"] == 0
    assert sum(stats["refused"].values()) == 2
    # each forwarded connection noted, with its backend (no HTTP status line here)
    assert [(b, status) for _, b, status in noted] == [
        (f"127.0.0.1:{port}", "-") for port in (one[1], two[1], two[1], one[1], two[1], two[1])]


async def test_what_a_backend_sends_before_the_client_speaks_reaches_the_client(
        tmp_path: Path, backends: list[tuple[asyncio.Server, Backend]]) -> None:
    """An edge writes a shed `503` at accept: those bytes must not be lost while the balancer
    is still joining the two sides."""
    _, _, (_, chatty) = backends
    balancer = await BalancerProcess.start([chatty], tmp_path / "balancer.err")
    try:
        answers = [await exchange(balancer, b"x") for _ in range(20)]
    finally:
        assert await balancer.stop() == 0
    assert answers == [b"chatty!chatty:x"] * 20


async def test_backends_change_at_run_time_and_none_left_closes_the_client(
        tmp_path: Path, backends: list[tuple[asyncio.Server, Backend]]) -> None:
    (_, one), (_, two), _ = backends
    balancer = await BalancerProcess.start([one], tmp_path / "balancer.err")
    try:
        assert await exchange(balancer, b"a") == b"one:a"
        await balancer.set_backends([two])
        assert await exchange(balancer, b"b") == b"two:b"
        await balancer.set_backends([("127.0.0.1", refusing_port())])
        reader, writer = await asyncio.open_connection("127.0.0.1", balancer.port)
        try:  # closed (or reset): nobody to forward to
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
        finally:
            writer.close()
        assert (await balancer.stats())["no_backend"] == 1
    finally:
        assert await balancer.stop() == 0
