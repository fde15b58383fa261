"""Eq. (6), §3.1: recycling class attention memory A_m^l = (1 - β) A_m^{l-1} + β A_class^l."""
from __future__ import annotations

import torch
from hypothesis import example, given, strategies as st

from mpee_ref.token_exit import eq06_attention_memory

D64 = torch.float64


def _run(a_classes, beta):
    mem = None
    for a in a_classes:
        mem = eq06_attention_memory(mem, a, beta)
    return mem


def test_eq06_hand_example_three_layers_beta_half():
    # A_class^1 = [0.2, 0.8], A_class^2 = [0.6, 0.4], A_class^3 = [1.0, 0.0], β = 0.5
    # A_m^1 = A_class^1 = [0.2, 0.8]
    # A_m^2 = 0.5 [0.2, 0.8] + 0.5 [0.6, 0.4] = [0.4, 0.6]
    # A_m^3 = 0.5 [0.4, 0.6] + 0.5 [1.0, 0.0] = [0.7, 0.3]
    a = [torch.tensor([[0.2, 0.8]], dtype=D64), torch.tensor([[0.6, 0.4]], dtype=D64),
         torch.tensor([[1.0, 0.0]], dtype=D64)]
    m1 = eq06_attention_memory(None, a[0], 0.5)
    m2 = eq06_attention_memory(m1, a[1], 0.5)
    m3 = eq06_attention_memory(m2, a[2], 0.5)
    torch.testing.assert_close(m1, a[0])
    torch.testing.assert_close(m2, torch.tensor([[0.4, 0.6]], dtype=D64))
    torch.testing.assert_close(m3, torch.tensor([[0.7, 0.3]], dtype=D64))


def test_eq06_beta_one_is_no_memory_and_beta_zero_freezes():
    g = torch.Generator().manual_seed(0)
    a = [torch.rand(2, 5, generator=g, dtype=D64) for _ in range(4)]
    assert torch.equal(_run(a, 1.0), a[-1])
    torch.testing.assert_close(_run(a, 0.0), a[0])


_inputs = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 6),
                    st.floats(0.0, 1.0, allow_nan=False), st.integers(0, 2**16))


@given(_inputs)
@example((2, 4, 5, 0.5, 0))
@example((1, 3, 1, 0.0, 1))
@example((1, 3, 4, 1.0, 2))
def test_eq06_closed_form_and_convex_hull(args):
    # A_m^L = (1-β)^{L-1} A^1 + Σ_{j=2}^{L} β (1-β)^{L-j} A^j, a convex combination of A^1..A^L
    B, N, L, beta, seed = args
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(L, B, N, generator=g, dtype=D64)
    a = list(raw / raw.sum(-1, keepdim=True))            # each row sums to 1
    mem = _run(a, beta)
    weights = [(1 - beta) ** (L - 1)] + [beta * (1 - beta) ** (L - j) for j in range(2, L + 1)]
    assert abs(sum(weights) - 1.0) < 1e-12
    closed = sum(w * x for w, x in zip(weights, a))
    torch.testing.assert_close(mem, closed)
    stack = torch.stack(a)                                # (L, B, N)
    assert bool((mem >= stack.min(0).values - 1e-12).all())
    assert bool((mem <= stack.max(0).values + 1e-12).all())
    torch.testing.assert_close(mem.sum(-1), torch.ones(B, dtype=D64))
