"""Summarise runs over seeds: the plain baseline and MPEE's F x R_ee grid as mean ± std (Markdown).

    python tools/seed_summary.py --plain runs/sst2/plain-s{0,1,2}/train_summary.json \
        --sweeps runs/sst2/mpee-s{0,1,2}/sweep/sweep.json [--tolerance 0.01] [--out summary.md]

Every number is computed on the split the sweeps and the plain runs' final evaluation used (dev): the
operating point ("largest mean ρ within ``--tolerance`` of the plain mean") is chosen on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpee_ref.experiments.seeds import aggregate_sweeps, best_at_rho, best_within, mean_std  # noqa: E402


def _pm(ms: tuple[float, float], scale: float = 100.0, digits: int = 2) -> str:
    return f"{scale * ms[0]:.{digits}f} ± {scale * ms[1]:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plain", nargs="+", required=True, help="train_summary.json of the plain runs")
    ap.add_argument("--sweeps", nargs="+", required=True, help="sweep.json of the MPEE runs (one per seed)")
    ap.add_argument("--tolerance", type=float, default=0.01, help="metric drop allowed (0.01 = 1 point)")
    ap.add_argument("--rho-targets", default="2.0,2.5,3.0")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    sweeps = [json.loads(Path(p).read_text()) for p in args.sweeps]
    metric = sweeps[0]["metric"]
    plain_vals = [json.loads(Path(p).read_text())["final_dev"]["metrics"][metric] for p in args.plain]
    plain = mean_std(plain_vals)
    points = aggregate_sweeps(sweeps, metric)
    lines = [f"Plain baseline ({len(plain_vals)} seeds): {metric} {_pm(plain)} "
             f"({', '.join(f'{100 * v:.2f}' for v in plain_vals)})", "",
             f"MPEE ({len(sweeps)} seeds), every grid point, sorted by mean ρ:", "",
             f"| F | R_ee | {metric} | ρ | exits at layers 1-2 |", "|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: -p.rho[0]):
        lines.append(f"| {p.threshold:g} | {p.r_ee:g} | {_pm(p.metric)} | {p.rho[0]:.2f} ± {p.rho[1]:.2f}× | "
                     f"{100 * p.early_exit_share:.0f}% |")
    best = best_within(points, plain[0], args.tolerance)
    lines += ["", f"Largest mean ρ with mean {metric} >= plain mean - {100 * args.tolerance:g} point(s):",
              "none" if best is None else
              f"F {best.threshold:g}, R_ee {best.r_ee:g}: {_pm(best.metric)}, ρ {best.rho[0]:.2f}×, "
              f"{100 * best.early_exit_share:.0f}% exit at layers 1-2"]
    for target in (float(x) for x in args.rho_targets.split(",")):
        b = best_at_rho(points, target)
        lines.append(f"Best mean {metric} at mean ρ >= {target:g}: " + (
            "none" if b is None else f"F {b.threshold:g}, R_ee {b.r_ee:g}: {_pm(b.metric)} "
            f"({100 * (b.metric[0] - plain[0]):+.2f} vs plain), ρ {b.rho[0]:.2f}×, "
            f"{100 * b.early_exit_share:.0f}% exit at layers 1-2"))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
