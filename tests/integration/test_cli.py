"""The `zuulpush` command line against a real server: token, send, help, the banner's curl lines,
and a clean SIGTERM shutdown with reconnect hints."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from .clients import Curl, push_api, sse_stream, ws_connect, ws_recv_json, ws_url
from .servers import API_KEY, ROOT, SECRET, ServerProcess

Ids = Callable[[str], str]
CLI_TIMEOUT_S = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without ZUULPUSH_* settings or proxies, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ZUULPUSH_") and not k.lower().endswith("_proxy")}
    env.update(extra)
    return env


async def run(argv: list[str], env: Mapping[str, str], timeout_s: float = CLI_TIMEOUT_S
              ) -> tuple[int, str, str]:
    """Run a command to completion (bounded; killed by its PID on timeout)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        if proc.returncode is None:  # not reaped yet, so the PID is still this process's
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.communicate(), 5)
        raise AssertionError(f"{argv[:4]} did not finish in {timeout_s}s") from None
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def zuulpush(*args: str) -> list[str]:
    return [sys.executable, "-m", "zuulpush", *args]


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["token", "--help"],
                                  ["send", "--help"], ["--version"]])
async def test_help_exits_0(args: list[str]) -> None:
    code, stdout, stderr = await run(zuulpush(*args), clean_env())
    assert code == 0, stderr
    assert "zuulpush" in stdout


async def test_no_command_prints_help_and_exits_2() -> None:
    code, stdout, _ = await run(zuulpush(), clean_env())
    assert code == 2
    assert "serve" in stdout


async def test_token_command_prints_one_token_the_server_accepts(
        server: ServerProcess, ids: Ids) -> None:
    client = ids("cli-phone")
    code, stdout, stderr = await run(
        zuulpush("token", "--client", client, "--user", ids("user"), "--device-type", "phone"),
        clean_env(ZUULPUSH_SECRET=SECRET))
    assert code == 0, stderr
    assert stdout.endswith("\n") and stdout.count("\n") == 1
    token = stdout.strip()
    assert token.count(".") == 2 and " " not in token
    async with (ws_connect(ws_url(server.edge, token=token)) as ws,
                push_api(server.api, server.api_key) as api):
        sent = await api.send("via cli token", clients=[client])
        assert (await ws_recv_json(ws))["id"] == sent


async def test_token_command_without_secret_fails() -> None:
    code, stdout, stderr = await run(
        zuulpush("token", "--client", "c", "--user", "u", "--device-type", "phone"), clean_env())
    assert code == 2
    assert stdout == "" and "secret" in stderr


@pytest.mark.parametrize("api_from", ["flag", "env"])
async def test_send_command_delivers(server: ServerProcess, ids: Ids, api_from: str) -> None:
    client = ids("phone")
    env = clean_env(ZUULPUSH_API_KEYS=API_KEY)
    args = ["send", "--client", client, "--topic", "cli", "--data", '{"from": "cli", "n": 1}']
    if api_from == "flag":
        args += ["--api", server.api]
    else:  # the default API address comes from the same settings `serve` reads
        env["ZUULPUSH_API_PORT"] = server.api.rsplit(":", 1)[1]
    async with ws_connect(ws_url(server.edge, token=server.token(client))) as ws:
        code, stdout, stderr = await run(zuulpush(*args), env)
        assert code == 0, stderr
        answer = orjson.loads(stdout)
        assert answer["targets"] == 1
        message = await ws_recv_json(ws)
    assert message["id"] == answer["id"]
    assert (message["topic"], message["data"]) == ("cli", {"from": "cli", "n": 1})


async def test_send_command_reports_api_errors(server: ServerProcess) -> None:
    code, _, stderr = await run(
        zuulpush("send", "--api", server.api, "--api-key", "wrong", "--client", "c"), clean_env())
    assert code == 1
    assert orjson.loads(stderr)["error"]["code"] == "forbidden"


@pytest.mark.parametrize("targets", [["--device-type", "tv"], [],
                                     ["--device-type", "tv", "--device-type", "phone"]])
async def test_send_without_anybody_named_is_refused_saying_how(targets: list[str]) -> None:
    # Refused before anything is sent (nothing listens on the --api address).
    code, stdout, stderr = await run(zuulpush("send", "--api", "http://127.0.0.1:9", *targets),
                                     clean_env(ZUULPUSH_API_KEYS=API_KEY))
    assert (code, stdout) == (2, "")
    [line] = stderr.splitlines()
    assert line.startswith("zuulpush: ") and "--broadcast" in line, line
    if targets:
        assert "--device-type alone" in line


async def test_send_broadcast_with_a_device_type_reaches_that_type_only(
        server: ServerProcess, ids: Ids) -> None:
    tv_type, phone_type = ids("tv"), ids("phone")  # types of this test's own: nobody else's
    tv_token = server.token(ids("tv-1"), device_type=tv_type)
    phone_token = server.token(ids("phone-1"), device_type=phone_type)
    async with (ws_connect(ws_url(server.edge, token=tv_token)) as tv,
                ws_connect(ws_url(server.edge, token=phone_token)) as phone):
        code, stdout, stderr = await run(zuulpush(
            "send", "--api", server.api, "--broadcast", "--device-type", tv_type,
            "--data", '"for tvs"'), clean_env(ZUULPUSH_API_KEYS=API_KEY))
        assert code == 0, stderr
        sent = orjson.loads(stdout)["id"]
        assert (await ws_recv_json(tv))["id"] == sent
        async with push_api(server.api, server.api_key) as api:
            later = await api.send("for the phone", clients=[ids("phone-1")])
        assert (await ws_recv_json(phone))["id"] == later  # the broadcast never came first


async def banner_line(server: ServerProcess, prefix: str) -> str:
    """The banner line starting with `prefix` (the banner may still be arriving)."""
    for _ in range(100):
        for line in server.lines:
            if line.strip().startswith(prefix):
                return line.strip()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {prefix!r} line in:\n{server.stdout_text()}")


async def test_banner_curl_lines_work_as_printed(
        serve_factory: Callable[..., ServerProcess]) -> None:
    # No secret or API key configured: the banner prints a device token and the key made for
    # this run (configured ones it never uses to print anything; tests/integration/
    # test_security.py, test_pasted_lines.py).
    server = serve_factory(ZUULPUSH_API_KEYS="", ZUULPUSH_SECRET="")
    listen = shlex.split(await banner_line(server, "curl -N "))
    push = shlex.split(await banner_line(server, "curl -X POST "))
    assert listen[0] == push[0] == "curl"
    env = clean_env()
    sse = Curl(await asyncio.create_subprocess_exec(
        *listen, "--max-time", "15", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL))
    try:
        assert (await sse.next_event(messages_only=False)).retry is not None  # connected
        code, stdout, stderr = await run([*push, "--max-time", "10"], env)
        assert code == 0, stderr
        answer = orjson.loads(stdout)
        assert answer["targets"] == 1
        event = await sse.next_event()
    finally:
        await sse.stop()
    assert event.id == answer["id"]
    assert event.json()["data"] == {"text": "Hello from zuulpush"}
    assert event.json()["topic"] == "hello"


async def test_sigterm_sends_reconnect_hints_and_exits_0(
        serve_factory: Callable[..., ServerProcess], ids: Ids) -> None:
    server = serve_factory()
    web, curl_client = ids("web"), ids("curl")
    async with (ws_connect(ws_url(server.edge, token=server.token(ids("phone")))) as ws,
                aiohttp.ClientSession() as session,
                sse_stream(session, server.edge, server.token(web, device_type="web")) as sse):
        curl = await Curl.start("-N", "--max-time", "15",
                                f"{server.edge}/sse?token={server.token(curl_client)}")
        try:
            assert (await curl.next_event(messages_only=False)).retry is not None
            started = time.monotonic()
            server.terminate()

            with pytest.raises(ConnectionClosed) as caught:
                await asyncio.wait_for(ws.recv(), 10)
            close = caught.value.rcvd
            assert close is not None and close.code == 4000
            hint = orjson.loads(close.reason)
            assert isinstance(hint["reconnect_after_ms"], int) and hint["reconnect_after_ms"] > 0

            event = await sse.next(10)
            assert event.event == "reconnect"
            assert event.json()["code"] == 4000 and event.json()["reconnect_after_ms"] > 0
            after = await sse.next(5, messages_only=False)
            assert after.retry == event.json()["reconnect_after_ms"]
            assert await asyncio.wait_for(sse.response.content.read(), 5) == b""

            curl_event = await curl.next_event(10)
            assert curl_event.event == "reconnect"
            code, _, _ = await curl.output(10)
            assert code == 0  # the chunked stream was ended properly, not cut
        finally:
            await curl.stop()

    assert await asyncio.to_thread(server.wait, 10) == 0
    assert time.monotonic() - started < 10


async def test_serve_reads_its_config_file_and_flags_beat_the_environment(
        serve_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    config = tmp_path / "zuulpush.toml"
    config.write_text('[auth]\napi_keys = ["key-from-the-file"]\n[edge]\necho = true\n')
    # The environment asks for the default ports: the fixture's --port 0 / --api-port 0 win. An
    # empty ZUULPUSH_API_KEYS counts as unset, so the file's key is the one in force.
    server = serve_factory(args=("--config", str(config)),
                           ZUULPUSH_API_KEYS="", ZUULPUSH_PORT="8080", ZUULPUSH_API_PORT="8081")
    assert not server.edge.endswith(":8080") and not server.api.endswith(":8081")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.api}/v1/push", json={
                "to": {"clients": ["nobody"]}, "data": None},
                headers={"Authorization": "Bearer key-from-the-file"}) as response:
            assert response.status == 202
        async with session.ws_connect(ws_url(server.edge, "/echo")) as ws:
            await ws.send_str("from the config file")
            assert (await ws.receive_str(timeout=5)) == "from the config file"
