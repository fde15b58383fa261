"""Eq. (12): the weighted-ensemble teacher, an attention pool over the exit memories."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from mpee_ref.losses import WeightedTeacher, eq12_teacher



C, K = 3, 5


def _params(seed: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(K, C, generator=g, dtype=torch.float64) * scale,
            torch.randn(K, generator=g, dtype=torch.float64) * scale,
            torch.randn(K, generator=g, dtype=torch.float64) * scale)


def test_eq12_two_layer_hand_example():
    # C = k = 2, W_eta = I, b_eta = 0, V = [1, -1]
    # exit 1: C_zm = [0, 0] -> tanh = [0, 0]           -> score 0
    # exit 2: C_zm = [2, 0] -> tanh = [0.9640276, 0]   -> score 0.9640276
    # eta = softmax([0, 0.9640276]) = [0.2760725, 0.7239275];  t = 0.7239275 [2, 0] = [1.4478549, 0]
    m = torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]]], dtype=torch.float64)   # (L=2, B=1, C=2)
    t, eta = eq12_teacher(m, torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                          torch.tensor([1.0, -1.0], dtype=torch.float64))
    e2 = 0.7239274686640463
    assert torch.allclose(eta, torch.tensor([[1 - e2, e2]], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(t, torch.tensor([[1.4478549373280927, 0.0]], dtype=torch.float64), atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), L=st.integers(1, 6), B=st.integers(1, 4), scale=st.floats(0.1, 10.0))
def test_eq12_eta_is_a_distribution_and_t_in_hull(seed, L, B, scale):
    w, b, v = _params(seed, scale)
    m = torch.randn(L, B, C, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) * 4
    t, eta = eq12_teacher(m, w, b, v)
    assert t.shape == (B, C) and eta.shape == (B, L)
    assert torch.allclose(eta.sum(-1), torch.ones(B, dtype=torch.float64), atol=1e-12)
    assert bool((eta > 0).all())
    assert torch.allclose(t, (eta.T[:, :, None] * m).sum(0), atol=1e-12)
    lo, hi = m.min(0).values, m.max(0).values
    assert bool((t >= lo - 1e-10).all()) and bool((t <= hi + 1e-10).all())


@given(seed=st.integers(0, 2**31 - 1), L=st.integers(2, 6))
def test_eq12_permuting_exits_permutes_eta_and_keeps_t(seed, L):
    w, b, v = _params(seed)
    g = torch.Generator().manual_seed(seed + 7)
    m = torch.randn(L, 3, C, generator=g, dtype=torch.float64)
    perm = torch.randperm(L, generator=g)
    t, eta = eq12_teacher(m, w, b, v)
    t_p, eta_p = eq12_teacher(m[perm], w, b, v)
    assert torch.allclose(t_p, t, atol=1e-12)
    assert torch.allclose(eta_p, eta[:, perm], atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1))
def test_eq12_per_sample_and_degenerate_cases(seed):
    w, b, v = _params(seed)
    m = torch.randn(4, 5, C, generator=torch.Generator().manual_seed(seed + 3), dtype=torch.float64)
    t, eta = eq12_teacher(m, w, b, v)
    # each sample is pooled on its own: batch of 5 == one sample at a time
    for i in range(5):
        ti, ei = eq12_teacher(m[:, i:i + 1], w, b, v)
        assert torch.allclose(ti[0], t[i], atol=1e-12) and torch.allclose(ei[0], eta[i], atol=1e-12)
    # V = 0 -> uniform eta, teacher = mean exit
    t0, eta0 = eq12_teacher(m, w, b, torch.zeros(K, dtype=torch.float64))
    assert torch.allclose(eta0, torch.full((5, 4), 0.25, dtype=torch.float64))
    assert torch.allclose(t0, m.mean(0), atol=1e-12)
    # identical exits -> uniform eta, t = that memory
    same = m[:1].expand(4, 5, C)
    t1, eta1 = eq12_teacher(same, w, b, v)
    assert torch.allclose(eta1, torch.full((5, 4), 0.25, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(t1, m[0], atol=1e-12)


def test_eq12_gradcheck_memories_and_parameters():
    w, b, v = (p.requires_grad_() for p in _params(11))
    m = torch.randn(3, 2, C, generator=torch.Generator().manual_seed(12), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: eq12_teacher(*a), (m, w, b, v), fast_mode=True)


def test_weighted_teacher_module():
    torch.manual_seed(0)
    teacher = WeightedTeacher(C).double().requires_grad_(False)
    shapes = {k: tuple(p.shape) for k, p in teacher.state_dict().items()}
    assert shapes == {"dense.weight": (C, C), "dense.bias": (C,), "context.weight": (1, C)}
    assert {k: tuple(p.shape) for k, p in WeightedTeacher(C, k=K).state_dict().items()} == \
        {"dense.weight": (K, C), "dense.bias": (K,), "context.weight": (1, K)}
    m = torch.randn(4, 2, C, dtype=torch.float64)
    t, eta = teacher(m)
    t_ref, eta_ref = eq12_teacher(m, teacher.dense.weight, teacher.dense.bias, teacher.context.weight[0])
    assert torch.equal(t, t_ref) and torch.equal(eta, eta_ref)
    # small init: eta starts near uniform (within 1e-2 of 1/L for unit-scale memories)
    assert float((eta - 0.25).abs().max()) < 1e-2
    assert math.isclose(float(teacher.dense.bias.abs().sum()), 0.0)


def test_eq12_bad_inputs_raise():
    # eq12_teacher trusts its inputs; the module (whose W_eta, b_eta, V always match) checks the memories
    with pytest.raises(ValueError, match="memories"):
        WeightedTeacher(C)(torch.zeros(2, 3, C + 1))
    with pytest.raises(ValueError, match="memories"):
        WeightedTeacher(C)(torch.zeros(3, C))
    with pytest.raises(ValueError, match="k"):
        WeightedTeacher(C, k=0)
