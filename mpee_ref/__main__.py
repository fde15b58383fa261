"""``python -m mpee_ref <command>`` (also the ``mpee-ref`` console script).

Every command is one module in :data:`COMMANDS` that defines ``add_parser(subparsers)`` (registering that
command) and ``run(args) -> int``. To add a command, write such a module and add it here.
``ValueError``/``OSError`` from a command print one line ``error: ...`` on stderr and exit with status 2
(no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: command -> the module defining its ``add_parser`` and ``run``
COMMANDS: dict[str, str] = {
    "convert": "mpee_ref.io.convert",
    "fetch-weights": "mpee_ref.io.fetch",
    "train": "mpee_ref.experiments.train",
    "evaluate": "mpee_ref.experiments.evaluate",
    "demo": "mpee_ref.experiments.demo",
    "sweep": "mpee_ref.experiments.sweep",          # Figs. 1, 3, 4, 5
    "ablation": "mpee_ref.experiments.ablation",    # Tables 2, 3
    "diagnose": "mpee_ref.experiments.diagnose",    # per-layer exit-head health
    "compare": "mpee_ref.experiments.compare",      # MPEE vs the baselines (Table 1, Figs. 3-4)
    "search": "mpee_ref.experiments.search",        # the baselines' hyper-parameter search on dev
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpee_ref", description="MPEE reference implementation tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, name in COMMANDS.items():
        module = importlib.import_module(name)
        module.add_parser(sub)
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
