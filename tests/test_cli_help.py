"""`zuulpush --help`: every option of every command (and of `admin`'s actions) has a help line."""

from __future__ import annotations

import argparse

from zuulpush.cli import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: str = "zuulpush"
              ) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, f"{prefix} {name}")
    return found


def test_every_option_says_what_it_does() -> None:
    silent = [f"{command} {action.option_strings[-1]}"
              for command, parser in _commands(build_parser())
              for action in parser._actions
              if action.option_strings and not action.help]
    assert silent == []
