"""Eq. (10): recycling EE classifier memory on the logits, and softmax of the memory."""

from __future__ import annotations

import math

import torch
from hypothesis import example, given, settings, strategies as st

from mpee_ref.layer_exit import eq10_classifier_memory, eq10_probabilities


C = 3


def _run(logits: torch.Tensor, lam: float) -> list[torch.Tensor]:
    mem, out = None, []
    for z in logits:                                                       # z: (B, C)
        mem = eq10_classifier_memory(mem, z, lam)
        out.append(mem)
    return out


def test_eq10_hand_example_two_classes_three_layers():
    # lambda = 0.9;  C_z^1 = [1, 0], C_z^2 = [0, 2], C_z^3 = [3, -1]
    # C_zm^1 = [1, 0]
    # C_zm^2 = 0.1 [1, 0]     + 0.9 [0, 2]  = [0.1, 1.8]
    # C_zm^3 = 0.1 [0.1, 1.8] + 0.9 [3, -1] = [0.01 + 2.7, 0.18 - 0.9] = [2.71, -0.72]
    z = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[3.0, -1.0]]], dtype=torch.float64)   # (L, B, C)
    m1, m2, m3 = _run(z, 0.9)
    assert torch.allclose(m1, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(m2, torch.tensor([[0.1, 1.8]], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(m3, torch.tensor([[2.71, -0.72]], dtype=torch.float64), atol=1e-12)
    # y_hat^3 = softmax([2.71, -0.72]) = [1 / (1 + e^-3.43), e^-3.43 / (1 + e^-3.43)]
    p = 1.0 / (1.0 + math.exp(-3.43))
    assert torch.allclose(eq10_probabilities(m3), torch.tensor([[p, 1 - p]], dtype=torch.float64), atol=1e-12)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), L=st.integers(1, 6), lam=st.floats(0.0, 1.0))
@example(seed=0, L=4, lam=0.0)
@example(seed=0, L=4, lam=1.0)
def test_eq10_recursion_equals_closed_form_and_stays_in_hull(seed, L, lam):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(L, 5, C, generator=g, dtype=torch.float64) * 4       # (L, B, C)
    mems = _run(z, lam)
    # closed form: C_zm^l = (1-lam)^(l-1) C_z^1 + sum_{j=2}^{l} lam (1-lam)^(l-j) C_z^j
    for l in range(1, L + 1):
        coeff = [(1 - lam) ** (l - 1)] + [lam * (1 - lam) ** (l - j) for j in range(2, l + 1)]
        assert math.isclose(sum(coeff), 1.0, rel_tol=1e-9)
        assert min(coeff) >= 0
        closed = sum(c * z[j] for j, c in enumerate(coeff))
        assert torch.allclose(mems[l - 1], closed, atol=1e-10)
        lo, hi = z[:l].min(dim=0).values, z[:l].max(dim=0).values           # (B, C)
        assert bool((mems[l - 1] >= lo - 1e-10).all()) and bool((mems[l - 1] <= hi + 1e-10).all())


@given(seed=st.integers(0, 2**31 - 1), L=st.integers(1, 5))
def test_eq10_lambda_one_means_no_memory(seed, L):
    z = torch.randn(L, 4, C, generator=torch.Generator().manual_seed(seed))
    for zl, m in zip(z, _run(z, 1.0)):
        assert torch.equal(m, zl)


def test_eq10_lambda_zero_keeps_first_exit():
    z = torch.randn(4, 2, C, generator=torch.Generator().manual_seed(5))
    for m in _run(z, 0.0):
        assert torch.equal(m, z[0])


@given(seed=st.integers(0, 2**31 - 1))
def test_eq10_probabilities_are_softmax_rows(seed):
    m = torch.randn(6, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 10
    p = eq10_probabilities(m)
    assert torch.allclose(p.sum(-1), torch.ones(6, dtype=torch.float64))
    assert torch.allclose(p, m.exp() / m.exp().sum(-1, keepdim=True))
