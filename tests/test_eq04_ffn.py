r"""Eq. (4), §2: the position-wise FFN :math:`\sigma(\tilde Z W_1 + b_1) W_2 + b_2`, and its parts.

Checks ``mpee_ref.encoder.equations.{linear, gelu, eq04_ffn}`` against the formulas written out
(``x @ W.T + b``, ``0.5 x (1 + erf(x / sqrt 2))`` and the tanh form), a hand example and Hypothesis
properties in float64.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, strategies as st

from mpee_ref.encoder.equations import eq04_ffn, gelu, linear

F64 = torch.float64



def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen, dtype=F64)


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


sizes = st.integers(1, 6)
seeds = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- linear
@given(B=sizes, T=sizes, d_in=sizes, d_out=sizes, seed=seeds, with_bias=st.booleans())
def test_linear_equals_x_wT_plus_b(B, T, d_in, d_out, seed, with_bias):
    gen = torch.Generator().manual_seed(seed)
    x, w = randn(gen, B, T, d_in), randn(gen, d_out, d_in)                   # (B, T, in), (out, in)
    b = randn(gen, d_out) if with_bias else None
    expected = x @ w.T + (b if with_bias else 0.0)                           # (B, T, out)
    torch.testing.assert_close(linear(x, w, b), expected, rtol=0, atol=1e-12)


def test_linear_hand_example_uses_out_in_layout():
    # W (out=3, in=2) = [[1, 2], [3, 4], [5, 6]], b = [0, 0, 1], x = [1, -1]:
    # x W^T + b = [1-2, 3-4, 5-6+1] = [-1, -1, 0]
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=F64)
    out = linear(torch.tensor([[1.0, -1.0]], dtype=F64), w, torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    assert torch.equal(out, torch.tensor([[-1.0, -1.0, 0.0]], dtype=F64))


# ----------------------------------------------------------------------------- GELU (sigma of Eq. 4)
def test_gelu_hand_values():
    # Phi(1) = 0.8413447460685429, so GELU(1) = 0.84134..., GELU(-1) = -1 * Phi(-1) = -0.15865...
    # tanh form: 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.8411919906082768
    x = torch.tensor([0.0, 1.0, -1.0], dtype=F64)
    torch.testing.assert_close(gelu(x), torch.tensor([0.0, 0.8413447460685429, -0.15865525393145707],
                                                     dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(gelu(x, "tanh"), torch.tensor([0.0, 0.8411919906082768,
                                                              -0.15880800939172324], dtype=F64),
                               rtol=0, atol=1e-15)


@given(st.lists(st.floats(-12.0, 12.0, allow_nan=False), min_size=1, max_size=20))
def test_gelu_equals_erf_and_tanh_formulas(values):
    x = torch.tensor(values, dtype=F64)
    torch.testing.assert_close(gelu(x), gelu_erf(x), rtol=0, atol=1e-14)
    torch.testing.assert_close(gelu(x, approximate="tanh"), gelu_tanh(x), rtol=0, atol=1e-14)


def test_gelu_erf_and_tanh_forms_differ():
    """The switch matters: the two forms differ by ~1e-4 around |x| = 2 (so a mix-up is caught)."""
    x = torch.linspace(-3, 3, 61, dtype=F64)
    assert (gelu(x) - gelu(x, "tanh")).abs().max() > 1e-4


# ----------------------------------------------------------------------------- Eq. (4)
def test_eq04_ffn_hand_example():
    # D = 2, I = 3.  W_1 = [[1, 0], [0, 1], [1, 1]] (I, D), b_1 = [0, 0, -1], z = [1, -1]:
    #   z W_1^T + b_1 = [1, -1, -1];  GELU -> [0.841345, -0.158655, -0.158655]
    # W_2 = [[1, 0, 0], [0, 1, 1]] (D, I), b_2 = [0, 0.5]:
    #   out = [0.841345, -0.317311 + 0.5] = [0.8413447460685429, 0.18268949213708586]
    w_1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)
    b_1 = torch.tensor([0.0, 0.0, -1.0], dtype=F64)
    w_2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=F64)
    b_2 = torch.tensor([0.0, 0.5], dtype=F64)
    out = eq04_ffn(torch.tensor([[[1.0, -1.0]]], dtype=F64), w_1, b_1, w_2, b_2)
    torch.testing.assert_close(out, torch.tensor([[[0.8413447460685429, 0.18268949213708586]]], dtype=F64),
                               rtol=0, atol=1e-15)


@given(B=sizes, T=sizes, D=sizes, I=st.integers(1, 9), seed=seeds, approximate=st.sampled_from(["none", "tanh"]))
def test_eq04_ffn_equals_written_out_formula_and_is_position_wise(B, T, D, I, seed, approximate):
    gen = torch.Generator().manual_seed(seed)
    z = randn(gen, B, T, D)                                                  # (B, T, D)
    w_1, b_1 = randn(gen, I, D), randn(gen, I)                             # (I, D), (I,)
    w_2, b_2 = randn(gen, D, I), randn(gen, D)                              # (D, I), (D,)
    sigma = gelu_erf if approximate == "none" else gelu_tanh
    expected = sigma(z @ w_1.T + b_1) @ w_2.T + b_2                          # (B, T, D)
    out = eq04_ffn(z, w_1, b_1, w_2, b_2, approximate)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # position-wise: each token alone gives the same row
    for b in range(B):
        for t in range(T):
            row = eq04_ffn(z[b:b + 1, t:t + 1], w_1, b_1, w_2, b_2, approximate)   # (1, 1, D)
            torch.testing.assert_close(row[0, 0], out[b, t], rtol=0, atol=1e-12)
