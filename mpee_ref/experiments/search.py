r"""The baselines' hyper-parameter search: each method trained with each candidate set of train flags,
swept on dev, and the candidate with the best dev metric at ρ = ``--target-rho`` chosen per method.

The paper says only that each baseline's hyper-parameters were grid-searched. ``python -m mpee_ref search``
makes that search a command on the same backbone, data, seeds and FLOPs counter as ``compare``: it is
``compare`` run once per candidate (``out/<candidate>/``, each a complete comparison folder, reused and
resumed the same way), plus the choice::

    score(method, candidate) = dev metric at ρ = target_rho on the method's Pareto front (mean over seeds,
                               interpolated as Table 1's column; a front with no reading there scores
                               by its point nearest to target_rho, marked, and loses to any that has one)

Candidate flags are appended to ``--baseline-train-args`` (and to ``--method-train-args`` of that method),
so a candidate is one point of the baselines' training recipe (e.g. the classifier learning rate or
``--option head_norm=true``); the speed knobs (thresholds, patience, retention) are swept at inference by
every comparison anyway. MPEE and plain are not searched: give them as in ``compare``.

Outputs: ``out/search.json`` (every score) and ``out/search.md`` (the table, and the ``compare`` flags of
the chosen candidates). Example::

    python -m mpee_ref search --model weights/minilm-l6 --task sst-2 --data-dir $GLUE_DIR --out runs/search \
        --methods static,pabee,deebert,fastbert,power_bert --seeds 0 \
        --train-args "--lr 5e-5 --warmup-ratio 0 --max-seq-length 64 --epochs 3" \
        --candidates "published: ; recipe: --option head_norm=true --head-lr-mult 20"
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_text
from .compare import (CompareArgs, aggregate, closest_to_rho, metric_at_rho, per_method_flags, run_command,
                      sweep_method, train_method)
from .flags import arg, command_parser, from_flags
from .options import comma_list
from .sweep import primary_metric


@dataclass(frozen=True)
class SearchArgs(CompareArgs):
    """``compare``'s flags plus the candidates."""

    candidates: str = arg("", "'NAME: FLAGS; NAME: FLAGS': train flags each baseline is tried with "
                              "(an empty FLAGS is the recipe of --baseline-train-args alone); required")


@dataclass(frozen=True)
class Score:
    """One method trained with one candidate: its dev metric at the target ρ (``reached``: the front has a
    reading there; else the metric of its front point nearest to the target, ``rho`` that point's ρ)."""

    method: str
    candidate: str
    metric: float
    rho: float
    reached: bool


def parse_candidates(text: str) -> dict[str, str]:
    """``"a: --lr 1e-4; b:"`` -> ``{"a": "--lr 1e-4", "b": ""}`` (names must be distinct folder names)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";") if p.strip()):
        name, sep, flags = part.partition(":")
        name = name.strip()
        if not sep or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"--candidates: expected 'NAME: FLAGS' with a plain NAME, got {part!r}")
        if name in out:
            raise ValueError(f"--candidates: {name!r} is given twice")
        out[name] = flags.strip()
    if not out:
        raise ValueError("--candidates: no candidate given")
    return out


def candidate_args(a: SearchArgs, name: str, flags: str, method: str) -> CompareArgs:
    """The ``compare`` arguments of one candidate for one method: its flags after the family's and the method's."""
    own = per_method_flags(a.method_train_args)
    own[method] = f"{own.get(method, '')} {flags}".strip()
    fields = {k: v for k, v in asdict(a).items() if k != "candidates"}
    return replace(CompareArgs(**fields), out=str(Path(a.out) / name),
                   method_train_args="; ".join(f"{m}: {f}" for m, f in own.items()))


def score(method: str, candidate: str, sweeps: list[dict[str, Any]], target_rho: float) -> Score:
    """:class:`Score` of one method's sweeps (one per seed) under one candidate."""
    points = aggregate(sweeps)
    at = metric_at_rho(points, target_rho)
    if at is not None:
        return Score(method, candidate, at, target_rho, True)
    near = closest_to_rho(points, target_rho)
    return Score(method, candidate, near.metric[0], near.rho[0], False)


def choose(scores: list[Score]) -> dict[str, Score]:
    """Per method, the best candidate: reaching the target ρ first, then the higher metric, then the higher
    ρ; a tie keeps the candidate listed first."""
    best: dict[str, Score] = {}
    for s in scores:
        b = best.get(s.method)
        if b is None or (s.reached, s.metric, s.rho) > (b.reached, b.metric, b.rho):
            best[s.method] = s
    return best


def search_markdown(scores: list[Score], chosen: dict[str, Score], candidates: dict[str, str], metric: str,
                    a: SearchArgs) -> str:
    """The table (methods x candidates, the chosen one in bold) and the flags to give ``compare``."""
    names = list(candidates)
    lines = [f"{metric} (%) at ρ = {a.target_rho:g}× on dev, seeds {a.seeds}; (ρ x) = the front has no reading "
             f"there and this is its point nearest to it.", "",
             "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    by = {(s.method, s.candidate): s for s in scores}
    for method in chosen:
        cells = []
        for n in names:
            s = by[(method, n)]
            cell = f"{100 * s.metric:.2f}" + ("" if s.reached else f" (ρ {s.rho:.2f})")
            cells.append(f"**{cell}**" if chosen[method].candidate == n else cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    picked = {m: candidate_args(a, s.candidate, candidates[s.candidate], m) for m, s in chosen.items()}
    flags = "; ".join(f"{m}: {per_method_flags(c.method_train_args)[m]}" for m, c in picked.items())
    lines += ["", "Chosen, as `compare` flags (with the same `--baseline-train-args`):", "",
              f'    --method-train-args "{flags}"', ""]
    return "\n".join(lines)


def run_search(a: SearchArgs) -> dict[str, Any]:
    """Train/reuse and sweep every method under every candidate, score and choose; writes the outputs."""
    candidates = parse_candidates(a.candidates)
    methods = [m for m in comma_list(a.methods, str, "--methods") if m not in ("plain", "mpee")]
    if not methods:
        raise ValueError("search: --methods names no baseline (plain and mpee are not searched)")
    seeds = comma_list(a.seeds, int, "--seeds")
    metric = primary_metric(a.task)
    scores = []
    for name, flags in candidates.items():
        for method in methods:
            ca = candidate_args(a, name, flags, method)
            sweeps = [sweep_method(ca, method, s, train_method(ca, method, s), metric) for s in seeds]
            scores.append(score(method, name, sweeps, a.target_rho))
    chosen = choose(scores)
    result = {"format": "mpee_ref-search-1", "task": a.task, "metric": metric, "seeds": list(seeds),
              "target_rho": a.target_rho, "candidates": candidates, "args": asdict(a),
              "scores": [asdict(s) for s in scores], "chosen": {m: s.candidate for m, s in chosen.items()}}
    table = search_markdown(scores, chosen, candidates, metric, a)
    atomic_text(Path(a.out) / "search.json", json.dumps(result, indent=2) + "\n")
    atomic_text(Path(a.out) / "search.md", f"# Hyper-parameter search: {a.task}\n\n{table}")
    result["table"] = table
    return result


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    return command_parser(subparsers, "search", "the baselines' hyper-parameter search on dev (compare per candidate)", __doc__, flags=SearchArgs)


def run(args: argparse.Namespace) -> int:
    """The ``search`` command; ValueError/OSError reach ``__main__`` (one line, exit 2)."""
    return run_command(from_flags(SearchArgs, args), run_search, "search", "")


__all__ = ["SearchArgs", "Score", "parse_candidates", "candidate_args", "score", "choose", "run_search"]
