"""The README's screenshots come from one explicit command, `scripts/docs-images`, never from the
test suite: run here into a temporary directory (so the tree is not touched), it starts its own
`zuulpush serve`, drives headless Chromium, and writes both pictures."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from .servers import ROOT

pytestmark = pytest.mark.timeout(150)

SCRIPT = ROOT / "scripts" / "docs-images"
IMAGES = {"dashboard.png": 1280, "demo.png": 1000}  # name: the page's viewport width
PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG and head[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_docs_images_command_writes_both_screenshots(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], cwd=ROOT,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(IMAGES)
    for name, width in IMAGES.items():
        shot_width, shot_height = png_size(tmp_path / name)
        assert shot_width == width and shot_height >= 400, (name, shot_width, shot_height)
        assert str(tmp_path / name) in done.stdout  # it says what it wrote
