"""Results over seeds: mean ± std of the plain baseline and of every (F, R_ee) point of MPEE sweeps.

``tools/seed_summary.py`` is the command line. The operating point is chosen from these dev-set
means only: the largest mean ρ whose mean metric is within ``tolerance`` of the plain baseline's mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    if not values:
        raise ValueError("mean_std: no values")
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass(frozen=True)
class SeedPoint:
    """One (F, R_ee) point over seeds: metric and ρ mean ± std, and the share of samples exiting at
    layers ``<= early_layers`` (Fig. 4), mean over seeds."""

    threshold: float
    r_ee: float
    metric: tuple[float, float]
    rho: tuple[float, float]
    early_exit_share: float
    n_seeds: int


def aggregate_sweeps(sweeps: Sequence[Mapping[str, Any]], metric: str, early_layers: int = 2) -> list[SeedPoint]:
    """Points present in every sweep (same F, R_ee grid), aggregated over the sweeps (one per seed)."""
    if not sweeps:
        raise ValueError("aggregate_sweeps: no sweeps")
    keyed = [{(p["threshold"], p["r_ee"]): p for p in s["points"]} for s in sweeps]
    common = sorted(set.intersection(*(set(k) for k in keyed)), key=lambda k: (k[1], k[0]))
    out = []
    for key in common:
        pts = [k[key] for k in keyed]
        early = [sum(p["exit_layer_counts"].get(str(l), 0) for l in range(1, early_layers + 1))
                 / sum(p["exit_layer_counts"].values()) for p in pts]
        out.append(SeedPoint(threshold=key[0], r_ee=key[1], metric=mean_std([p["metrics"][metric] for p in pts]),
                             rho=mean_std([p["rho"] for p in pts]), early_exit_share=sum(early) / len(early),
                             n_seeds=len(pts)))
    return out


def best_within(points: Sequence[SeedPoint], reference: float, tolerance: float = 0.01) -> SeedPoint | None:
    """The point with the largest mean ρ whose mean metric is >= ``reference - tolerance`` (None if none)."""
    ok = [p for p in points if p.metric[0] >= reference - tolerance - 1e-12]
    return max(ok, key=lambda p: (p.rho[0], p.metric[0])) if ok else None


def best_at_rho(points: Sequence[SeedPoint], min_rho: float) -> SeedPoint | None:
    """The point with the best mean metric among those with mean ρ >= ``min_rho`` (None if none)."""
    ok = [p for p in points if p.rho[0] >= min_rho]
    return max(ok, key=lambda p: (p.metric[0], p.rho[0])) if ok else None
