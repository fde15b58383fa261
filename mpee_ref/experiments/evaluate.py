r"""``python -m mpee_ref evaluate``: MPEE inference on a GLUE split, with the paper's metric and ρ (Eq. 15).

Reported (JSON): the task metric(s) (§4.2), ρ = Σ FLOPs_total / Σ FLOPs_exec (Eq. 15, our FLOPs
convention, see ``mpee_ref/flops``), the mean exit layer and the count of samples per exit layer, the
mean number of tokens entering each layer's FFN (over the samples that ran that layer), wall time and
examples/s, and, with ``--flops-convention authors|both|all``, ρ in the authors' per-layer formula
(MACs, inputs padded to ``--max-seq-length``, and the same at real lengths), with
``authors_code|all`` ρ exactly as the authors' evaluation loop adds it up (``authors_code_flops``: one
extra attention block per early exit, the fused token left out at pruning layers; padded to the
model's ``pad_to``, else ``--max-seq-length``). docs/interpretation/flops.md compares them.

Batch size 1 is the paper's setting ("the inference batch size ... is 1", §4.4) and the default.
``--batch-size 32`` runs the same equations on right-padded batches; the model removes exited samples and
tokens from the batch, so predictions must not change. With a batch size above 1 the command re-runs the
first ``--verify-batch1`` examples one at a time and reports (and warns about) any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

from ..data import compute_metrics, get_task
from ..flops import authors_code_sample_macs, authors_sample_flops, eq15_speedup, sample_flops
from ..io.atomic import atomic_text
from ..mpee import MPEEModel, SampleResult
from .batching import EncodedDataset, collate, encode_examples
from .families import evaluate_baseline
from .flags import add_flags, command_parser, from_flags
from .loading import SplitArgs, check_model_task, load_split, require_classes
from .options import parse_overrides

FLOPS_CONVENTIONS = ("ours", "authors", "authors_code", "both", "all")   # both = ours + authors


def run_inference(model: MPEEModel, data: EncodedDataset, batch_size: int = 1,
                  indices: Sequence[int] | None = None, **overrides: Any) -> list[SampleResult]:
    """``model.infer`` over ``data`` (or its ``indices``) in input order, ``batch_size`` at a time."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    idx = list(range(len(data))) if indices is None else list(indices)
    was_training = model.training
    model.eval()
    pad = model.bert_config.pad_token_id
    device = next(model.parameters()).device
    out: list[SampleResult] = []
    try:
        for start in range(0, len(idx), batch_size):
            batch = collate(data, idx[start:start + batch_size], pad)
            batch.pop("labels")
            batch = {k: v.to(device) for k, v in batch.items()}                  # the model's device
            out.extend(model.infer(batch, **overrides).samples)
    finally:
        model.train(was_training)
    return out


def summarize(samples: Sequence[SampleResult], labels: Sequence[int], task: str, model: MPEEModel,
              max_seq_length: int = 128, flops_convention: str = "both", **overrides: Any) -> dict[str, Any]:
    """Metrics, ρ, exit and token statistics of finished ``samples`` (see the module doc)."""
    if flops_convention not in FLOPS_CONVENTIONS:
        raise ValueError(f"flops_convention must be one of {FLOPS_CONVENTIONS}, got {flops_convention!r}")
    if len(samples) != len(labels) or not samples:
        raise ValueError(f"samples/labels: need equal, non-zero lengths, got {len(samples)} and {len(labels)}")
    spec = get_task(task)
    cfg = replace(model.mpee_config, **overrides) if overrides else model.mpee_config
    L, D = model.bert_config.num_hidden_layers, model.bert_config.hidden_size
    preds = [s.prediction for s in samples]
    exits = [s.exit_layer for s in samples]
    tokens_sum, reached = [0] * L, [0] * L
    for s in samples:
        for t in s.layers:
            tokens_sum[t.layer - 1] += t.n_ffn
            reached[t.layer - 1] += 1
    result: dict[str, Any] = {
        "task": spec.name,
        "n_examples": len(samples),
        "metrics": compute_metrics(spec, preds, list(labels)),
        "rho": eq15_speedup([s.flops.full for s in samples], [s.flops.executed for s in samples]),
        "mean_exit_layer": sum(exits) / len(exits),
        "exit_layer_counts": {str(l): exits.count(l) for l in range(1, L + 1)},
        "samples_per_layer": reached,
        "mean_tokens_per_layer": [tokens_sum[i] / reached[i] if reached[i] else None for i in range(L)],
        "mean_input_tokens": sum(len(s.input_ids) for s in samples) / len(samples),
        "flops": {"convention": "ours", "executed": sum(s.flops.executed for s in samples),
                  "full": sum(s.flops.full for s in samples)},
        "threshold": cfg.threshold,
        "r_ee": cfg.r_ee,
        "config": cfg.to_dict(),
    }
    if flops_convention in ("authors", "both", "all"):
        result["authors_flops"] = _authors_block(samples, cfg, L, D, model.bert_config.intermediate_size,
                                                 max_seq_length)
    if flops_convention in ("authors_code", "all"):
        result["authors_code_flops"] = _authors_code_block(samples, cfg, L, D, cfg.pad_to or max_seq_length)
    return result


def _authors_code_block(samples: Sequence[SampleResult], cfg: Any, L: int, D: int, max_len: int) -> dict | None:
    """ρ as the authors' evaluation loop counts it (``authors_code_sample_macs``); None if nothing is kept."""
    prune = cfg.prune_layer_set(L)
    keep = 1.0 if not prune else (cfg.r_ee if cfg.r_ee_means == "keep" else 1.0 - cfg.r_ee)
    if keep <= 0.0:
        return None                             # keeping 0 tokens has no padded-length analogue
    per = [authors_code_sample_macs(s.exit_layer, prune, keep, L, D, max_len, fused=cfg.fusion != "drop")
           for s in samples]
    return {"unit": "MACs", "max_len": max_len, "rho": eq15_speedup([f.full for f in per], [f.executed for f in per]),
            "executed": sum(f.executed for f in per), "full": sum(f.full for f in per)}


def _authors_block(samples: Sequence[SampleResult], cfg: Any, L: int, D: int, F: int, max_len: int) -> dict:
    """ρ in the authors' accounting: MACs, no heads/fusion; padded to ``max_len`` and at real lengths."""
    prune = cfg.prune_layer_set(L)
    keep = 1.0 if not prune else (cfg.r_ee if cfg.r_ee_means == "keep" else 1.0 - cfg.r_ee)
    block: dict[str, Any] = {"unit": "MACs", "max_len": max_len}
    if keep > 0.0:
        padded = [authors_sample_flops(s.exit_layer, prune, keep, L, D, max_len) for s in samples]
        block["padded"] = {"rho": eq15_speedup([p.full for p in padded], [p.executed for p in padded]),
                           "executed": sum(p.executed for p in padded), "full": sum(p.full for p in padded)}
    else:
        block["padded"] = None                  # keeping 0 tokens has no padded-length analogue
    real = [sample_flops([t.n_att for t in s.layers], [t.n_ffn for t in s.layers], [0] * len(s.layers),
                         len(s.input_ids), L, D, F, cfg.num_labels, cfg.head, convention="authors")
            for s in samples]
    block["real_lengths"] = {"rho": eq15_speedup([f.full for f in real], [f.executed for f in real]),
                             "executed": sum(f.executed for f in real), "full": sum(f.full for f in real)}
    if D * 4 != F:
        block["note"] = f"the authors' count assumes F = 4D; this model has F = {F}, D = {D}"
    return block


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the JSON ``summary`` (see the module doc) and the per-sample results behind it."""

    summary: dict[str, Any]
    samples: list[SampleResult]


def evaluate_encoded(model: MPEEModel, data: EncodedDataset, task: str, batch_size: int = 1,
                     max_seq_length: int = 128, flops_convention: str = "both", **overrides: Any) -> Evaluation:
    """:func:`summarize` of :func:`run_inference` on already tokenised data, with wall time and examples/s."""
    t0 = time.perf_counter()
    samples = run_inference(model, data, batch_size, **overrides)
    wall = time.perf_counter() - t0
    result = summarize(samples, data.labels, task, model, max_seq_length, flops_convention, **overrides)
    result.update(batch_size=batch_size, wall_time_s=wall, examples_per_s=len(samples) / wall if wall else None)
    return Evaluation(result, samples)


def evaluate_data(model: MPEEModel, data: EncodedDataset, task: str, batch_size: int = 1, *,
                  max_seq_length: int = 128, flops_convention: str = "both", verify_batch1: int = 0,
                  **overrides: Any) -> dict[str, Any]:
    """:func:`evaluate_encoded`'s summary; with ``batch_size > 1`` and ``verify_batch1`` the first examples
    are re-run one at a time and the differences reported under ``batch_consistency``."""
    ev = evaluate_encoded(model, data, task, batch_size, max_seq_length, flops_convention, **overrides)
    result = ev.summary
    if batch_size > 1 and verify_batch1 > 0:
        n = min(verify_batch1, len(data))
        single = run_inference(model, data, 1, indices=range(n), **overrides)
        result["batch_consistency"] = {
            "checked": n,
            "prediction_mismatches": sum(a.prediction != b.prediction for a, b in zip(ev.samples, single)),
            "exit_layer_mismatches": sum(a.exit_layer != b.exit_layer for a, b in zip(ev.samples, single))}
    return result


def evaluate_model(model: MPEEModel, examples: Sequence[Any], task: str, batch_size: int = 1, *,
                   max_seq_length: int = 128, flops_convention: str = "both", verify_batch1: int = 0,
                   **overrides: Any) -> dict[str, Any]:
    """Evaluate ``model`` (with its tokenizer) on GLUE ``examples`` of ``task``.

    Args:
        model: an :class:`MPEEModel` with ``model.tokenizer`` set (``load_mpee`` does that).
        examples: :class:`mpee_ref.data.Example` list.  task: GLUE task name.
        batch_size: inference batch size (1 = the paper).  max_seq_length: truncation length.
        flops_convention: "ours", "authors", "authors_code", "both" (ours + authors) or "all"
            (adds ``authors_flops`` and/or ``authors_code_flops``).
        verify_batch1: with ``batch_size > 1``, re-run this many examples at batch 1 and report
            mismatches under ``batch_consistency``.
        overrides: :class:`MPEEConfig` fields for this evaluation (``threshold=0.2``, ``r_ee=0.5``...).
    Returns:
        A JSON-serialisable dict (see the module doc).
    """
    spec = get_task(task)
    require_classes(spec)
    if model.tokenizer is None:
        raise ValueError("model: has no tokenizer; load it with mpee_ref.load_mpee(folder)")
    check_model_task(model, spec)
    data = encode_examples(model.tokenizer, examples, max_seq_length)
    return evaluate_data(model, data, spec.name, batch_size, max_seq_length=max_seq_length,
                         flops_convention=flops_convention, verify_batch1=verify_batch1, **overrides)


# ============================================================================ CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = command_parser(subparsers, "evaluate", "MPEE inference on a GLUE split: metric, rho (Eq. 15), exits", __doc__)
    add_flags(p, SplitArgs, defaults={"batch_size": 1})
    p.add_argument("--threshold", type=float, default=None, help="F, entropy exit threshold (nats)")
    p.add_argument("--r-ee", type=float, default=None, help="R_ee of Eq. 7")
    p.add_argument("--setting", type=float, default=None,
                   help="a baseline folder's knob: DeeBERT entropy threshold, FastBERT speed, PABEE patience, "
                        "PoWER-BERT retention decay q (docs/BASELINES.md); default: the model's config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_",
                   help="any MPEEConfig field for this run (repeatable)")
    p.add_argument("--flops-convention", choices=FLOPS_CONVENTIONS, default="all",
                   help="besides ours: 'authors' (their per-layer formula), 'authors_code' (their loop as it "
                        "runs), 'both' (ours + authors) or 'all'")
    p.add_argument("--verify-batch1", type=int, default=64, metavar="N",
                   help="with --batch-size > 1, re-run the first N examples at batch 1 and compare (0: off)")
    p.add_argument("--json", default=None, help="also write the result to this file")
    return p


def run(args: argparse.Namespace) -> int:
    """The ``evaluate`` command; ValueError/OSError reach ``__main__`` (one line, exit 2)."""
    overrides = parse_overrides(args.set_)
    if args.threshold is not None:
        overrides["threshold"] = args.threshold
    if args.r_ee is not None:
        overrides["r_ee"] = args.r_ee
    loaded = load_split(from_flags(SplitArgs, args), allow_baseline=True)
    if loaded.is_baseline:
        if overrides:
            raise ValueError("--threshold/--r-ee/--set: MPEE options; a baseline's knob is --setting VALUE")
        return _report(args, loaded, evaluate_baseline(loaded.model, loaded.data, loaded.spec.name,
                                                       args.batch_size, args.setting))
    if args.setting is not None:
        raise ValueError("--setting: a baseline's knob; an MPEE model takes --threshold/--r-ee")
    result = evaluate_data(loaded.model, loaded.data, loaded.spec.name, args.batch_size,
                           max_seq_length=args.max_seq_length, flops_convention=args.flops_convention,
                           verify_batch1=args.verify_batch1, **overrides)
    return _report(args, loaded, result)


def _report(args: argparse.Namespace, loaded: Any, result: dict[str, Any]) -> int:
    """Print (and with --json write) an evaluation result and its one-line summary."""
    import torch
    result.update(model=str(loaded.folder), split=args.split, torch_threads=torch.get_num_threads())
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        atomic_text(args.json, text + "\n")
    m = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    print(f"{loaded.spec.name} {args.split}: {m} | rho {result['rho']:.2f}x | mean exit layer "
          f"{result['mean_exit_layer']:.2f} | {result['examples_per_s']:.1f} ex/s", file=sys.stderr)
    bc = result.get("batch_consistency")
    if bc and (bc["prediction_mismatches"] or bc["exit_layer_mismatches"]):
        print(f"warning: batch size {args.batch_size} differs from batch size 1 on {bc['prediction_mismatches']} "
              f"predictions / {bc['exit_layer_mismatches']} exit layers of the first {bc['checked']}",
              file=sys.stderr)
    return 0
