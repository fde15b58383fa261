"""Results over seeds (mpee_ref/experiments/seeds.py): mean ± std and the dev operating point."""

from __future__ import annotations

import pytest

from mpee_ref.experiments.seeds import aggregate_sweeps, best_at_rho, best_within, mean_std


def _sweep(points):
    return {"points": [{"threshold": f, "r_ee": r, "metrics": {"accuracy": a}, "rho": rho,
                        "exit_layer_counts": counts} for f, r, a, rho, counts in points]}


def test_mean_std_hand_example():
    assert mean_std([0.8, 0.9, 1.0]) == pytest.approx((0.9, 0.1))       # sample std: sqrt(0.02 / 2)
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_aggregate_and_choose_operating_point():
    s0 = _sweep([(0.0, 0.0, 0.88, 1.0, {"1": 0, "2": 0, "3": 4}),
                 (0.3, 0.3, 0.86, 2.6, {"1": 2, "2": 1, "3": 1}),
                 (0.5, 0.3, 0.80, 3.5, {"1": 4, "2": 0, "3": 0})])
    s1 = _sweep([(0.0, 0.0, 0.90, 1.0, {"1": 0, "2": 0, "3": 4}),
                 (0.3, 0.3, 0.88, 2.4, {"1": 1, "2": 0, "3": 3}),
                 (0.5, 0.3, 0.82, 3.7, {"1": 4, "2": 0, "3": 0}),
                 (0.9, 0.9, 0.50, 9.0, {"1": 4, "2": 0, "3": 0})])           # not in every sweep: left out
    pts = aggregate_sweeps([s0, s1], "accuracy")
    assert [(p.threshold, p.r_ee) for p in pts] == [(0.0, 0.0), (0.3, 0.3), (0.5, 0.3)]
    mid = pts[1]
    assert mid.metric[0] == pytest.approx(0.87) and mid.rho[0] == pytest.approx(2.5)
    assert mid.early_exit_share == pytest.approx((3 / 4 + 1 / 4) / 2) and mid.n_seeds == 2
    # plain mean 0.875: within 1 point means >= 0.865 -> (0.3, 0.3) at rho 2.5; not (0.5, 0.3) at 0.81
    assert best_within(pts, 0.875, 0.01) is mid
    assert best_within(pts, 0.99, 0.01) is None
    assert best_at_rho(pts, 3.0) is pts[2] and best_at_rho(pts, 10.0) is None
