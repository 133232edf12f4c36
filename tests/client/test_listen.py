"""`zuulpush listen` on the SDK: its command-line behaviour against a real server."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from zuulpush.edge.wsframes import Close
from zuulpush.listen import listen, split_device_url

from .conftest import WAIT_S, Server, eventually, token


def test_split_device_url() -> None:
    assert split_device_url("ws://127.0.0.1:8080/ws?token=T&last_id=01A") == \
        ("ws://127.0.0.1:8080", "ws", "T", "01A")
    assert split_device_url("https://push.example/zp/sse?token=T") == \
        ("https://push.example/zp", "sse", "T", None)


async def test_prints_acks_and_exits_on_a_close(server: Server, cid: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws?token={token(cid)}"
    task = asyncio.create_task(listen(url, timeout_s=WAIT_S))
    await eventually(lambda: cid in server.app.edge.connections)
    sent = [await server.push(cid, n) for n in range(2)]
    await eventually(lambda: _inbox_empty(server, cid))  # printed and acked
    server.app.edge.connections[cid].goaway(Close.RECONNECT, "bye", base_delay_ms=10)
    assert await asyncio.wait_for(task, WAIT_S) == 0
    out, err = capsys.readouterr()
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == sent
    assert err.startswith("zuulpush listen: closed 4000 {")


async def _inbox_empty(server: Server, client_id: str) -> bool:
    return await server.inbox_ids(client_id) == []


async def test_count_resume_and_refusal(server: Server, cid: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    sent = [await server.push(cid, n) for n in range(3)]
    url = f"http://127.0.0.1:{server.port}/sse?token={token(cid)}&last_id={sent[0]}"
    assert await listen(url, count=2, timeout_s=WAIT_S) == 0
    assert [orjson.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == sent[1:]
    bad = f"ws://127.0.0.1:{server.port}/ws?token=nope"
    assert await listen(bad, timeout_s=WAIT_S) == 1
    assert "token refused: Unauthorized" in capsys.readouterr().err


async def test_with_reconnect_it_rides_out_a_goaway_and_prints_on(
        server: Server, cid: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws?token={token(cid)}"
    task = asyncio.create_task(listen(url, count=2, timeout_s=WAIT_S * 2, reconnect=True))
    await eventually(lambda: cid in server.app.edge.connections)
    first = await server.push(cid, 1)
    await eventually(lambda: _inbox_empty(server, cid))
    old = server.app.edge.connections[cid]
    old.goaway(Close.RECONNECT, "drain", base_delay_ms=10)
    await eventually(lambda: server.app.edge.connections.get(cid) not in (None, old))
    second = await server.push(cid, 2)
    assert await asyncio.wait_for(task, WAIT_S) == 0
    out, err = capsys.readouterr()
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == [first, second]
    assert err.startswith("zuulpush listen: reconnecting in ") and "closed 4000" in err
