"""``python -m mpee_ref <command>`` (also the ``mpee-ref`` console script).

Subcommands live in the modules of :data:`SUBCOMMAND_MODULES`; each module defines
``add_parser(subparsers)`` (registering one or more subcommands) and ``run(args) -> int``. To add a
command, write such a module and append its name here. ``ValueError``/``OSError`` from a command print
one line ``error: ...`` on stderr and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

SUBCOMMAND_MODULES: list[str] = [
    "mpee_ref.io.cli",        # convert, fetch-weights
    "mpee_ref.experiments.cli",  # train, evaluate
    "mpee_ref.experiments.demo",  # demo
    "mpee_ref.experiments.sweep",  # sweep (Figs. 1, 3, 4, 5)
    "mpee_ref.experiments.ablation",  # ablation (Tables 2, 3)
    "mpee_ref.experiments.diagnose",  # diagnose (per-layer exit-head health)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpee_ref",
                                     description="MPEE reference implementation tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(name)
        before = set(sub.choices)
        module.add_parser(sub)
        for command in set(sub.choices) - before:
            sub.choices[command].set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:          # --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, OSError) as e:
        message = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
