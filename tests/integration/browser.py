"""Headless Chromium for the browser tests: Debian's `chromium` package (installed by
`bash scripts/test` when missing), driven by Playwright for Python with `executable_path`, so
no browser is downloaded. Each test gets its own browser process, closed by Playwright at the
end of the test. Tests write what they capture under their own temporary directory; the
README's screenshots come from `scripts/docs-images`."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed (bash scripts/test installs Debian's package)")
    return path


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium (no sandbox: the tests may run as root)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True,
            args=["--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield browser
        finally:
            await browser.close()
