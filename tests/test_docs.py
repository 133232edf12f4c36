"""The README tells the truth about configuration and the command line."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from zuulpush.cli import build_parser
from zuulpush.cli.serve import fill_secrets
from zuulpush.config import COMPONENTS, ENV_PREFIX, known_keys, load_settings
from zuulpush.edge.server import default_node_id
from zuulpush.metrics import Metrics

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

    walk(build_parser(), None)
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
    assert documented == set(fill_secrets({}))


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
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"zuulpush {name}" in README


# The operator's pages: every command they show runs with the real parsers, every flag and
# variable they name exists, every metric they alert on is exported.

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_DOCS = [ROOT / "docs" / "operations.md", ROOT / "docs" / "sizing.md"]
FLEET_PY = ROOT / "deploy" / "local" / "fleet.py"
SHELL_WORDS = {"if", "then", "else", "do", "while", "until", "!", "sudo", "exec", "time"}


def _shell_commands(text: str) -> list[list[str]]:
    """The simple commands of every ```sh block: lines joined at a trailing backslash, split at
    `;`, `&`, `|`, `(` and `)` (so `$(zuulpush token ...)` is a command of its own)."""
    commands: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            command: list[str] = []
            for token in lexer:
                if token and set(token) <= set(";&|()"):
                    commands.append(command)
                    command = []
                else:
                    command.append(token)
            commands.append(command)
    return [c for c in commands if c]


def _program_args(command: list[str]) -> tuple[str, list[str]] | None:
    """("zuulpush" or "fleet.py", its arguments) if the command runs one of them."""
    words = list(command)
    while words and (words[0] in SHELL_WORDS
                     or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0])):
        words.pop(0)  # `until`, `sudo`, VAR=value ... before the command
    if words[:2] == ["docker", "run"] and "zuulpush" in words:
        return "zuulpush", words[words.index("zuulpush") + 1:]
    for i, word in enumerate(words[:2]):
        if word.endswith("fleet.py"):
            return "fleet.py", words[i + 1:]
    if words and (words[0] == "zuulpush" or words[0].endswith("/zuulpush")):
        return "zuulpush", words[1:]
    return None


def _fleet_parser() -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location("zuulpush_local_fleet", FLEET_PY)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module  # its dataclasses look their module up while defined
        spec.loader.exec_module(module)
    parser: argparse.ArgumentParser = module._parser()
    return parser


@pytest.mark.parametrize("doc", OPERATOR_DOCS, ids=lambda p: p.name)
def test_operator_commands_parse(doc: Path) -> None:
    parsers = {"zuulpush": build_parser(), "fleet.py": _fleet_parser()}
    checked = 0
    for command in _shell_commands(doc.read_text()):
        found = _program_args(command)
        if found is None:
            continue
        program, args = found
        try:
            parsers[program].parse_args(args)
        except SystemExit:
            pytest.fail(f"{doc.name}: {program} refuses {shlex.join(args)!r}")
        checked += 1
    assert checked or doc.name == "sizing.md"


def _options(*path: str) -> set[str]:
    parser = build_parser()
    for name in path:
        subparsers = next(a for a in parser._actions
                          if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[name]
    return {flag for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize("doc", OPERATOR_DOCS, ids=lambda p: p.name)
def test_operator_inline_commands_use_real_flags(doc: Path) -> None:
    """`zuulpush drain --node ID [--wait]` in a table: the command exists and takes each flag."""
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for code in re.findall(r"`(zuulpush [^`]+)`", doc.read_text()):
        words = code.split()
        assert words[1] in commands, code
        path = words[1:3] if words[1] == "admin" else words[1:2]
        for flag in re.findall(r"(--[a-z][a-z-]*)", code):
            assert flag in _options(*path), (doc.name, code, flag)


@pytest.mark.parametrize("doc", OPERATOR_DOCS, ids=lambda p: p.name)
def test_operator_variables_are_settings(doc: Path) -> None:
    real = {ENV_PREFIX + key.upper() for key in known_keys()}
    named = set(re.findall(r"\b(ZUULPUSH_[A-Z][A-Z_]*[A-Z])", doc.read_text()))
    assert named <= real, named - real


@pytest.mark.parametrize("doc", OPERATOR_DOCS, ids=lambda p: p.name)
def test_operator_metrics_exist(doc: Path) -> None:
    families = {family.name for family in  # type: ignore[union-attr]
                Metrics(CollectorRegistry()).registry.collect()}
    for name in set(re.findall(r"\b(zuulpush_[a-z_]+)", doc.read_text())):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert name in families or base in families, (doc.name, name)


def test_push_api_states_the_data_nesting_limit() -> None:
    from router.validation import MAX_DATA_DEPTH

    section = README.split("\n## Push-send API\n", 1)[1].split("\n## ", 1)[0]
    assert f"nest at most {MAX_DATA_DEPTH} levels" in " ".join(section.split())
