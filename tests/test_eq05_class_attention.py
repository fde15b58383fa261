"""Eq. (5), §3.1: class attention A_class^l, and Table 3's all-token attention."""
from __future__ import annotations

import torch
from hypothesis import given, strategies as st

from mpee_ref.encoder.equations import attention_mask_bias, eq03_attention
from mpee_ref.token_exit import all_token_attention, eq05_class_attention

D64 = torch.float64


def _filler(B: int, H: int, T: int) -> torch.Tensor:
    # distinct values everywhere so that reading a wrong row/axis changes the result
    return torch.arange(B * H * T * T, dtype=D64).reshape(B, H, T, T) / 1000.0 + 0.5


def test_eq05_hand_example_two_heads():
    # H = 2, T = 4 ([CLS] + 3 tokens). [CLS] query rows (keys CLS, x1, x2, x3):
    #   head 0: [0.1, 0.2, 0.3, 0.4]     head 1: [0.2, 0.5, 0.1, 0.2]
    # A_class = mean over heads of keys x1..x3 = [(0.2+0.5)/2, (0.3+0.1)/2, (0.4+0.2)/2] = [0.35, 0.2, 0.3]
    probs = _filler(1, 2, 4)
    probs[0, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D64)
    probs[0, 1, 0] = torch.tensor([0.2, 0.5, 0.1, 0.2], dtype=D64)
    a = eq05_class_attention(probs)
    torch.testing.assert_close(a, torch.tensor([[0.35, 0.2, 0.3]], dtype=D64))


def test_eq05_padded_keys_are_zero_even_if_probs_are_not():
    # sample 0 has 2 real non-CLS tokens, sample 1 has 1; the filler puts non-zero mass on padded keys
    probs = _filler(2, 3, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    a = eq05_class_attention(probs, mask)
    want = probs[:, :, 0, 1:].mean(1) * mask[:, 1:]
    torch.testing.assert_close(a, want)
    assert a[0, 2] == 0 and a[1, 1] == 0 and a[1, 2] == 0 and a[1, 0] > 0


def test_eq05_second_line_h_cls_is_v_times_a_class():
    # Eq. 5, second line, H = 1: the [CLS] output of Eq. (3) = V . A over all keys, so
    # context_CLS - p_CLS->CLS * v_CLS == A_class @ v[1:] (A_class covers the non-CLS keys only).
    g = torch.Generator().manual_seed(5)
    B, T, dh = 2, 5, 7
    q, k, v = (torch.randn(B, 1, T, dh, generator=g, dtype=D64) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    ctx, probs = eq03_attention(q, k, v, attention_mask_bias(mask, D64))
    a = eq05_class_attention(probs, mask)                                  # (B, T-1)
    lhs = ctx[:, 0, 0] - probs[:, 0, 0, 0, None] * v[:, 0, 0]              # (B, dh)
    rhs = torch.einsum("bn,bnd->bd", a, v[:, 0, 1:])
    torch.testing.assert_close(lhs, rhs)


def test_all_token_attention_hand_example():
    # H = 1, T = 3, mask [1, 1, 0]. Real query rows: q0 = [0.6, 0.4, 0], q1 = [0.3, 0.7, 0];
    # the padded query row q2 = [0.5, 0.5, 0] is ignored.
    # key x1 receives (0.4 + 0.7) / 2 = 0.55; key x2 is padding -> 0.
    probs = torch.tensor([[[[0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.5, 0.5, 0.0]]]], dtype=D64)
    a = all_token_attention(probs, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(a, torch.tensor([[0.55, 0.0]], dtype=D64))


def test_all_token_attention_padded_keys_are_zero_even_if_probs_are_not():
    # H = 1, T = 3, mask [1, 1, 0], rows that (wrongly) put mass on the padded key x2:
    # q0 = [0.5, 0.3, 0.2], q1 = [0.1, 0.6, 0.3] -> x1: (0.3 + 0.6) / 2 = 0.45, x2 (padding): 0
    probs = torch.tensor([[[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]]], dtype=D64)
    a = all_token_attention(probs, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(a, torch.tensor([[0.45, 0.0]], dtype=D64))


def test_all_token_attention_two_heads_no_mask():
    # H = 2, T = 2. head 0 rows [0.5, 0.5], [0.2, 0.8]; head 1 rows [0.9, 0.1], [0.4, 0.6].
    # key x1: head 0 (0.5+0.8)/2 = 0.65, head 1 (0.1+0.6)/2 = 0.35 -> mean 0.5
    probs = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]], [[0.9, 0.1], [0.4, 0.6]]]], dtype=D64)
    torch.testing.assert_close(all_token_attention(probs), torch.tensor([[0.5]], dtype=D64))


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.data())
def test_eq05_mass_accounts_for_cls_self_attention(B, H, T, data):
    # With probs from a masked softmax: Σ_i A_class[i] + mean_h p[CLS -> CLS] = 1,
    # and Σ over all keys (incl. CLS) of the all-token attention = 1.
    lengths = [data.draw(st.integers(1, T)) for _ in range(B)]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    seed = data.draw(st.integers(0, 2**16))
    logits = torch.randn(B, H, T, T, generator=torch.Generator().manual_seed(seed), dtype=D64) * 3
    probs = torch.softmax(logits + attention_mask_bias(mask, D64), dim=-1)
    a = eq05_class_attention(probs, mask)
    torch.testing.assert_close(a.sum(1) + probs[:, :, 0, 0].mean(1), torch.ones(B, dtype=D64))
    assert bool((a[mask[:, 1:] == 0] == 0).all())
    at = all_token_attention(probs, mask)
    n_real = mask.sum(1).to(D64)
    cls_received = (probs[:, :, :, 0] * mask[:, None, :]).sum(2).mean(1) / n_real
    torch.testing.assert_close(at.sum(1) + cls_received, torch.ones(B, dtype=D64))
    assert bool((at[mask[:, 1:] == 0] == 0).all())
