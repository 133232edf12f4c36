"""The lines `zuulpush serve` and its demo page print work when pasted, as they are, into a shell
that knows nothing of the virtual environment (`/bin/sh`, `PATH=/usr/bin:/bin`, another working
directory, no `ZUULPUSH_*` variable unless the case needs one): the `zuulpush listen` line
receives a push, the `zuulpush token` line prints a token the edge accepts, the demo page's curl
lines get a 202. A configured secret is never used to print a device token: the banner says how
to make one instead. Real `zuulpush serve` processes, a real shell, curl and headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import orjson
import pytest
from playwright.async_api import Browser

from core.tokens import AuthConfig, TokenVerifier
from tests.support.procs import wait_or_kill

from .clients import WAIT_S, push_api, ws_connect, ws_url
from .conftest import ServeFactory
from .servers import ADMIN_KEY, SECRET, ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PLAIN_PATH = "/usr/bin:/bin"
JWT = re.compile(r"ey[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
SHELL_TIMEOUT_S = 20.0


def plain_env(home: Path, **extra: str) -> dict[str, str]:
    """A login-less shell's environment: no venv on PATH, no ZUULPUSH_* settings."""
    return {"PATH": PLAIN_PATH, "HOME": str(home), "LANG": "C.UTF-8", **extra}


async def sh(line: str, cwd: Path, env: Mapping[str, str]) -> tuple[int, str, str]:
    """`line` run by /bin/sh as typed at a prompt (bounded; killed by PID on timeout)."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", line, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SHELL_TIMEOUT_S)
    except TimeoutError:
        await wait_or_kill(proc, 1)
        raise AssertionError(f"{line!r} did not finish in {SHELL_TIMEOUT_S} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def sh_running(line: str, cwd: Path, env: Mapping[str, str]
                     ) -> AsyncIterator[asyncio.subprocess.Process]:
    """`line` (one command) running under /bin/sh's `exec`, so that its PID is the command's;
    ended with SIGINT (a terminal's Ctrl-C) and reaped on leaving."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", "exec " + line, cwd=cwd, env=dict(env),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        await wait_or_kill(proc, 5)
        await asyncio.wait_for(proc.communicate(), 5)


async def next_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S * 2)
    assert line, "the command ended"
    return line.decode().rstrip("\n")


async def connected(server: ServerProcess, client_id: str) -> None:
    """Wait (bounded) until the edge holds `client_id` (its admin API says so)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(f"{server.edge}/admin/clients/{client_id}",
                                headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{client_id} never connected")


def banner(server: ServerProcess, contains: str, *, unless: str = "\0") -> str:
    """The one banner line containing `contains` (and not `unless`)."""
    [line] = [line.strip() for line in server.lines if contains in line and unless not in line]
    return line


def token_line(server: ServerProcess) -> str:
    return banner(server, "zuulpush token ", unless=" listen ")


async def edge_accepts(server: ServerProcess, token: str) -> None:
    async with ws_connect(ws_url(server.edge, token=token)) as ws:
        await ws.ping()


def test_the_plain_shell_does_not_find_the_venvs_zuulpush() -> None:
    # What the cases below rely on: the venv's bin directory is not on PLAIN_PATH.
    assert shutil.which("zuulpush", path=PLAIN_PATH) is None
    assert Path(sys.executable).parent.as_posix() not in PLAIN_PATH.split(":")


async def test_with_a_secret_made_for_the_run_the_listen_and_token_lines_work_pasted(
        serve_factory: ServeFactory, tmp_path: Path) -> None:
    server = serve_factory(ZUULPUSH_SECRET="", ZUULPUSH_API_KEYS="")
    env = plain_env(tmp_path)
    listen, mint = banner(server, " listen "), token_line(server)
    push = banner(server, "curl -X POST ")
    async with sh_running(listen, tmp_path, env) as listener:
        await connected(server, "demo-device")
        code, out, err = await sh(push, tmp_path, env)
        assert code == 0, err
        sent = orjson.loads(out)
        assert sent["targets"] == 1
        received = orjson.loads(await next_line(listener))
        assert (received["id"], received["data"]) == (sent["id"], {"text": "Hello from zuulpush"})

    code, out, err = await sh(mint, tmp_path, env)
    assert code == 0, err
    [token] = out.split()
    await edge_accepts(server, token)
    # The run's secret signed it (the line carries it: it was made for this run only).
    secret = re.search(r"ZUULPUSH_SECRET=(\S+)", mint)
    assert secret is not None
    claims = TokenVerifier(AuthConfig(secret=secret[1].strip("'"))).verify(token)
    assert (claims.client_id, claims.user_id, claims.device_type) == (
        "demo-device-2", "demo-user", "web")


async def test_with_a_configured_secret_no_token_is_printed_and_the_lines_say_how(
        serve_factory: ServeFactory, tmp_path: Path) -> None:
    server = serve_factory()  # ZUULPUSH_SECRET is configured
    text = server.stdout_text()
    assert not JWT.search(text), text
    assert SECRET not in text
    env = plain_env(tmp_path, ZUULPUSH_SECRET=SECRET)  # the operator's own shell has it
    code, out, err = await sh(token_line(server), tmp_path, env)
    assert code == 0, err
    await edge_accepts(server, out.strip())

    async with (sh_running(banner(server, " listen "), tmp_path, env) as listener,
                push_api(server.api, server.api_key) as api):
        await connected(server, "demo-device")
        sent = await api.send("to the pasted listener", clients=["demo-device"])
        assert orjson.loads(await next_line(listener))["id"] == sent


async def test_with_the_secret_in_a_config_file_the_token_line_names_the_file(
        serve_factory: ServeFactory, tmp_path: Path) -> None:
    config = tmp_path / "zuulpush.toml"
    config.write_text(f'secret = "{SECRET}"\n')
    server = serve_factory(args=("--config", str(config)), ZUULPUSH_SECRET="")
    assert not JWT.search(server.stdout_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out, err = await sh(token_line(server), elsewhere, plain_env(tmp_path))
    assert code == 0, err
    await edge_accepts(server, out.strip())


async def test_the_demo_pages_curl_lines_work_pasted(
        serve_factory: ServeFactory, browser: Browser, tmp_path: Path) -> None:
    server = serve_factory(ZUULPUSH_API_KEYS="")  # an API key made for the run: it is printed
    page = await browser.new_page()
    await page.goto(f"{server.api}/demo", timeout=15_000)
    await page.wait_for_function("window.zuulpushDemo.client && "
                                 "window.zuulpushDemo.client.state === 'open'", timeout=15_000)
    env = plain_env(tmp_path)
    status = " -sS -o /dev/null -w '%{http_code}'"  # curl options after the pasted ones

    demo_line = (await page.locator("#curl").inner_text()).strip()
    assert "API_KEY" not in demo_line
    code, out, err = await sh(demo_line + status, tmp_path, env)
    assert (code, out) == (0, "202"), err
    await page.wait_for_function("window.zuulpushDemo.received.length === 1", timeout=15_000)
    assert "Hello from curl" in await page.locator("#messages").inner_text()

    # The push API's line, after the banner's `export` line for the key made for this run.
    api_line = (await page.locator("#curl-api").inner_text()).strip()
    assert "/v1/push" in api_line and server.api_key not in api_line
    export = banner(server, "export ZUULPUSH_API_KEY=")
    code, out, err = await sh(f"{export}\n{api_line}{status}", tmp_path, env)
    assert (code, out) == (0, "202"), err
    await page.wait_for_function("window.zuulpushDemo.received.length === 2", timeout=15_000)


async def test_a_configured_api_key_is_not_exported(serve_factory: ServeFactory) -> None:
    server = serve_factory()
    assert server.api_key not in server.stdout_text()
    assert "export ZUULPUSH_API_KEY" not in server.stdout_text()
