"""`zuulpush listen` as a real process: it reconnects like the SDK it is built on when its edge
drains (a fleet's `zuulpush edge --workers 2` on a real Redis, drained by `zuulpush drain`), and
keeps printing pushes; replaced by a newer connection of its client id, it says so once and exits
1; `--no-reconnect` keeps the old one-connection behaviour. The devices that replace it are the
`websockets` library; pushes go through a real `zuulpush api` and `zuulpush router`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from registry.redis import RedisRegistry
from tests.support.procs import wait_or_kill
from tests.support.redis_servers import RedisServer

from .clients import push_api, ws_connect, ws_url
from .servers import API, API_KEY, EDGE, ROOT, ROUTER, ServerProcess, start_many, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WAIT_S = 20.0


@contextlib.asynccontextmanager
async def listening(url: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`zuulpush listen URL` running; SIGINT (Ctrl-C) to its PID and reaped on leaving."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zuulpush", "listen", url, *args, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        await wait_or_kill(proc, 10)


async def printed(proc: asyncio.subprocess.Process) -> dict[str, object]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
    assert line, "zuulpush listen ended"
    message = orjson.loads(line)
    assert isinstance(message, dict)
    return message


async def holder(registry: RedisRegistry, client_id: str, not_on: str = "") -> str:
    """The node the registry says holds `client_id` (other than `not_on`), once it does."""
    for _ in range(int(WAIT_S / 0.05)):
        found = await registry.lookup(client_id)
        if found is not None and found.node_id != not_on:
            return found.node_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"{client_id} is held by no node (other than {not_on!r})")


async def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")} | env
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zuulpush", *args, cwd=ROOT, env=full,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_a_drained_edge_is_reconnected_to_and_pushes_keep_coming(
        tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    env = {"ZUULPUSH_REDIS_URL": redis_server.url, "ZUULPUSH_REGISTRY_PREFIX": redis_prefix,
           "ZUULPUSH_ROUTER_PREFIX": redis_prefix, "ZUULPUSH_DRAIN_WINDOW_S": "1"}
    fleet: list[ServerProcess] = start_many(tmp_path, [
        (EDGE, env, ("--workers", "2", "--node-id", "ld")), (API, env, ()), (ROUTER, env, ())])
    edge, api = fleet[0], fleet[1]
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    try:
        url = ws_url(edge.edge, token=edge.token("listener"))
        async with listening(url) as listener, push_api(api.api, API_KEY) as sender:
            node = await holder(registry, "listener")
            first = await sender.send("before the drain", clients=["listener"])
            assert (await printed(listener))["id"] == first

            code, out = await cli(env, "drain", "--node", node, "--wait", "--timeout", "30")
            assert code == 0, out
            await holder(registry, "listener", not_on="")  # connected again, on either node
            after = await sender.send("after the drain", clients=["listener"])
            assert (await printed(listener))["id"] == after
            assert listener.returncode is None  # still running: it did not exit on the 4000
        assert listener.returncode == 0  # Ctrl-C
        assert listener.stderr is not None
        err = (await listener.stderr.read()).decode()
        assert "4000" in err and "reconnecting" in err, err
        assert "Traceback" not in err
    finally:
        await registry.close()
        stop_all(fleet)


async def test_replaced_it_says_so_once_and_exits_1(server: ServerProcess) -> None:
    client = f"replaced-{os.urandom(3).hex()}"
    url = ws_url(server.edge, token=server.token(client))
    async with listening(url) as listener:
        assert listener.stdout is not None and listener.stderr is not None
        async with push_api(server.api, server.api_key) as sender:
            sent = await sender.send("to the first connection", clients=[client])
            assert (await printed(listener))["id"] == sent
        async with ws_connect(url):  # the newer connection of the same client id
            code = await asyncio.wait_for(listener.wait(), WAIT_S)
        err = (await listener.stderr.read()).decode()
    assert code == 1
    assert [line for line in err.splitlines() if line] == [
        "zuulpush listen: replaced by a newer connection of the same client id "
        "(replaced by a newer connection)"], err


async def test_with_no_reconnect_it_exits_when_the_server_closes(server: ServerProcess) -> None:
    client = f"once-{os.urandom(3).hex()}"
    url = ws_url(server.edge, token=server.token(client))
    async with listening(url, "--no-reconnect") as listener:
        assert listener.stderr is not None
        async with push_api(server.api, server.api_key) as sender:
            await sender.send("hello", clients=[client])
            await printed(listener)
        code, _ = await cli({"ZUULPUSH_ADMIN_KEY": server.admin_key}, "admin", "close",
                            client, "--edge", server.edge)
        assert code == 0
        assert await asyncio.wait_for(listener.wait(), WAIT_S) == 0
        err = (await listener.stderr.read()).decode()
    assert err.startswith("zuulpush listen: closed 4000 "), err
