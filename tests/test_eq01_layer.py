r"""Eq. (1), §2: one post-LN BERT layer, :math:`\tilde Z = \mathrm{LN}(h + \mathrm{MHSA}(h))`,
:math:`Z = \mathrm{LN}(\tilde Z + \mathrm{FFN}(\tilde Z))`.

Checks ``mpee_ref.encoder.equations.{layer_norm, eq01_attention_sublayer, eq01_ffn_sublayer,
eq01_transformer_layer}``: LayerNorm against its formula, the two sub-layers against their written-out
composition, and Hypothesis properties in float64 (padding never changes real tokens, batched == one
sample at a time, permuting tokens permutes the output), plus ``gradcheck`` of both sub-layers.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, strategies as st

from mpee_ref.encoder.equations import (
    attention_mask_bias, eq01_attention_sublayer, eq01_ffn_sublayer, eq01_transformer_layer, eq02_mhsa,
    eq04_ffn, layer_norm)

F64 = torch.float64
EPS = 1e-12



def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen, dtype=F64)


def layer_params(gen: torch.Generator, D: int, I: int) -> dict[str, torch.Tensor]:
    """Random float64 tensors under the short names of ``BertLayer.params()``; LayerNorm gammas near 1
    but not 1 and non-zero betas, so a swapped LayerNorm is visible."""
    p = {}
    for name in ("q", "k", "v", "o"):
        p[f"w_{name}"] = randn(gen, D, D, scale=1 / math.sqrt(D))
        p[f"b_{name}"] = randn(gen, D, scale=0.1)
    p["w_1"], p["b_1"] = randn(gen, I, D, scale=1 / math.sqrt(D)), randn(gen, I, scale=0.1)
    p["w_2"], p["b_2"] = randn(gen, D, I, scale=1 / math.sqrt(I)), randn(gen, D, scale=0.1)
    for ln in ("ln1", "ln2"):
        p[f"{ln}_w"] = 1.0 + randn(gen, D, scale=0.3)
        p[f"{ln}_b"] = randn(gen, D, scale=0.3)
    return p


def layer_norm_formula(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)                                            # (..., 1)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)                             # (..., 1) biased
    return gamma * (x - mu) / torch.sqrt(var + eps) + beta


@st.composite
def layer_case(draw):
    """(B, T, H, dh, I, seed, lengths): real-token count per sample, the rest is a padded tail."""
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 6))
    H = draw(st.integers(1, 3))
    dh = draw(st.integers(1, 3))
    I = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    return B, T, H, dh, I, seed, lengths


def tail_mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()   # (B, T)


def run_layer(h, p, H, mask):
    out, probs = eq01_transformer_layer(h, p, H, EPS, attention_mask_bias(mask, h.dtype))
    return out, probs


# ----------------------------------------------------------------------------- LayerNorm (inside Eq. 1)
def test_layer_norm_hand_example_uses_biased_variance():
    # x = [1, 3]: mean 2, biased variance 1 (unbiased would be 2), so (x - mu)/sqrt(1 + eps) = [-1, 1];
    # gamma = [2, 1], beta = [0, 5]  ->  [-2, 6].
    out = layer_norm(torch.tensor([1.0, 3.0], dtype=F64), torch.tensor([2.0, 1.0], dtype=F64),
                     torch.tensor([0.0, 5.0], dtype=F64), EPS)
    torch.testing.assert_close(out, torch.tensor([-2.0, 6.0], dtype=F64), rtol=0, atol=1e-11)


@given(B=st.integers(1, 3), T=st.integers(1, 4), D=st.integers(2, 9), seed=st.integers(0, 2**31 - 1),
       eps=st.sampled_from([1e-12, 1e-5, 0.5]))
def test_layer_norm_equals_formula(B, T, D, seed, eps):
    gen = torch.Generator().manual_seed(seed)
    x = randn(gen, B, T, D, scale=3.0) + 5.0                                 # (B, T, D), off-centre
    gamma, beta = randn(gen, D), randn(gen, D)
    torch.testing.assert_close(layer_norm(x, gamma, beta, eps), layer_norm_formula(x, gamma, beta, eps),
                               rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- the two halves of Eq. (1)
@given(layer_case())
def test_eq01_layer_equals_written_out_post_ln_composition(case):
    B, T, H, dh, I, seed, lengths = case
    D = H * dh
    gen = torch.Generator().manual_seed(seed)
    p = layer_params(gen, D, I)
    h = randn(gen, B, T, D)                                                  # (B, T, D)
    bias = attention_mask_bias(tail_mask(lengths, T), F64)                   # (B, 1, 1, T)
    mhsa, probs_ref = eq02_mhsa(h, p["w_q"], p["b_q"], p["w_k"], p["b_k"], p["w_v"], p["b_v"],
                                p["w_o"], p["b_o"], H, bias)
    z_tilde_ref = layer_norm_formula(h + mhsa, p["ln1_w"], p["ln1_b"], EPS)  # LN(h + MHSA(h))
    ffn = eq04_ffn(z_tilde_ref, p["w_1"], p["b_1"], p["w_2"], p["b_2"])
    out_ref = layer_norm_formula(z_tilde_ref + ffn, p["ln2_w"], p["ln2_b"], EPS)  # LN(Z~ + FFN(Z~))

    z_tilde, probs = eq01_attention_sublayer(h, p, H, EPS, bias)
    torch.testing.assert_close(z_tilde, z_tilde_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(eq01_ffn_sublayer(z_tilde, p, EPS), out_ref, rtol=0, atol=1e-10)
    out, probs2 = eq01_transformer_layer(h, p, H, EPS, bias)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-10)
    assert torch.equal(probs, probs_ref) and torch.equal(probs2, probs_ref)


def test_eq01_ffn_sublayer_tanh_switch_is_wired():
    gen = torch.Generator().manual_seed(11)
    p = layer_params(gen, 6, 7)
    z = randn(gen, 2, 3, 6)
    exact = eq01_ffn_sublayer(z, p, EPS)
    tanh = eq01_ffn_sublayer(z, p, EPS, approximate="tanh")
    ref = layer_norm_formula(z + eq04_ffn(z, p["w_1"], p["b_1"], p["w_2"], p["b_2"], "tanh"),
                             p["ln2_w"], p["ln2_b"], EPS)
    torch.testing.assert_close(tanh, ref, rtol=0, atol=1e-10)
    assert (tanh - exact).abs().max() > 1e-6


def test_eq01_sublayer_dropout_only_in_training():
    gen = torch.Generator().manual_seed(5)
    p = layer_params(gen, 6, 7)
    h = randn(gen, 2, 4, 6)
    z_eval, _ = eq01_attention_sublayer(h, p, 2, EPS, None, hidden_dropout_p=0.3, attn_dropout_p=0.3)
    z_ref, _ = eq01_attention_sublayer(h, p, 2, EPS, None)
    assert torch.equal(z_eval, z_ref)
    torch.manual_seed(0)
    z_train, _ = eq01_attention_sublayer(h, p, 2, EPS, None, hidden_dropout_p=0.3, attn_dropout_p=0.3,
                                         training=True)
    assert (z_train - z_ref).abs().max() > 1e-3
    f_eval = eq01_ffn_sublayer(z_ref, p, EPS, hidden_dropout_p=0.3)
    assert torch.equal(f_eval, eq01_ffn_sublayer(z_ref, p, EPS))
    assert (eq01_ffn_sublayer(z_ref, p, EPS, hidden_dropout_p=0.3, training=True) - f_eval).abs().max() > 1e-3


# ----------------------------------------------------------------------------- properties of a layer
@given(layer_case(), st.integers(1, 4))
def test_eq01_padding_never_changes_real_tokens(case, n_pad):
    """Append n_pad random tokens with mask 0: every real position's output is unchanged."""
    B, T, H, dh, I, seed, lengths = case
    D = H * dh
    gen = torch.Generator().manual_seed(seed)
    p = layer_params(gen, D, I)
    h = randn(gen, B, T, D)                                                  # (B, T, D)
    mask = tail_mask(lengths, T)                                             # (B, T)
    out, probs = run_layer(h, p, H, mask)
    h_pad = torch.cat([h, randn(gen, B, n_pad, D, scale=5.0)], dim=1)       # (B, T + P, D)
    mask_pad = torch.cat([mask, torch.zeros(B, n_pad, dtype=torch.long)], dim=1)
    out_pad, probs_pad = run_layer(h_pad, p, H, mask_pad)
    real = mask.bool()                                                       # (B, T)
    torch.testing.assert_close(out_pad[:, :T][real], out[real], rtol=0, atol=1e-12)
    torch.testing.assert_close(probs_pad[..., :T, :T], probs, rtol=0, atol=1e-12)
    assert bool((probs_pad[..., T:] == 0).all())


@given(layer_case())
def test_eq01_batch_equals_one_sample_at_a_time(case):
    B, T, H, dh, I, seed, lengths = case
    D = H * dh
    gen = torch.Generator().manual_seed(seed)
    p = layer_params(gen, D, I)
    h = randn(gen, B, T, D)
    mask = tail_mask(lengths, T)
    out, probs = run_layer(h, p, H, mask)
    for b, n in enumerate(lengths):
        # alone and unpadded: only its n real tokens
        out_b, probs_b = run_layer(h[b:b + 1, :n], p, H, torch.ones(1, n, dtype=torch.long))
        torch.testing.assert_close(out[b, :n], out_b[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(probs[b, :, :n, :n], probs_b[0], rtol=0, atol=1e-12)


@given(layer_case())
def test_eq01_permuting_tokens_permutes_the_output(case):
    """A layer has no position information: permuting the real tokens of each sample (padding stays
    at the tail) permutes the output rows and the attention rows and columns the same way."""
    B, T, H, dh, I, seed, lengths = case
    D = H * dh
    gen = torch.Generator().manual_seed(seed)
    p = layer_params(gen, D, I)
    h = randn(gen, B, T, D)
    mask = tail_mask(lengths, T)
    perm = torch.stack([torch.cat([torch.randperm(n, generator=gen), torch.arange(n, T)])
                        for n in lengths])                                   # (B, T)
    out, probs = run_layer(h, p, H, mask)
    h_perm = torch.gather(h, 1, perm[:, :, None].expand(B, T, D))           # (B, T, D)
    out_perm, probs_perm = run_layer(h_perm, p, H, mask)
    torch.testing.assert_close(out_perm, torch.gather(out, 1, perm[:, :, None].expand(B, T, D)),
                               rtol=0, atol=1e-12)
    rows = torch.gather(probs, 2, perm[:, None, :, None].expand(B, H, T, T))     # permute queries
    both = torch.gather(rows, 3, perm[:, None, None, :].expand(B, H, T, T))      # and keys
    torch.testing.assert_close(probs_perm, both, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- gradcheck
NAMES_ATTN = ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o", "ln1_w", "ln1_b")
NAMES_FFN = ("w_1", "b_1", "w_2", "b_2", "ln2_w", "ln2_b")


def test_gradcheck_attention_sublayer():
    gen = torch.Generator().manual_seed(1)
    H, D, I = 2, 6, 5
    p = layer_params(gen, D, I)
    h = randn(gen, 2, 4, D)
    bias = attention_mask_bias(torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), F64)

    def f(h, *tensors):
        z_tilde, probs = eq01_attention_sublayer(h, dict(zip(NAMES_ATTN, tensors)), H, EPS, bias)
        return z_tilde, probs

    inputs = (h, *(p[n] for n in NAMES_ATTN))
    inputs = tuple(t.clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_gradcheck_ffn_sublayer():
    gen = torch.Generator().manual_seed(2)
    D, I = 4, 7
    p = layer_params(gen, D, I)
    z = randn(gen, 2, 3, D)

    def f(z, *tensors):
        return eq01_ffn_sublayer(z, dict(zip(NAMES_FFN, tensors)), EPS)

    inputs = tuple(t.clone().requires_grad_(True) for t in (z, *(p[n] for n in NAMES_FFN)))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
