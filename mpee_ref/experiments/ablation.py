r"""``python -m mpee_ref ablation``: Table 2 (MPEE and "w/o" each of its six components) and Table 3
(class attention vs all-token attention as the token score), at one fixed operating point.

Two modes:

* **Full (the paper's protocol).** One model is trained per row with :func:`train_model`, from the same
  encoder (``--model``), with the same seed and the same training flags (``--train-args``, any ``train``
  flags as one string); row k adds ``--ablate <component>`` (Table 2) or ``--set token_score=all``
  (Table 3). Each row trains into ``<out>/rows/<flags>/`` (``mpee``, ``ablate-wsd``, ``set-token-score-all``...;
  Table 2's MPEE row and Table 3's class-attention row are the same model); a row whose ``final/`` folder
  already exists is not retrained (delete the folder to retrain), so an interrupted run can be restarted.
* **Inference only** (``--inference-only MPEE_DIR``). One trained MPEE model, each row switched at
  inference (``MPEEModel.infer(**overrides)``). Only components that change inference can be ablated this
  way: att-memory, ee-fusion, layer-ee, token-ee (Table 2) and the token score (Table 3). ee-memory and
  WSD change what is trained and are reported as "needs retraining". The tables say "inference-only"
  in their title and each row's ``mode``, because the paper retrains every row.

Operating point (documented in the output): every row is evaluated at the same F (``--threshold``,
default the :class:`~mpee_ref.mpee.MPEEConfig` default 0.3 nats) and R_ee (``--r-ee``, default 0.3, i.e.
70% of the tokens kept at each pruning layer), batch size ``--batch-size`` (default 32; batched inference
gives the same results as batch 1). Rows without layer exits ignore F; rows without token exits ignore
R_ee.

Outputs in ``--out``: ``table2.json`` / ``table2.md`` and ``table3.json`` / ``table3.md``. JSON:
``format``, ``table``, ``task``, ``mode`` ("full" or "inference-only"), ``threshold``, ``r_ee``,
``metric_names``, ``rows`` (``name``, ``mode``, ``config_changes``, ``metrics``, ``rho``,
``mean_exit_layer``, ``mean_tokens_per_layer``, ``mean_input_tokens``, ``model``; or ``skipped`` with the
reason). Markdown: the paper's layout, one row per model, the metric(s) in % then ρ.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Sequence

from ..io.atomic import atomic_text
from ..mpee import MPEEModel, load_mpee
from ..mpee.config import ABLATIONS, MPEEConfig
from .checkpointing import latest_checkpoint
from .evaluate import evaluate_encoded
from .flags import add_flags, command_parser, from_flags
from .loading import SplitArgs, load_split
from .runs import OPERATIONAL, argument_defaults, jsonable_args
from .train import TrainArgs, train_model

FORMAT = "mpee_ref-ablation-1"
#: Table 2's rows in the paper's order: (row name, component for MPEEConfig.without, or None for MPEE).
TABLE2_ROWS: tuple[tuple[str, str | None], ...] = (
    ("MPEE", None), ("w/o Att-memory", "att-memory"), ("w/o EE-memory", "ee-memory"), ("w/o WSD", "wsd"),
    ("w/o EE-fusion", "ee-fusion"), ("w/o Layer-EE", "layer-ee"), ("w/o Token-EE", "token-ee"))
#: Table 3's rows: (row name, token_score).
TABLE3_ROWS: tuple[tuple[str, str], ...] = (("Class Attention", "class"), ("All-token Attention", "all"))
#: Components whose removal can be applied to a trained model at inference time.
INFERENCE_ABLATIONS = ("att-memory", "ee-fusion", "layer-ee", "token-ee")
RESULT_KEYS = ("metrics", "rho", "mean_exit_layer", "mean_tokens_per_layer", "mean_input_tokens")
assert {c for _, c in TABLE2_ROWS if c} == set(ABLATIONS)


def config_changes(base: MPEEConfig, component: str | None) -> dict[str, Any]:
    """The MPEEConfig fields that ``base.without(component)`` changes (empty for the full model)."""
    if component is None:
        return {}
    new = base.without(component)
    return {f.name: getattr(new, f.name) for f in fields(MPEEConfig) if getattr(new, f.name) != getattr(base, f.name)}


def _evaluate(model: MPEEModel, data: Any, task: str, threshold: float, r_ee: float, batch_size: int,
              max_seq_length: int, **changes: Any) -> dict[str, Any]:
    """A row's results at the operating point, ``changes`` applied as inference overrides."""
    res = evaluate_encoded(model, data, task, batch_size, max_seq_length, "ours", threshold=threshold, r_ee=r_ee,
                           **changes).summary
    return {k: res[k] for k in RESULT_KEYS}


def inference_only_rows(model: MPEEModel, data: Any, task: str, table: str, threshold: float = 0.3,
                        r_ee: float = 0.3, batch_size: int = 32, max_seq_length: int = 128) -> list[dict[str, Any]]:
    """Table 2 or 3 rows from one trained model, each ablation switched at inference (no retraining)."""
    base = model.mpee_config
    rows: list[dict[str, Any]] = []
    if table == "table2":
        for name, comp in TABLE2_ROWS:
            row: dict[str, Any] = {"name": name, "mode": "inference-only", "model": None}
            if comp is not None and comp not in INFERENCE_ABLATIONS:
                row["skipped"] = f"{comp} changes training; needs retraining (full mode)"
                rows.append(row)
                continue
            row["config_changes"] = config_changes(base, comp)
            row.update(_evaluate(model, data, task, threshold, r_ee, batch_size, max_seq_length,
                                 **row["config_changes"]))
            rows.append(row)
    elif table == "table3":
        for name, score in TABLE3_ROWS:
            changes = {} if score == base.token_score else {"token_score": score}
            row = {"name": name, "mode": "inference-only", "model": None, "config_changes": changes}
            row.update(_evaluate(model, data, task, threshold, r_ee, batch_size, max_seq_length, **changes))
            rows.append(row)
    else:
        raise ValueError(f"table: expected 'table2' or 'table3', got {table!r}")
    return rows


def train_args_from_cli(model: str, task: str, data_dir: str, out: str, train_args: str = "",
                        extra: Sequence[str] = ()) -> TrainArgs:
    """:class:`TrainArgs` from ``train``'s own flags (:func:`~mpee_ref.experiments.flags.add_flags`):
    ``train_args`` (one string) then ``extra``; model, task, data and output folder are ablation's."""
    tokens = [*shlex.split(train_args), *extra]
    banned = sorted({t.split("=")[0] for t in tokens} & {"--threads", "--resume", "--overwrite", "--device"})
    if banned:
        raise ValueError(f"--train-args: {', '.join(banned)} not allowed here (use ablation's --threads and --device; "
                         f"finished rows are reused automatically)")
    parser = argparse.ArgumentParser(prog="ablation --train-args", add_help=False)
    add_flags(parser, TrainArgs)
    fixed = {"--model": model, "--task": task, "--data-dir": data_dir, "--out": out}
    try:
        ns = parser.parse_args([x for kv in fixed.items() for x in kv] + tokens)
    except SystemExit:
        raise ValueError(f"--train-args: not valid train flags: {train_args!r}") from None
    clash = [flag for flag, want in fixed.items() if getattr(ns, flag[2:].replace("-", "_")) != want]
    if clash:
        raise ValueError(f"--train-args: {', '.join(clash)} are set by ablation itself (one folder per row); "
                         f"remove them from --train-args")
    return from_flags(TrainArgs, ns)


def full_rows(model_dir: str, task: str, data_dir: str, out: str | Path, table: str, data: Any,
              threshold: float = 0.3, r_ee: float = 0.3, batch_size: int = 32, max_seq_length: int = 128,
              train_args: str = "", device: str = "cpu") -> list[dict[str, Any]]:
    """Table 2 or 3 rows, one trained model per row (same encoder, seed and flags; see the module doc),
    trained and evaluated on ``device``."""
    if table == "table2":
        specs = [(name, ["--ablate", comp] if comp else []) for name, comp in TABLE2_ROWS]
    elif table == "table3":
        specs = [(name, [] if score == "class" else ["--set", f"token_score={score}"]) for name, score in TABLE3_ROWS]
    else:
        raise ValueError(f"table: expected 'table2' or 'table3', got {table!r}")
    rows: list[dict[str, Any]] = []
    first: MPEEConfig | None = None
    for name, extra in specs:
        row_out = Path(out) / "rows" / _slug(extra)
        targs = replace(train_args_from_cli(model_dir, task, data_dir, str(row_out), train_args, extra), device=device)
        final = row_out / "final"
        if (final / "mpee_config.json").is_file():
            check_same_args(row_out, targs)
        else:                         # a row interrupted after a checkpoint continues where it stopped
            targs = replace(targs, resume=latest_checkpoint(row_out) is not None)
            train_model(targs, command=f"ablation {table} row {name!r}")
        model = load_mpee(final).to(device)
        first = first if rows else model.mpee_config            # the MPEE / class-attention row comes first
        changes = {f.name: getattr(model.mpee_config, f.name) for f in fields(MPEEConfig)
                   if getattr(model.mpee_config, f.name) != getattr(first, f.name)}
        row: dict[str, Any] = {"name": name, "mode": "full", "model": str(final), "train_flags": extra,
                               "config_changes": changes}
        row.update(_evaluate(model, data, task, threshold, r_ee, batch_size, max_seq_length))
        rows.append(row)
    return rows


def check_same_args(row_out: Path, targs: TrainArgs) -> None:
    """Refuse to reuse a finished row trained with other arguments."""
    summary = row_out / "train_summary.json"
    if not summary.is_file():
        raise ValueError(f"{row_out}: has final/ but no train_summary.json; delete the folder to retrain")
    saved = {**argument_defaults(targs), **(json.loads(summary.read_text(encoding="utf-8")).get("args") or {})}
    saved = {k: v for k, v in saved.items() if k not in OPERATIONAL}     # fields added since: their defaults
    now = {k: v for k, v in jsonable_args(targs).items() if k not in OPERATIONAL}
    for k in ("model", "data_dir"):                  # two names of one folder (a link, a relative path) agree
        if isinstance(saved.get(k), str) and isinstance(now.get(k), str) and \
                os.path.realpath(saved[k]) == os.path.realpath(now[k]):
            saved[k] = now[k]
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ValueError(f"{row_out}: was trained with other arguments (differs in {diff}); delete it to retrain")


def _slug(extra: Sequence[str]) -> str:
    """Row folder name from its extra train flags (Table 2's MPEE and Table 3's class-attention rows share one)."""
    if not extra:
        return "mpee"
    return "-".join(x.lstrip("-").replace("=", "-").replace("_", "-") for x in extra)


def table_markdown(result: dict[str, Any]) -> str:
    """The paper's layout: one row per model, the metric(s) in % then ρ."""
    names = result["metric_names"]
    title = {"table2": "Table 2: ablation study",
             "table3": "Table 3: token score for selecting tokens"}[result["table"]]
    mode = ("inference-only: one trained model, components switched off at inference; "
            "the paper retrains each row" if result["mode"] == "inference-only"
            else "full: one model trained per row, same encoder, seed and training flags")
    lines = [f"# {title} ({result['task']}, {result['mode']})", "",
             f"Mode: {mode}. Operating point: F = {result['threshold']:g} nats, R_ee = {result['r_ee']:g}; "
             f"{result['n_examples']} {result['split']} examples; metrics in %; ρ = Eq. 15 (our FLOPs convention).",
             "", f"| Model | {' | '.join(names)} | ρ |", f"|---|{'---|' * len(names)}---|"]
    for row in result["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['name']} | " + " | ".join("n/a" for _ in names) + f" | n/a ({row['skipped']}) |")
        else:
            ms = " | ".join(f"{100 * row['metrics'][k]:.1f}" for k in names)
            lines.append(f"| {row['name']} | {ms} | {row['rho']:.2f}× |")
    return "\n".join(lines) + "\n"


# ============================================================================ CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = command_parser(subparsers, "ablation", "Tables 2 and 3: ablations at a fixed operating point", __doc__)
    add_flags(p, SplitArgs, skip=("model",))
    p.add_argument("--model", default=None, help="encoder folder every row is trained from (full mode)")
    p.add_argument("--inference-only", default=None, metavar="MPEE_DIR",
                   help="evaluate the ablations on this trained model at inference, without retraining")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--which", choices=("table2", "table3", "both"), default="both")
    p.add_argument("--train-args", default="", help="train flags for every row, one string, e.g. '--epochs 1'")
    p.add_argument("--threshold", type=float, default=MPEEConfig().threshold, help="F of every row (nats)")
    p.add_argument("--r-ee", type=float, default=MPEEConfig().r_ee, help="R_ee of every row")
    return p


def run(args: argparse.Namespace) -> int:
    """The ``ablation`` command; ValueError/OSError reach ``__main__`` (one line, exit 2)."""
    if (args.inference_only is None) == (args.model is None):
        raise ValueError("give exactly one of --model ENCODER_DIR (train one model per row) or "
                         "--inference-only MPEE_DIR")
    flag = "--inference-only" if args.inference_only else "--model"
    loaded = load_split(from_flags(SplitArgs, args, model=args.inference_only or args.model), flag=flag,
                        require_mpee=bool(args.inference_only), encoder_note=bool(args.inference_only))
    folder, spec, data = loaded.folder, loaded.spec, loaded.data
    out = Path(args.out)
    for table in (("table2", "table3") if args.which == "both" else (args.which,)):
        if args.inference_only:
            rows = inference_only_rows(loaded.model, data, spec.name, table, args.threshold, args.r_ee,
                                       args.batch_size, args.max_seq_length)
            for r in rows:
                r["model"] = str(folder)
        else:
            rows = full_rows(str(folder), spec.name, args.data_dir, out, table, data, args.threshold, args.r_ee,
                             args.batch_size, args.max_seq_length, args.train_args, args.device)
        result = {"format": FORMAT, "table": table, "task": spec.name, "split": args.split,
                  "mode": "inference-only" if args.inference_only else "full", "n_examples": len(data),
                  "threshold": args.threshold, "r_ee": args.r_ee,
                  "metric_names": list(next(r["metrics"] for r in rows if "metrics" in r)),
                  "train_args": None if args.inference_only else args.train_args, "rows": rows}
        atomic_text(out / f"{table}.json", json.dumps(result, indent=2) + "\n")
        md = table_markdown(result)
        atomic_text(out / f"{table}.md", md)
        print(md, end="")
    return 0
