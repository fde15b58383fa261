r"""Eqs. (2) and (3), §2: multi-head self-attention and scaled dot-product attention.

Checks ``mpee_ref.encoder.equations.{attention_mask_bias, eq03_attention, eq02_mhsa}`` by
hand examples (numbers in the comments), a written-out per-head computation (the head split of
Eq. 2) and Hypothesis properties in float64 (softmax rows sum to 1, padded keys get exactly 0).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from mpee_ref.encoder.equations import attention_mask_bias, eq02_mhsa, eq03_attention

F64 = torch.float64



def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen, dtype=F64)


def random_mask(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    """(B, T) 0/1 mask with arbitrary holes (not only a padded tail); key 0 is always real."""
    mask = (torch.rand(B, T, generator=gen) < 0.6).long()                  # (B, T)
    mask[:, 0] = 1
    return mask


def mhsa_weights(gen: torch.Generator, D: int) -> dict[str, torch.Tensor]:
    s = 1.0 / math.sqrt(D)
    return {name: randn(gen, D, D, scale=s) if name.startswith("w") else randn(gen, D, scale=0.1)
            for name in ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o")}


# ----------------------------------------------------------------------------- attention_mask_bias
def test_attention_mask_bias_values_and_shape():
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    bias = attention_mask_bias(mask, F64)
    lo = torch.finfo(F64).min
    expected = torch.tensor([[0.0, 0.0, lo], [0.0, lo, 0.0]], dtype=F64)[:, None, None, :]
    assert bias.shape == (2, 1, 1, 3)
    assert bias.dtype == F64
    assert torch.equal(bias, expected)


def test_attention_mask_bias_rejects_non_2d():
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, T\), got shape \(2, 1, 3\)"):
        attention_mask_bias(torch.ones(2, 1, 3), F64)


# ----------------------------------------------------------------------------- Eq. (3) by hand
def test_eq03_attention_hand_example_one_head():
    # T = 2, dh = 2, one head.  q = [[s, 0], [0, 0]] with s = sqrt(2) ln 3, k = I, v = [[4, 0], [0, 8]].
    # scores = q k^T / sqrt(2) = [[ln 3, 0], [0, 0]]
    # softmax rows: [3/4, 1/4] (e^{ln3} = 3 vs e^0 = 1) and [1/2, 1/2]
    # context = probs @ v = [[3, 2], [2, 4]]
    s = math.sqrt(2.0) * math.log(3.0)
    q = torch.tensor([[s, 0.0], [0.0, 0.0]], dtype=F64)[None, None]        # (1, 1, 2, 2)
    k = torch.eye(2, dtype=F64)[None, None]                                  # (1, 1, 2, 2)
    v = torch.tensor([[4.0, 0.0], [0.0, 8.0]], dtype=F64)[None, None]      # (1, 1, 2, 2)
    context, probs = eq03_attention(q, k, v, None)
    torch.testing.assert_close(probs[0, 0], torch.tensor([[0.75, 0.25], [0.5, 0.5]], dtype=F64),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(context[0, 0], torch.tensor([[3.0, 2.0], [2.0, 4.0]], dtype=F64),
                               rtol=0, atol=1e-14)

    # Same example with key 1 padded: every query puts all its weight on key 0, so context = v[0].
    bias = attention_mask_bias(torch.tensor([[1, 0]]), F64)                  # (1, 1, 1, 2)
    context, probs = eq03_attention(q, k, v, bias)
    assert torch.equal(probs[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64))
    assert torch.equal(context[0, 0], torch.tensor([[4.0, 0.0], [4.0, 0.0]], dtype=F64))


def test_eq03_attention_dropout_acts_on_context_not_on_returned_probs():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (randn(gen, 2, 3, 5, 4) for _ in range(3))                    # (B, H, T, dh)
    ctx_eval, probs_eval = eq03_attention(q, k, v, None)
    ctx_off, _ = eq03_attention(q, k, v, None, dropout_p=0.5, training=False)
    torch.manual_seed(0)
    ctx_train, probs_train = eq03_attention(q, k, v, None, dropout_p=0.5, training=True)
    assert torch.equal(ctx_off, ctx_eval)              # dropout_p is ignored outside training
    assert torch.equal(probs_train, probs_eval)        # probs are returned before dropout (read by Eq. 5)
    assert not torch.allclose(ctx_train, ctx_eval)     # ... but the context used the dropped probs


# ----------------------------------------------------------------------------- Eq. (3) properties
@st.composite
def attention_case(draw):
    B = draw(st.integers(1, 3))
    H = draw(st.integers(1, 3))
    T = draw(st.integers(1, 7))
    dh = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))      # 10: nearly one-hot softmax rows
    return B, H, T, dh, seed, scale


@given(attention_case())
def test_eq03_softmax_rows_sum_to_one_and_padded_keys_get_exactly_zero(case):
    B, H, T, dh, seed, scale = case
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (randn(gen, B, H, T, dh, scale=scale) for _ in range(3))      # (B, H, T, dh)
    mask = random_mask(gen, B, T)                                            # (B, T)
    context, probs = eq03_attention(q, k, v, attention_mask_bias(mask, F64))
    assert probs.shape == (B, H, T, T)
    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, H, T, dtype=F64), rtol=0, atol=1e-12)
    padded = (mask == 0)[:, None, None, :].expand(B, H, T, T)               # (B, H, T, T)
    assert bool((probs[padded] == 0).all())
    # Padded keys' values are irrelevant: overwrite them with garbage, the context is unchanged.
    v_garbage = torch.where((mask == 0)[:, None, :, None], torch.full_like(v, 1e6), v)
    context2, _ = eq03_attention(q, k, v_garbage, attention_mask_bias(mask, F64))
    torch.testing.assert_close(context2, context, rtol=0, atol=1e-12)


@given(attention_case())
def test_eq03_equals_explicit_formula(case):
    B, H, T, dh, seed, scale = case
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (randn(gen, B, H, T, dh, scale=scale) for _ in range(3))      # (B, H, T, dh)
    mask = random_mask(gen, B, T)
    context, probs = eq03_attention(q, k, v, attention_mask_bias(mask, F64))
    # softmax(Q K^T / sqrt(dh)) V with the softmax written out and padded keys excluded by -inf.
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(dh)          # (B, H, T, T)
    scores = scores.masked_fill((mask == 0)[:, None, None, :], float("-inf"))
    e = torch.exp(scores - scores.amax(-1, keepdim=True))                    # (B, H, T, T)
    expected_probs = e / e.sum(-1, keepdim=True)
    torch.testing.assert_close(probs, expected_probs, rtol=0, atol=1e-12)
    torch.testing.assert_close(context, torch.einsum("bhij,bhjd->bhid", expected_probs, v),
                               rtol=0, atol=1e-10 * max(1.0, scale))


# ----------------------------------------------------------------------------- Eq. (2)
def test_eq02_mhsa_hand_example_two_heads():
    # D = 2, H = 2, dh = 1; W^Q = W^K = W^V = I, no biases, z = I (2 tokens).
    # Head 1 sees column 0: q = k = v = [1, 0]; scores (scale 1/sqrt(1)) = [[1, 0], [0, 0]]
    #   row 0 softmax [e/(1+e), 1/(1+e)] -> context e/(1+e) = 0.7310585786; row 1 [1/2, 1/2] -> 1/2.
    # Head 2 sees column 1: q = k = v = [0, 1] -> contexts 1/2 and e/(1+e).
    # Concat = [[0.7311, 0.5], [0.5, 0.7311]]; W^o = [[0, 1], [1, 0]] (stored (out, in)) swaps columns,
    # b^o = [10, 20]:  out = [[10.5, 20.7311], [10.7311, 20.5]].
    sig1 = math.e / (1.0 + math.e)
    eye, zero = torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64)
    w_o = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64)
    b_o = torch.tensor([10.0, 20.0], dtype=F64)
    out, probs = eq02_mhsa(eye[None], eye, zero, eye, zero, eye, zero, w_o, b_o, num_heads=2,
                           mask_bias=None)
    expected = torch.tensor([[10.5, 20.0 + sig1], [10.0 + sig1, 20.5]], dtype=F64)
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(probs[0, 0], torch.tensor([[sig1, 1 - sig1], [0.5, 0.5]], dtype=F64),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(probs[0, 1], torch.tensor([[0.5, 0.5], [1 - sig1, sig1]], dtype=F64),
                               rtol=0, atol=1e-15)


def single_head_attention(z, w_q, b_q, w_k, b_k, w_v, b_v, mask):
    """One head written out: Q_h = Z W_h^Q (+b), ..., softmax(Q K^T / sqrt(dh)) V, -inf on padded keys."""
    dh = w_q.shape[0]
    q, k, v = z @ w_q.T + b_q, z @ w_k.T + b_k, z @ w_v.T + b_v              # (B, T, dh) each
    scores = q @ k.transpose(1, 2) / math.sqrt(dh)                          # (B, T, T)
    scores = scores.masked_fill((mask == 0)[:, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)                                    # (B, T, T)
    return probs @ v, probs                                                  # (B, T, dh), (B, T, T)


@given(attention_case())
def test_eq02_mhsa_equals_separate_heads_on_weight_slices(case):
    """Eq. (2): H single-head attentions on rows h*dh:(h+1)*dh of W^{Q,K,V}, concatenated, then W^o."""
    B, H, T, dh, seed, _ = case
    D = H * dh
    gen = torch.Generator().manual_seed(seed)
    w = mhsa_weights(gen, D)
    z = randn(gen, B, T, D)                                                  # (B, T, D)
    mask = random_mask(gen, B, T)                                            # (B, T)
    out, probs = eq02_mhsa(z, w["w_q"], w["b_q"], w["w_k"], w["b_k"], w["w_v"], w["b_v"],
                           w["w_o"], w["b_o"], H, attention_mask_bias(mask, F64))
    heads, head_probs = [], []
    for h in range(H):
        rows = slice(h * dh, (h + 1) * dh)
        c, p = single_head_attention(z, w["w_q"][rows], w["b_q"][rows], w["w_k"][rows], w["b_k"][rows],
                                     w["w_v"][rows], w["b_v"][rows], mask)
        heads.append(c)
        head_probs.append(p)
    concat = torch.cat(heads, dim=-1)                                        # (B, T, D)
    expected = concat @ w["w_o"].T + w["b_o"]                                # (B, T, D)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(probs, torch.stack(head_probs, dim=1), rtol=0, atol=1e-12)


def test_eq02_mhsa_head_split_is_not_symmetric_in_H():
    """Guard for the test above: with D = 12, splitting into 3 heads and into 4 heads must differ
    (otherwise an implementation ignoring ``num_heads`` would pass)."""
    gen = torch.Generator().manual_seed(7)
    w = mhsa_weights(gen, 12)
    z = randn(gen, 2, 5, 12)
    args = (z, w["w_q"], w["b_q"], w["w_k"], w["b_k"], w["w_v"], w["b_v"], w["w_o"], w["b_o"])
    out3, p3 = eq02_mhsa(*args, 3, None)
    out4, p4 = eq02_mhsa(*args, 4, None)
    assert p3.shape == (2, 3, 5, 5) and p4.shape == (2, 4, 5, 5)
    assert (out3 - out4).abs().max() > 1e-3
