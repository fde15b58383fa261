"""The exit test after Eq. (14): natural-log entropy of softmax(C_zm), exit when below F."""

from __future__ import annotations

import math

import torch
from hypothesis import example, given, strategies as st

from mpee_ref.layer_exit import exit_entropy, should_exit


def test_entropy_hand_examples():
    # [0, 0] -> p = [1/2, 1/2] -> ln 2;  [0, 0, 0] -> ln 3
    # [ln 3, 0] -> p = [3/4, 1/4] -> -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623351446
    assert math.isclose(float(exit_entropy(torch.zeros(1, 2, dtype=torch.float64))), math.log(2), rel_tol=1e-12)
    assert math.isclose(float(exit_entropy(torch.zeros(1, 3, dtype=torch.float64))), math.log(3), rel_tol=1e-12)
    m = torch.tensor([[math.log(3), 0.0]], dtype=torch.float64)
    assert math.isclose(float(exit_entropy(m)), 0.5623351446188083, rel_tol=1e-12)


def _reference64(m: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(m.double(), -1)
    return -torch.special.xlogy(p, p).sum(-1)


@given(seed=st.integers(0, 2**31 - 1), C=st.integers(2, 6), scale=st.sampled_from([1.0, 30.0, 1e3, 1e4]))
@example(seed=0, C=2, scale=1e4)
def test_entropy_in_range_finite_fp32_matches_float64(seed, C, scale):
    g = torch.Generator().manual_seed(seed)
    m = ((torch.rand(8, C, generator=g) * 2 - 1) * scale).float()        # (B, C) in [-scale, scale]
    h = exit_entropy(m)                                                    # (B,)
    assert h.dtype == torch.float32 and h.shape == (8,)
    assert bool(torch.isfinite(h).all())
    assert bool((h >= 0).all()) and bool((h <= math.log(C) + 1e-6).all())
    assert torch.allclose(h.double(), _reference64(m), atol=1e-5)


def test_entropy_extreme_logits_fp32():
    # raw exp(1e4) overflows to inf in fp32 (inf/inf = nan); log_softmax does not.
    m = torch.tensor([[1e4, -1e4], [1e4, 1e4], [100.0, 0.0]], dtype=torch.float32)
    h = exit_entropy(m)
    assert float(h[0]) == 0.0
    assert math.isclose(float(h[1]), math.log(2), rel_tol=1e-6)
    # [100, 0]: p_2 = e^-100 ~ 3.7e-44 (a float32 subnormal); entropy ~ 101 e^-100 ~ 3.8e-42
    assert 0.0 <= float(h[2]) < 1e-40
    assert torch.allclose(h.double(), _reference64(m), atol=1e-12)


def test_should_exit_below_threshold_strict():
    h = torch.tensor([0.1, 0.5, 0.6931])
    assert should_exit(h, 0.5).tolist() == [True, False, False]   # strict: 0.5 < 0.5 is False
    assert should_exit(h, 0.0).tolist() == [False, False, False]
    assert should_exit(h, 10.0).tolist() == [True, True, True]
    # a confident memory exits, a uniform one does not
    m = torch.tensor([[8.0, -8.0], [0.0, 0.0]])
    assert should_exit(exit_entropy(m), 0.3).tolist() == [True, False]


@given(seed=st.integers(0, 2**31 - 1), f1=st.floats(-1.0, 2.0), f2=st.floats(-1.0, 2.0))
def test_should_exit_monotone_in_threshold(seed, f1, f2):
    lo, hi = min(f1, f2), max(f1, f2)
    h = exit_entropy(torch.randn(16, 3, generator=torch.Generator().manual_seed(seed)) * 3)
    e_lo, e_hi = should_exit(h, lo), should_exit(h, hi)
    assert e_lo.dtype == torch.bool
    assert bool((e_lo <= e_hi).all())          # raising F never turns an exit into a non-exit
    assert torch.equal(should_exit(h, math.log(3) + 1e-3), torch.ones(16, dtype=torch.bool))
