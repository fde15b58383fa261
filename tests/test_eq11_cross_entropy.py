"""Eq. (11): per-exit cross-entropy on the memories, averaged over the batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from mpee_ref.losses import eq11_cross_entropy


def test_eq11_hand_example():
    # exit 1: memory [0, 0], y = 0     -> -log(1/2) = ln 2
    # exit 2: memory [ln 3, 0], y = 1  -> p = [3/4, 1/4], -log(1/4) = ln 4
    # batch of two: sample 2 has y = 0 on [ln 3, 0] -> -log(3/4); exit 2 = (ln 4 + ln 4/3) / 2
    m = torch.tensor([[[0.0, 0.0], [0.0, 0.0]],
                      [[math.log(3), 0.0], [math.log(3), 0.0]]], dtype=torch.float64)   # (L=2, B=2, C=2)
    y = torch.tensor([0, 1])
    # sample 1 (y=0) on exit 2: -log 3/4; sample 2 (y=1): -log 1/4
    expected = torch.tensor([math.log(2), (math.log(4 / 3) + math.log(4)) / 2], dtype=torch.float64)
    assert torch.allclose(eq11_cross_entropy(m, y), expected, atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), L=st.integers(1, 4), B=st.integers(1, 6), C=st.integers(2, 5))
def test_eq11_equals_torch_cross_entropy_per_exit(seed, L, B, C):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(L, B, C, generator=g, dtype=torch.float64) * 5
    y = torch.randint(0, C, (B,), generator=g)
    ce = eq11_cross_entropy(m, y)                                         # (L,)
    assert ce.shape == (L,)
    for l in range(L):
        assert torch.allclose(ce[l], F.cross_entropy(m[l], y), atol=1e-12)
    assert bool((ce >= 0).all())


def test_eq11_gradcheck():
    g = torch.Generator().manual_seed(3)
    m = torch.randn(3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda x: eq11_cross_entropy(x, y), (m,), fast_mode=True)
