r"""``python -m mpee_ref sweep``: the performance/acceleration grid over F and R_ee (Fig. 3), on one
trained model and without retraining, plus the data (and, with matplotlib, the PNGs) of Figs. 1, 4, 5.

The dev set is tokenised once; every grid point is one :func:`~mpee_ref.experiments.evaluate_encoded`
run (batched: the model removes exited samples and tokens, so batch size does not change results).

Output folder (``--out``):

* ``sweep.json``: ``format``, ``model``, ``task``, ``split``, ``n_examples``, ``num_layers``,
  ``batch_size``, ``thresholds``, ``r_ees``, ``metric`` (the primary metric), ``points`` (one per
  (F, R_ee), R_ee-major: ``threshold``, ``r_ee``, ``metrics``, ``rho``, ``mean_exit_layer``,
  ``exit_layer_counts``, ``samples_per_layer``, ``mean_tokens_per_layer``, ``mean_input_tokens``,
  ``wall_time_s``), ``pareto_front`` (indices into ``points``), ``fig1``/``fig4``/``fig5`` (figure data,
  unless skipped) and ``figures`` (PNG file names written).
* ``sweep.md``: the grid as a Markdown table sorted by ρ, then the Pareto front.
* ``fig1_token_similarity.png``, ``fig3_tradeoff.png``, ``fig4_exit_layers.png``,
  ``fig5_token_select.png`` when matplotlib is importable (a note is printed otherwise).

The primary metric (Pareto front, Fig. 4's default point) is the task's first metric:
accuracy (SST-2, QNLI, RTE, ...), F1 for MRPC, MCC for CoLA.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data import compute_metrics, get_task
from ..io.atomic import atomic_text
from ..mpee import MPEEModel
from . import figures
from .batching import EncodedDataset
from .evaluate import evaluate_encoded
from .flags import add_flags, command_parser, from_flags
from .loading import SplitArgs, load_split
from .options import comma_list, parse_overrides

FORMAT = "mpee_ref-sweep-1"
DEFAULT_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_R_EES = (0.0, 0.1, 0.3, 0.5)
DEFAULT_FIG5_R_EES = (0.1, 0.3, 0.5, 0.7)
POINT_KEYS = ("metrics", "rho", "mean_exit_layer", "exit_layer_counts", "samples_per_layer",
              "mean_tokens_per_layer", "mean_input_tokens", "wall_time_s")


def primary_metric(task: str) -> str:
    """The first metric of ``task`` (the one the Pareto front and Fig. 4 use)."""
    spec = get_task(task)
    return next(iter(compute_metrics(spec, [0, 1], [0, 1])))


def evaluate_point(model: MPEEModel, data: EncodedDataset, task: str, threshold: float, r_ee: float,
                   batch_size: int = 32, max_seq_length: int = 128, **overrides: Any) -> dict[str, Any]:
    """One grid point: :func:`evaluate_encoded` at (F, R_ee), reduced to the fields of a sweep point."""
    res = evaluate_encoded(model, data, task, batch_size, max_seq_length, "ours",
                           threshold=float(threshold), r_ee=float(r_ee), **overrides).summary
    return {"threshold": float(threshold), "r_ee": float(r_ee), **{k: res[k] for k in POINT_KEYS}}


def run_sweep(model: MPEEModel, data: EncodedDataset, task: str, thresholds: Sequence[float],
              r_ees: Sequence[float], batch_size: int = 32, max_seq_length: int = 128,
              progress: bool = False) -> list[dict[str, Any]]:
    """Every (F, R_ee) of the grid, R_ee-major, F ascending within each R_ee as given."""
    if not thresholds or not r_ees:
        raise ValueError(f"thresholds/r_ees: need at least one value each, got {list(thresholds)} and {list(r_ees)}")
    points = []
    for r in r_ees:
        for f in thresholds:
            p = evaluate_point(model, data, task, f, r, batch_size, max_seq_length)
            points.append(p)
            if progress:
                m = ", ".join(f"{k} {v:.4f}" for k, v in p["metrics"].items())
                print(f"F {f:g} R_ee {r:g}: {m} | rho {p['rho']:.2f}x | exit {p['mean_exit_layer']:.2f}",
                      file=sys.stderr)
    return points


def pareto_front(points: Sequence[Mapping[str, Any]], metric: str) -> list[int]:
    """Indices of the points no other point dominates (ρ and ``metric`` both >=, one of them >),
    sorted by ascending ρ. Exact duplicates are all kept."""
    front = []
    for i, p in enumerate(points):
        a, r = p["metrics"][metric], p["rho"]
        dominated = any(q["metrics"][metric] >= a and q["rho"] >= r and (q["metrics"][metric] > a or q["rho"] > r)
                        for q in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i]["rho"], i))


def _row(p: Mapping[str, Any], metric_names: Sequence[str]) -> str:
    ms = " | ".join(f"{100 * p['metrics'][k]:.2f}" for k in metric_names)
    toks = ", ".join("-" if t is None else f"{t:.1f}" for t in p["mean_tokens_per_layer"])
    return f"| {p['threshold']:g} | {p['r_ee']:g} | {ms} | {p['rho']:.2f}× | {p['mean_exit_layer']:.2f} | {toks} |"


def sweep_markdown(result: Mapping[str, Any]) -> str:
    """``sweep.md``: the grid sorted by ρ (descending), then the Pareto front (ascending ρ)."""
    points = result["points"]
    names = list(points[0]["metrics"])
    head = (f"| F | R_ee | {' | '.join(names)} | ρ | mean exit layer | mean tokens per layer |\n"
            f"|---|---|{'---|' * len(names)}---|---|---|")
    order = sorted(range(len(points)), key=lambda i: (-points[i]["rho"], i))
    sets = "".join(f" `--set {k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}`"
                   for k, v in result.get("config_overrides", {}).items())
    lines = [f"# Sweep: {result['task']} {result['split']}, {result['n_examples']} examples",
             "", f"Model `{result['model']}`; metrics in %; ρ = Eq. 15 (our FLOPs convention); "
             f"batch size {result['batch_size']}.{sets}", "", "## All points (sorted by ρ)", "", head]
    lines += [_row(points[i], names) for i in order]
    lines += ["", f"## Pareto front ({result['metric']} vs ρ)", "", head]
    lines += [_row(points[i], names) for i in result["pareto_front"]]
    return "\n".join(lines) + "\n"


# ============================================================================ CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = command_parser(subparsers, "sweep", "grid over F and R_ee on one trained model (Figs. 1, 3, 4, 5)", __doc__)
    add_flags(p, SplitArgs)
    p.add_argument("--thresholds", default=",".join(f"{x:g}" for x in DEFAULT_THRESHOLDS), help="F values (nats)")
    p.add_argument("--r-ee", default=",".join(f"{x:g}" for x in DEFAULT_R_EES), help="R_ee values")
    p.add_argument("--grid", default=None,
                   help="a baseline folder's knob values, comma list (default: the method's grid, docs/BASELINES.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_",
                   help="any other MPEEConfig field for every point, e.g. prune_layers=3,4,5 (repeatable; "
                        "F and R_ee come from the grid)")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--fig4-threshold", type=float, default=None,
                   help="Fig. 4 operating point F (default: highest rho within 1 point of the best metric)")
    p.add_argument("--fig4-r-ee", type=float, default=None, help="Fig. 4 operating point R_ee")
    p.add_argument("--fig5-r-ee", default=",".join(f"{x:g}" for x in DEFAULT_FIG5_R_EES),
                   help="R_ee values of Fig. 5 (top vs bottom tokens, layer_exit off)")
    p.add_argument("--skip", action="append", default=[], choices=("fig1", "fig5"),
                   help="skip a figure's extra computation (repeatable)")
    return p


def run(args: argparse.Namespace) -> int:
    """The ``sweep`` command; ValueError/OSError reach ``__main__`` (one line, exit 2)."""
    if (args.fig4_threshold is None) != (args.fig4_r_ee is None):
        raise ValueError("--fig4-threshold and --fig4-r-ee go together (give both or neither)")
    thresholds, r_ees = comma_list(args.thresholds, float, "--thresholds"), comma_list(args.r_ee, float, "--r-ee")
    fig5_r = comma_list(args.fig5_r_ee, float, "--fig5-r-ee")
    overrides = parse_overrides(args.set_)
    if {"threshold", "r_ee"} & set(overrides):
        raise ValueError("--set threshold/r_ee: the grid sets them; give --thresholds/--r-ee instead")
    loaded = load_split(from_flags(SplitArgs, args), allow_baseline=True)
    if loaded.is_baseline:
        if overrides:
            raise ValueError("--set: MPEE config fields; a baseline folder's knob is --grid")
        return _sweep_baseline(args, loaded)
    loaded.model.configure(**overrides)
    result = sweep(loaded.model, loaded.data, loaded.spec.name, thresholds, r_ees, args.batch_size,
                   args.max_seq_length,
                   fig4=(args.fig4_threshold, args.fig4_r_ee) if args.fig4_threshold is not None else None,
                   fig5_r_ees=None if "fig5" in args.skip else fig5_r, fig1="fig1" not in args.skip,
                   progress=True)
    result.update(model=str(loaded.folder), split=args.split, config_overrides=overrides)
    write_outputs(result, args.out)
    print(sweep_markdown(result), end="")
    return 0


def _sweep_baseline(args: argparse.Namespace, loaded: Any) -> int:
    """``sweep`` on a baseline folder: its knob over ``--grid``, written as a method sweep
    (:mod:`~mpee_ref.experiments.compare`) to ``sweep.json`` and as a table to ``sweep.md``."""
    from .compare import method_sweep
    from .families import method_name
    grid = comma_list(args.grid, float, "--grid") if args.grid else None
    metric = primary_metric(loaded.spec.name)
    result = method_sweep(loaded.model, method_name(loaded.model), loaded.data, loaded.spec.name, metric, seed=None,
                          values=grid, batch_size=args.batch_size)
    result.update(format="mpee_ref-method-sweep-1", model=str(loaded.folder), split=args.split)
    lines = [f"# Sweep: {result['method']} on {loaded.spec.name} {args.split}", "",
             f"| setting | {metric} | ρ | mean exit layer |", "|---|---|---|---|"]
    lines += [f"| {', '.join(f'{k} {v:g}' for k, v in p['setting'].items()) or '-'} | "
              f"{100 * p['metrics'][metric]:.2f} | {p['rho']:.2f}× | {p['mean_exit_layer']:.2f} |"
              for p in result["points"]]
    out = Path(args.out)
    atomic_text(out / "sweep.json", json.dumps(result, indent=2) + "\n")
    atomic_text(out / "sweep.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def sweep(model: MPEEModel, data: EncodedDataset, task: str, thresholds: Sequence[float], r_ees: Sequence[float],
          batch_size: int = 32, max_seq_length: int = 128, *, fig4: tuple[float, float] | None = None,
          fig5_r_ees: Sequence[float] | None = DEFAULT_FIG5_R_EES, fig1: bool = True,
          progress: bool = False) -> dict[str, Any]:
    """The grid, its Pareto front and the figure data, as written to ``sweep.json``."""
    metric = primary_metric(task)
    L = model.bert_config.num_hidden_layers
    points = run_sweep(model, data, task, thresholds, r_ees, batch_size, max_seq_length, progress)
    result: dict[str, Any] = {
        "format": FORMAT, "model": None, "task": get_task(task).name, "split": None, "n_examples": len(data),
        "num_layers": L, "batch_size": batch_size, "thresholds": [float(x) for x in thresholds],
        "r_ees": [float(x) for x in r_ees], "metric": metric, "points": points,
        "pareto_front": pareto_front(points, metric)}
    if fig4 is None:
        i = figures.choose_fig4_point(points, metric)
        point, how = points[i], "highest rho within 1 point of the best " + metric
    else:
        match = [p for p in points if p["threshold"] == fig4[0] and p["r_ee"] == fig4[1]]
        point = match[0] if match else evaluate_point(model, data, task, fig4[0], fig4[1], batch_size, max_seq_length)
        how = "chosen with --fig4-threshold/--fig4-r-ee"
    result["fig4"] = {"threshold": point["threshold"], "r_ee": point["r_ee"], "how": how,
                      "metrics": point["metrics"], "rho": point["rho"],
                      "samples_per_exit_layer": figures.fig4_exit_distribution(point, L)}
    if fig5_r_ees:
        result["fig5"] = figures.fig5_token_select(model, data, task, fig5_r_ees, batch_size, max_seq_length)
    if fig1:
        result["fig1"] = {"layers": ["embeddings"] + list(range(1, L + 1)),
                          "mean_pairwise_cosine": figures.fig1_token_similarity(model, data, batch_size)}
    return result


def write_outputs(result: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``sweep.json``, ``sweep.md`` and (with matplotlib) the PNGs into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs: list[Path] = []
    if figures.have_matplotlib():
        metric = result["metric"]
        pngs.append(figures.plot_fig3(figures.fig3_curves(result["points"], metric), metric,
                                      out / "fig3_tradeoff.png"))
        f4 = result["fig4"]
        pngs.append(figures.plot_fig4(f4["samples_per_exit_layer"], f"F {f4['threshold']:g}, R_ee {f4['r_ee']:g}",
                                      out / "fig4_exit_layers.png"))
        if "fig5" in result:
            pngs.append(figures.plot_fig5(result["fig5"], metric, out / "fig5_token_select.png"))
        if "fig1" in result:
            pngs.append(figures.plot_fig1(result["fig1"]["mean_pairwise_cosine"], out / "fig1_token_similarity.png"))
    else:
        print("note: matplotlib is not installed (optional extra 'plot': pip install matplotlib); "
              "figure data is in sweep.json, no PNGs written", file=sys.stderr)
    result["figures"] = [p.name for p in pngs]
    atomic_text(out / "sweep.json", json.dumps(result, indent=2) + "\n")
    atomic_text(out / "sweep.md", sweep_markdown(result))
    return [out / "sweep.json", out / "sweep.md", *pngs]
