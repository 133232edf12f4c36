"""`zuulpush.app.serve_banner.zuulpush_command`: how the banner names the running `zuulpush`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zuulpush.app.serve_banner import zuulpush_command


def test_the_console_script_by_its_absolute_path(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "my venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "zuulpush").write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    command = zuulpush_command("my venv/bin/zuulpush", "/usr/bin/python3")
    assert command == f"'{bin_dir / 'zuulpush'}'"  # absolute, and quoted for its space


def test_python_dash_m_with_the_absolute_interpreter(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    command = zuulpush_command("/src/zuulpush/__main__.py", ".venv/bin/python")
    assert command == f"{os.path.join(tmp_path, '.venv/bin/python')} -m zuulpush"
    # A script of that name that is not there (argv[0] as typed, gone) is not trusted.
    assert zuulpush_command("zuulpush", "/usr/bin/python3") == "/usr/bin/python3 -m zuulpush"
