"""The README tells the truth about configuration and the command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zuulpush.cli import _parser
from zuulpush.config import known_keys

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _documented_keys() -> dict[str, str]:
    """The rows of the Configuration section's table (other tables name metrics, ...)."""
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", section, re.MULTILINE)
    return {key: default.strip() for key, default in rows}


def test_every_setting_is_documented_and_nothing_else() -> None:
    documented = _documented_keys()
    assert set(documented) == set(known_keys())


@pytest.mark.parametrize("key", sorted(known_keys()))
def test_documented_default_matches(key: str) -> None:
    default = known_keys()[key].default
    documented = _documented_keys()[key]
    if default in ("", ()):
        return  # generated or unset: described in words
    shown = str(default).lower() if isinstance(default, bool) else str(default)
    assert documented.strip("`") in (shown, shown.removesuffix(".0")), (key, documented)


def test_quick_start_is_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", quick, re.DOTALL)
    assert [len(b.strip().splitlines()) for b in blocks] == [1, 1]
    assert "zuulpush serve" in blocks[0]
    assert blocks[1].strip() == "bash scripts/test"
    assert (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text().strip().endswith(
        blocks[1].strip())


def test_every_command_is_in_the_readme() -> None:
    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"zuulpush {name}" in README
