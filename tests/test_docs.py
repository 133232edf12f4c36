"""The README tells the truth about configuration and the command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from zuulpush.cli import _fill_secrets, _parser
from zuulpush.config import COMPONENTS, ENV_PREFIX, known_keys, load_settings
from zuulpush.edge.server import default_node_id

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

# Default cells in words, for settings whose default is empty ("" or ()); every other default is
# shown as its value in backticks. Each word has a test below that holds it to the code.
UNSET = "none"
PER_RUN = "none; `serve` makes one per run"
NODE_ID = "host-pid-random"


@dataclasses.dataclass(frozen=True)
class Row:
    env: str
    flags: str
    default: str
    meaning: str


def _documented() -> dict[str, Row]:
    """The rows of the Configuration section's table (other tables name metrics, ...)."""
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| `")]
    rows: dict[str, Row] = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 5, line
        key = cells[0].strip("`")
        assert key not in rows, f"{key} is in the table twice"
        rows[key] = Row(*cells[1:])
    return rows


def _flags() -> dict[str, dict[str, set[str]]]:
    """{dest: {flag: {command, ...}}} over every subcommand of the real parser."""
    found: dict[str, dict[str, set[str]]] = {}

    def walk(parser: argparse.ArgumentParser, command: str | None) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, command or name)
            elif action.option_strings and command is not None:
                for flag in action.option_strings:
                    found.setdefault(action.dest, {}).setdefault(flag, set()).add(command)

    walk(_parser(), None)
    return found


def test_every_setting_is_documented_and_nothing_else() -> None:
    assert set(_documented()) == set(known_keys())


def test_a_key_shared_by_components_has_one_default() -> None:
    defaults: dict[str, set[str]] = {}
    for component in COMPONENTS:
        for field in dataclasses.fields(component):
            defaults.setdefault(field.name, set()).add(repr(field.default))
    assert {key: d for key, d in defaults.items() if len(d) > 1} == {}


@pytest.mark.parametrize("key", sorted(known_keys()))
def test_documented_environment_variable_sets_the_key(key: str) -> None:
    row = _documented()[key]
    assert row.env == f"`{ENV_PREFIX}{key.upper()}`"
    kind = type(known_keys()[key].default)
    raw, value = {bool: ("true", True), int: ("7", 7), float: ("1.5", 1.5),
                  str: ("x", "x"), tuple: ("a,b", ("a", "b"))}[kind]
    assert load_settings(environ={row.env.strip("`"): raw})[key] == value


@pytest.mark.parametrize("key", sorted(known_keys()))
def test_documented_default_matches(key: str) -> None:
    default: Any = known_keys()[key].default
    assert default is not dataclasses.MISSING, f"{key}: no plain default; document it in words"
    documented = _documented()[key].default
    if default in ("", ()):
        assert documented in (UNSET, PER_RUN, NODE_ID), (key, documented)
        return
    shown = str(default).lower() if isinstance(default, bool) else str(default)
    assert documented.startswith("`") and documented.endswith("`"), (key, documented)
    assert documented.strip("`") in (shown, shown.removesuffix(".0")), (key, documented)


def test_made_per_run_is_what_serve_makes() -> None:
    documented = {key for key, row in _documented().items() if row.default == PER_RUN}
    assert documented == set(_fill_secrets({}))


def test_host_pid_random_is_the_node_id_made() -> None:
    assert {key for key, row in _documented().items() if row.default == NODE_ID} == {"node_id"}
    pattern = rf"{re.escape(socket.gethostname())}-{os.getpid()}-[0-9a-f]{{6}}"
    assert re.fullmatch(pattern, default_node_id())


@pytest.mark.parametrize("key", sorted(known_keys()))
def test_documented_flags_are_the_parsers(key: str) -> None:
    """The flag cell names every flag that sets the key, each with the commands that take it
    (`--workers` is `edge_workers` for edge and `router_workers` for router)."""
    cell = _documented()[key].flags
    documented = {flag: set(commands.split(", "))
                  for flag, commands in re.findall(r"`(--[a-z-]+)` \(([a-z, ]+)\)", cell)}
    if not documented:
        assert cell == "—", (key, cell)
    assert documented == _flags().get(key, {}), key


def test_flags_in_meanings_exist() -> None:
    every = {flag for flags in _flags().values() for flag in flags}
    for key, row in _documented().items():
        for flag in re.findall(r"`(--[a-z-]+)", row.meaning):
            assert flag in every, (key, flag)


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
