r"""The paper's comparison (Table 1, Figs. 3 and 4) from per-method, per-seed sweeps: the analytics.

Every method (MPEE and each baseline of ``mpee_ref/baselines/``) is reduced to the same record, a
**method sweep**: one trained model (one seed) evaluated at several settings of its speed knob::

    {"method": "deebert", "seed": 0, "metric": "accuracy", "num_layers": 6,
     "points": [{"setting": {"entropy_threshold": 0.3}, "metrics": {"accuracy": 0.85},
                 "rho": 2.1, "exit_layer_counts": {"1": 300, "2": 100, ...}}, ...]}

An MPEE sweep (``sweep.json``) becomes one with :func:`from_mpee_sweep` (setting = ``{threshold, r_ee}``).
From the sweeps of several seeds this module computes, with the same ρ (Eq. 15, one FLOPs code for every
method) and the same dev data:

* :func:`aggregate`: per method and setting, metric and ρ as mean ± std over seeds (settings present
  for every seed only), the mean exit-layer histogram;
* :func:`pareto`: the points no other point of the same method beats in both mean metric and mean ρ;
* :func:`metric_at_rho`: the Table 1 column "metric at ρ ≈ 2×", read off the Pareto front by linear
  interpolation in ρ between neighbours within a factor 1.5 of it (None outside the front's ρ range or
  across a wider gap: never extrapolated, never bridged);
* :func:`largest_rho_within`: the Table 1 column "largest ρ within one point of the plain backbone";
* :func:`comparison_markdown` (the table), :func:`plot_tradeoff` (Fig. 3: one curve per method, error
  bars = std over seeds), :func:`plot_exit_histograms` (Fig. 4: exit layers of two methods at the
  settings whose ρ is closest to a common target).

Operating points are chosen on dev (the only split these sweeps are run on), as everywhere in mpee_ref.

The command ``python -m mpee_ref compare`` (:func:`run_comparison`) trains or reuses one model per
method and seed from the same encoder with the same ``train`` flags, sweeps each on dev and writes::

    out/<method>/s<seed>/            train's run folder (two-stage methods: stage1/ and stage2/)
    out/<method>/s<seed>/sweep.json  its method sweep (reused when present)
    out/compare.json                 every sweep, the plain backbone's dev metric per seed, the table
    out/compare.md                   the Table 1 analogue
    out/fig3_compare.png, out/fig4_compare.png   (with matplotlib)

``plain`` (``train --mode plain`` with ``--train-args`` only) is the reference: the backbone fine-tuned
as usual, every exit off.
A finished run is reused only if it was trained with the same arguments (else an error says which
differ); an interrupted one resumes. Example (the commands of docs/RESULTS.md)::

    python -m mpee_ref compare --model weights/minilm-l6 --task sst-2 --data-dir $GLUE_DIR --out runs/compare \
        --methods plain,mpee,static,deebert,fastbert,pabee,power_bert --seeds 0,1,2 \
        --train-args "--lr 5e-5 --warmup-ratio 0 --max-seq-length 64 --epochs 3" \
        --mpee-train-args "--preset recipe --head-lr-mult 20" --baseline-train-args "--option head_norm=true --head-lr-mult 20"
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..baselines.registry import METHODS, get_method
from ..data import read_glue
from ..io.atomic import atomic_text
from ..io.convert import read_json
from ..mpee import MPEEModel
from .batching import EncodedDataset, encode_examples
from .checkpointing import latest_checkpoint
from .evaluate import run_inference
from .families import load_trained, summarize_baseline
from .figures import have_matplotlib
from .flags import arg, command_parser, from_flags, resolve_device
from .loading import TaskArgs
from .options import check_cli_numbers, comma_list
from .seeds import mean_std
from .sweep import DEFAULT_R_EES, DEFAULT_THRESHOLDS, primary_metric, run_sweep
from .train import train_model

Setting = tuple[tuple[str, float], ...]          # a method's knob values, sorted by name (hashable)


@dataclass(frozen=True)
class MethodPoint:
    """One setting of one method over seeds. ``metric``/``rho`` are (mean, std) over ``n_seeds``;
    ``exit_histogram[l-1]`` is the mean share of samples answering at layer l."""

    method: str
    setting: Setting
    metric: tuple[float, float]
    rho: tuple[float, float]
    exit_histogram: tuple[float, ...]
    n_seeds: int

    def label(self) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in self.setting) or "-"


def from_mpee_sweep(sweep: Mapping[str, Any], seed: int, method: str = "mpee") -> dict[str, Any]:
    """An MPEE ``sweep.json`` (format ``mpee_ref-sweep-1``) as a method sweep."""
    points = [{"setting": {"threshold": p["threshold"], "r_ee": p["r_ee"]}, "metrics": p["metrics"],
               "rho": p["rho"], "exit_layer_counts": p["exit_layer_counts"]} for p in sweep["points"]]
    return {"method": method, "seed": seed, "metric": sweep["metric"], "num_layers": sweep["num_layers"],
            "points": points}


def method_sweep(model: Any, method: str, data: EncodedDataset, task: str, metric: str, seed: int | None,
                 values: Sequence[float] | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Evaluate a trained baseline ``model`` (of ``method``, see :mod:`mpee_ref.baselines.registry`) on
    ``data`` at every setting of its knob (``values``, default: the method's grid): a method sweep."""
    spec = get_method(method)
    L = model.bert_config.num_hidden_layers
    grid = (None,) if spec.knob is None else tuple(spec.grid if values is None else values)
    points = []
    for v in grid:
        samples = run_inference(model, data, batch_size, **({} if v is None else spec.infer_kwargs(v, L)))
        res = summarize_baseline(samples, data.labels, task, model)
        points.append({"setting": {} if v is None else {spec.knob: float(v)},
                       **{k: res[k] for k in ("metrics", "rho", "exit_layer_counts", "mean_exit_layer")}})
    return {"method": spec.name, "seed": seed, "metric": metric, "num_layers": L, "points": points}


def _setting(point: Mapping[str, Any]) -> Setting:
    return tuple(sorted((str(k), float(v)) for k, v in point["setting"].items()))


def _histogram(counts: Mapping[str, int], num_layers: int) -> list[float]:
    total = sum(counts.values())
    if total <= 0:
        raise ValueError(f"exit_layer_counts: no samples in {dict(counts)}")
    return [counts.get(str(l), 0) / total for l in range(1, num_layers + 1)]


def aggregate(sweeps: Sequence[Mapping[str, Any]]) -> list[MethodPoint]:
    """The settings present in every sweep of one method (one sweep per seed), over seeds; sorted by mean ρ."""
    if not sweeps:
        raise ValueError("aggregate: no sweeps")
    methods = {s["method"] for s in sweeps}
    metrics = {s["metric"] for s in sweeps}
    layers = {s["num_layers"] for s in sweeps}
    if len(methods) != 1 or len(metrics) != 1 or len(layers) != 1:
        raise ValueError(f"aggregate: sweeps of one method, metric and depth expected, got methods {sorted(methods)}, "
                         f"metrics {sorted(metrics)}, num_layers {sorted(layers)}")
    seeds = [s["seed"] for s in sweeps]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"aggregate: seed listed twice for {methods.pop()}: {seeds}")
    (method,), (metric,), (num_layers,) = methods, metrics, layers
    keyed = [{_setting(p): p for p in s["points"]} for s in sweeps]
    out = []
    for key in set.intersection(*(set(k) for k in keyed)):
        pts = [k[key] for k in keyed]
        hists = [_histogram(p["exit_layer_counts"], num_layers) for p in pts]
        out.append(MethodPoint(method=method, setting=key, metric=mean_std([p["metrics"][metric] for p in pts]),
                               rho=mean_std([p["rho"] for p in pts]), n_seeds=len(pts),
                               exit_histogram=tuple(sum(h[i] for h in hists) / len(hists) for i in range(num_layers))))
    return sorted(out, key=lambda p: (p.rho[0], p.setting))


def pareto(points: Sequence[MethodPoint]) -> list[MethodPoint]:
    """Points that no other point beats in mean metric and mean ρ (>= in both, > in one), by ascending ρ;
    of points with equal mean metric and ρ, the first one given is kept."""
    def beaten(p: MethodPoint) -> bool:
        return any(q.metric[0] >= p.metric[0] and q.rho[0] >= p.rho[0]
                   and (q.metric[0] > p.metric[0] or q.rho[0] > p.rho[0]) for q in points)
    unique = {(p.rho[0], p.metric[0]): p for p in reversed(points)}
    return sorted((p for p in unique.values() if not beaten(p)), key=lambda p: p.rho[0])


def metric_at_rho(points: Sequence[MethodPoint], rho: float, span: float = 1.5) -> float | None:
    r"""Mean metric on the Pareto front at speed-up ``rho``, interpolated linearly between the two front
    points whose mean ρ brackets it (the front point itself if one sits exactly there); None when ``rho``
    is outside the front's range, or when the bracketing points are not both within a factor ``span`` of
    ``rho`` (:math:`\rho_a \ge \rho / span`, :math:`\rho_b \le span \cdot \rho`).

    .. math:: m(\rho) = m_a + (m_b - m_a)\,\frac{\rho - \rho_a}{\rho_b - \rho_a}, \quad \rho_a \le \rho \le \rho_b

    The span rule keeps a straight line across a gap in the sweep from standing in for an operating point:
    a front with points only at 1.2x (87%) and 6x (51%, a constant classifier) has no reading at 2x.
    """
    front = pareto(points)
    for p in front:
        if p.rho[0] == rho:
            return p.metric[0]
    for a, b in zip(front, front[1:]):
        if a.rho[0] < rho < b.rho[0]:
            if a.rho[0] < rho / span or b.rho[0] > rho * span:
                return None
            return a.metric[0] + (b.metric[0] - a.metric[0]) * (rho - a.rho[0]) / (b.rho[0] - a.rho[0])
    return None


def largest_rho_within(points: Sequence[MethodPoint], reference: float, tolerance: float = 0.01) -> MethodPoint | None:
    """The point with the largest mean ρ whose mean metric is >= ``reference - tolerance`` (None if none)."""
    ok = [p for p in points if p.metric[0] >= reference - tolerance - 1e-12]
    return max(ok, key=lambda p: (p.rho[0], p.metric[0])) if ok else None


def closest_to_rho(points: Sequence[MethodPoint], rho: float) -> MethodPoint:
    """The Pareto-front point whose mean ρ is closest to ``rho`` (Fig. 4 compares methods at equal speed)."""
    return min(pareto(points), key=lambda p: (abs(p.rho[0] - rho), -p.metric[0]))


def comparison_markdown(by_method: Mapping[str, Sequence[MethodPoint]], plain: tuple[float, float], metric: str,
                        target_rho: float = 2.0, tolerance: float = 0.01) -> str:
    """The Table 1 analogue: per method, the metric at ρ = ``target_rho`` (interpolated on the Pareto
    front; a method whose front does not reach it shows its front point nearest to it, with that
    point's ρ, if within 5%) and the largest ρ within ``tolerance`` of the plain backbone's mean metric
    (metrics in %, mean ± std over seeds)."""
    pct = lambda ms: f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"                          # noqa: E731
    lines = [f"| method | seeds | {metric} at ρ = {target_rho:g}× | largest ρ within {100 * tolerance:g} pt "
             f"of plain ({pct(plain)}) | {metric} there | setting |", "|---|---|---|---|---|---|"]
    for method, points in by_method.items():
        at = metric_at_rho(points, target_rho)
        near = closest_to_rho(points, target_rho)
        shown = (f"{100 * at:.2f}" if at is not None else f"{100 * near.metric[0]:.2f} (ρ {near.rho[0]:.2f})"
                 if abs(near.rho[0] - target_rho) <= 0.05 * target_rho else "-")
        best = largest_rho_within(points, plain[0], tolerance)
        n = max(p.n_seeds for p in points)
        lines.append(f"| {method} | {n} | {shown} | "
                     + (f"{best.rho[0]:.2f}× ± {best.rho[1]:.2f} | {pct(best.metric)} | {best.label()} |"
                        if best else "none | - | - |"))
    return "\n".join(lines) + "\n"


def plot_tradeoff(by_method: Mapping[str, Sequence[MethodPoint]], plain: tuple[float, float], metric: str,
                  path: str | Path) -> Path:
    """Fig. 3 analogue: each method's Pareto front, metric vs ρ, error bars = std over seeds."""
    from .figures import _pyplot, _save
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, points in by_method.items():
        front = pareto(points)
        ax.errorbar([p.rho[0] for p in front], [100 * p.metric[0] for p in front],
                    xerr=[p.rho[1] for p in front], yerr=[100 * p.metric[1] for p in front],
                    marker="o", ms=3, capsize=2, label=method)
    ax.axhline(100 * plain[0], color="grey", ls="--", lw=1, label="plain backbone")
    ax.set_xlabel("speed-up ρ (Eq. 15)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title("Accuracy vs speed-up, one FLOPs counter (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_exit_histograms(chosen: Sequence[MethodPoint], path: str | Path) -> Path:
    """Fig. 4 analogue: the exit-layer shares of the given points side by side."""
    from .figures import _pyplot, _save
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    width = 0.8 / max(len(chosen), 1)
    for i, p in enumerate(chosen):
        xs = [l + 1 + (i - (len(chosen) - 1) / 2) * width for l in range(len(p.exit_histogram))]
        ax.bar(xs, [100 * s for s in p.exit_histogram], width=width, label=f"{p.method} (ρ {p.rho[0]:.2f}×)")
    ax.set_xticks(range(1, len(chosen[0].exit_histogram) + 1))
    ax.set_xlabel("exit layer")
    ax.set_ylabel("samples (%)")
    ax.set_title("Exit layers at equal speed-up", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


# ============================================================================ the command
@dataclass(frozen=True)
class CompareArgs(TaskArgs):
    """What ``compare`` needs (each field one flag)."""

    model: str = arg(help="the converted encoder every method is trained from")
    out: str = arg("runs/compare", "output folder (one run folder per method and seed)")
    methods: str = arg(",".join(("plain", "mpee", *sorted(METHODS))), "comma list: plain, mpee and baselines")
    seeds: str = arg("0", "comma list of seeds (each method trains once per seed)")
    train_args: str = arg("", "train flags for every run, one string, e.g. '--epochs 3 --lr 5e-5'")
    mpee_train_args: str = arg("", "more train flags for the mpee runs, e.g. '--preset recipe --head-lr-mult 20'")
    baseline_train_args: str = arg("", "more train flags for the baselines, e.g. '--option head_norm=true'")
    method_train_args: str = arg("", "more train flags for one method, 'METHOD: FLAGS', several separated by ';', "
                                     "e.g. 'power_bert: --option retention=0.8,0.64,0.51,0.41,0.33,0.26'")
    thresholds: str = arg(",".join(map(str, DEFAULT_THRESHOLDS)), "MPEE's sweep: comma list of F")
    r_ees: str = arg(",".join(map(str, DEFAULT_R_EES)), "MPEE's sweep: comma list of R_ee")
    target_rho: float = arg(2.0, "the table's 'metric at rho' column")
    tolerance: float = arg(0.01, "the table's 'within this of plain' column (0.01 = one point)")
    batch_size: int = arg(32, "inference batch size of the sweeps")
    device: str = arg("cpu", "torch device for training and sweeps")
    threads: int | None = arg(None, "torch.set_num_threads")


def _stages(method: str) -> list[tuple[str | None, list[str]]]:
    """(sub-folder, extra train flags) per training stage of ``method``."""
    if method == "plain":
        return [(None, ["--mode", "plain"])]
    if method == "mpee":
        return [(None, [])]
    stages = get_method(method).stages
    if not stages:
        return [(None, ["--method", method])]
    later = ["--freeze-backbone"]
    return [(f"stage{i + 1}", ["--method", method, "--stage", st] + (later if i else []))
            for i, st in enumerate(stages)]


def per_method_flags(text: str) -> dict[str, str]:
    """``"power_bert: --option x=1; deebert: --lr 1e-4"`` -> ``{"power_bert": "--option x=1", "deebert": "--lr 1e-4"}``."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";") if p.strip()):
        name, sep, flags = part.partition(":")
        if not sep:
            raise ValueError(f"--method-train-args: expected 'METHOD: FLAGS', got {part!r}")
        out[name.strip().replace("-", "_")] = flags.strip()
    return out


def train_method(a: CompareArgs, method: str, seed: int) -> Path:
    """Train (or reuse, or resume) ``method`` at ``seed``; returns its final model folder."""
    from .ablation import check_same_args, train_args_from_cli
    family = {"plain": "", "mpee": a.mpee_train_args}.get(method, a.baseline_train_args)   # plain: a plain fine-tune
    family += " " + per_method_flags(a.method_train_args).get(method, "")
    run_dir, start = Path(a.out) / method / f"s{seed}", a.model
    for sub, extra in _stages(method):
        out = run_dir / sub if sub else run_dir
        targs = train_args_from_cli(start, a.task, a.data_dir, str(out), f"{a.train_args} {family}",
                                    [*extra, "--seed", str(seed), "--no-progress"])
        targs = replace(targs, device=a.device)
        if (out / "train_summary.json").is_file():
            check_same_args(out, targs)
        else:
            print(f"compare: training {method} seed {seed}{f' ({sub})' if sub else ''} -> {out}", file=sys.stderr)
            train_model(replace(targs, resume=latest_checkpoint(out) is not None), command=f"compare {method} s{seed}")
        start = str(out / "final")
    return Path(start)


def sweep_method(a: CompareArgs, method: str, seed: int, final: Path, metric: str) -> dict[str, Any]:
    """The method sweep of one trained model on dev (cached in its run folder's sweep.json)."""
    cache = Path(a.out) / method / f"s{seed}" / "sweep.json"
    grid = ({"thresholds": a.thresholds, "r_ees": a.r_ees} if method == "mpee" else None if method == "plain"
            else {"values": list(get_method(method).grid)})               # a changed grid is swept again
    cached = read_json(cache) if cache.is_file() else None
    if cached is not None and cached.get("grid") == grid:
        return cached
    model = load_trained(final).to(resolve_device(a.device))
    examples = read_glue(a.task, a.data_dir, "dev")
    max_len = model_max_length(final)
    data = encode_examples(model.tokenizer, examples, max_len)
    if isinstance(model, MPEEModel):
        thresholds = (0.0,) if method == "plain" else comma_list(a.thresholds, float, "--thresholds")
        r_ees = (0.0,) if method == "plain" else comma_list(a.r_ees, float, "--r-ees")
        points = run_sweep(model, data, a.task, thresholds, r_ees, a.batch_size, max_len)
        result = from_mpee_sweep({"metric": metric, "num_layers": model.bert_config.num_hidden_layers,
                                  "points": points}, seed, method)
    else:
        result = method_sweep(model, method, data, a.task, metric, seed, batch_size=a.batch_size)
    result["grid"] = grid
    atomic_text(cache, json.dumps(result, indent=2) + "\n")
    return result


def model_max_length(final: Path) -> int:
    """The max_seq_length a model in ``final/`` was trained with (its train_summary.json)."""
    return int(read_json(final / "train_summary.json")["args"]["max_seq_length"])


def run_comparison(a: CompareArgs) -> dict[str, Any]:
    """Train/reuse and sweep every method and seed, then aggregate and write the outputs."""
    methods = comma_list(a.methods, str, "--methods")
    seeds = comma_list(a.seeds, int, "--seeds")
    for m in methods:
        if m not in ("plain", "mpee"):
            get_method(m)                                     # an unknown name fails before any training
    metric = primary_metric(a.task)
    sweeps = {m: [sweep_method(a, m, s, train_method(a, m, s), metric) for s in seeds] for m in methods}
    plain = mean_std([sw["points"][0]["metrics"][metric] for sw in sweeps["plain"]]) if "plain" in sweeps else None
    by_method = {m: aggregate(sw) for m, sw in sweeps.items() if m != "plain"}
    result = {"format": "mpee_ref-compare-1", "task": a.task, "metric": metric, "seeds": list(seeds),
              "args": asdict(a), "plain": plain, "sweeps": sweeps}
    if plain is not None and by_method:
        result["table"] = comparison_markdown(by_method, plain, metric, a.target_rho, a.tolerance)
    _write_outputs(Path(a.out), result, by_method)
    return result


def _write_outputs(out: Path, result: dict[str, Any], by_method: Mapping[str, Sequence[MethodPoint]]) -> None:
    atomic_text(out / "compare.json", json.dumps(result, indent=2) + "\n")
    if "table" in result:
        atomic_text(out / "compare.md", f"# Comparison: {result['task']} dev, seeds {result['seeds']}\n\n"
                                        f"{result['table']}")
    if not have_matplotlib() or not by_method or result["plain"] is None:
        return
    plot_tradeoff(by_method, result["plain"], result["metric"], out / "fig3_compare.png")
    shown = [m for m in ("mpee", "deebert") if m in by_method] or list(by_method)[:2]
    plot_exit_histograms([closest_to_rho(by_method[m], 2.0) for m in shown], out / "fig4_compare.png")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    return command_parser(subparsers, "compare", "MPEE against the baselines on one backbone (Table 1, Figs. 3-4)", __doc__, flags=CompareArgs)


def run(args: argparse.Namespace) -> int:
    """The ``compare`` command; ValueError/OSError reach ``__main__`` (one line, exit 2)."""
    return run_command(from_flags(CompareArgs, args), run_comparison, "compare",
                       "no table: the comparison needs 'plain' and at least one other method")


def run_command(a: CompareArgs, runner: Callable[[Any], dict[str, Any]], name: str, no_table: str) -> int:
    """``compare`` and ``search``: threads, ``runner(a)``, its table printed (``no_table`` if it has none);
    Ctrl-C / SIGTERM: the run in progress saved a checkpoint, rerunning continues."""
    import torch
    check_cli_numbers(a.threads, batch_size=a.batch_size)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        result = runner(a)
    except KeyboardInterrupt as e:
        print(f"{name}: interrupted; run the same command again to continue", file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    print(result.get("table", no_table))
    return 0
