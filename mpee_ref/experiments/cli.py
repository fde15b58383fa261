"""The ``train`` and ``evaluate`` subcommands of ``python -m mpee_ref`` (one registry entry for both)."""

from __future__ import annotations

import argparse
from typing import Any

from . import evaluate, train  # the submodules (the package exports no names that shadow them)

_COMMANDS = {"train": train, "evaluate": evaluate}


def add_parser(subparsers: Any) -> None:
    for module in _COMMANDS.values():
        module.add_parser(subparsers)


def run(args: argparse.Namespace) -> int:
    return _COMMANDS[args.command].run(args)
