"""The baselines' defining equations (mpee_ref/baselines): hand examples small enough to check on
paper, Hypothesis properties, and equivalences with the MPEE functions they reuse."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpee_ref.baselines import (baseline_sample_flops, deebert_loss, fastbert_distill_loss,
                                fastbert_uncertainty, pabee_patience_step, pabee_should_exit,
                                pabee_weighted_loss, power_significance)
from mpee_ref.config import BertConfig
from mpee_ref.encoder.equations import attention_mask_bias
from mpee_ref.flops import eq15_layer_flops, head_flops, sample_flops
from mpee_ref.layer_exit import exit_entropy
from mpee_ref.token_exit import all_token_attention

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
LN3 = math.log(3.0)


# ----------------------------------------------------------------------------- FastBERT
def test_fastbert_uncertainty_hand_example():
    # logits [ln 3, 0] -> p = (0.75, 0.25); H = 0.75 ln(4/3) + 0.25 ln 4 = 0.562335 nats; / ln 2 = 0.811278
    u = fastbert_uncertainty(torch.tensor([[LN3, 0.0], [0.0, 0.0], [1000.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(u, torch.tensor([0.811278124459, 1.0, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-10)


@SETTINGS
@given(st.integers(1, 4), st.integers(2, 6), st.integers(0, 10 ** 6), st.floats(-50, 50))
def test_fastbert_uncertainty_is_normalised_entropy(B, C, seed, shift):
    logits = torch.randn(B, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 4
    u = fastbert_uncertainty(logits)
    assert bool(((u >= -1e-12) & (u <= 1 + 1e-12)).all())
    torch.testing.assert_close(u, exit_entropy(logits) / math.log(C))
    torch.testing.assert_close(fastbert_uncertainty(logits + shift), u)       # softmax is shift-invariant


def test_fastbert_distill_hand_example():
    # student p_s = (0.75, 0.25), teacher p_t = (0.5, 0.5):
    # KL(s||t) = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812; KL(t||s) = 0.5 ln(2/3) + 0.5 ln 2 = 0.143841
    s = torch.tensor([[[LN3, 0.0]], [[0.0, 0.0]]], dtype=torch.float64)       # (S=2, B=1, C=2)
    t = torch.tensor([[0.0, 0.0]], dtype=torch.float64)                        # (B, C)
    torch.testing.assert_close(fastbert_distill_loss(s, t),
                               torch.tensor([0.130812035, 0.0], dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(fastbert_distill_loss(s, t, "teacher_student"),
                               torch.tensor([0.143841036, 0.0], dtype=torch.float64), rtol=0, atol=1e-9)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 3), st.integers(2, 5), st.integers(0, 10 ** 6))
def test_fastbert_distill_nonnegative_and_teacher_is_constant(S, B, C, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(S, B, C, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, C, generator=g, dtype=torch.float64, requires_grad=True)
    kl = fastbert_distill_loss(s, t)
    assert kl.shape == (S,) and bool((kl >= -1e-12).all())
    kl.sum().backward()
    assert t.grad is None                                                      # p_t is a constant
    same = fastbert_distill_loss(t.detach().expand(S, B, C), t)
    torch.testing.assert_close(same, torch.zeros(S, dtype=torch.float64), rtol=0, atol=1e-12)


def test_fastbert_distill_gradcheck():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    for direction in ("student_teacher", "teacher_student"):
        assert torch.autograd.gradcheck(lambda x: fastbert_distill_loss(x, t, direction), (s,))


# ----------------------------------------------------------------------------- DeeBERT
def test_deebert_loss_hand_example():
    ce = torch.tensor([0.5, 1.25, 2.0])
    assert float(deebert_loss(ce, "backbone")) == 2.0                          # L_n
    assert float(deebert_loss(ce, "ramps")) == 1.75                            # L_1 + L_2
    with pytest.raises(ValueError, match="stage must be one of"):
        deebert_loss(ce, "joint")
    with pytest.raises(ValueError, match="L >= 2"):
        deebert_loss(torch.tensor([1.0]), "ramps")


# ----------------------------------------------------------------------------- PABEE
def test_pabee_weighted_loss_hand_example():
    # (1*1 + 2*2 + 3*3) / (1 + 2 + 3) = 14 / 6
    loss = pabee_weighted_loss(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert float(loss) == pytest.approx(14 / 6, abs=1e-15)


def test_pabee_weighted_loss_gradcheck():
    x = torch.tensor([0.3, 1.2, 0.7, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pabee_weighted_loss, (x,))
    pabee_weighted_loss(x).backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) / 10)


@SETTINGS
@given(st.lists(st.floats(0, 20), min_size=1, max_size=12))
def test_pabee_weighted_loss_is_a_weighted_mean(losses):
    x = torch.tensor(losses, dtype=torch.float64)
    v = float(pabee_weighted_loss(x))
    assert min(losses) - 1e-9 <= v <= max(losses) + 1e-9
    n = len(losses)
    assert v == pytest.approx(sum((j + 1) * l for j, l in enumerate(losses)) / (n * (n + 1) / 2), abs=1e-9)


def test_pabee_patience_hand_sequence():
    # predictions of one sample over 5 layers: 0 0 1 1 1 -> counters 0 1 0 1 2; patience 2 fires at layer 5
    preds = [torch.tensor([p]) for p in (0, 0, 1, 1, 1)]
    count, prev, counts = None, None, []
    for p in preds:
        count = pabee_patience_step(count, prev, p)
        prev = p
        counts.append(int(count))
    assert counts == [0, 1, 0, 1, 2]
    assert [bool(pabee_should_exit(torch.tensor([c]), 2)) for c in counts] == [False] * 4 + [True]
    with pytest.raises(ValueError, match="patience must be an int >= 1"):
        pabee_should_exit(torch.tensor([0]), 0)


@SETTINGS
@given(st.lists(st.lists(st.integers(0, 2), min_size=4, max_size=4), min_size=1, max_size=8))
def test_pabee_counter_is_the_run_length_of_unchanged_predictions(rows):
    preds = torch.tensor(rows).T                                               # (B=4, layers)
    count, prev = None, None
    for i in range(preds.shape[1]):
        count = pabee_patience_step(count, prev, preds[:, i])
        prev = preds[:, i]
        for b in range(4):                                                     # reference: run length - 1
            run = 0
            while run < i and int(preds[b, i - run - 1]) == int(preds[b, i]):
                run += 1
            assert int(count[b]) == run


# ----------------------------------------------------------------------------- PoWER-BERT
def test_power_significance_hand_example():
    # one head, three tokens; rows are queries, columns keys
    p = torch.tensor([[[[0.5, 0.3, 0.2],
                        [0.1, 0.6, 0.3],
                        [0.2, 0.4, 0.4]]]], dtype=torch.float64)              # (1, 1, 3, 3)
    # column sums (keys 1, 2): 0.3+0.6+0.4 = 1.3, 0.2+0.3+0.4 = 0.9
    torch.testing.assert_close(power_significance(p), torch.tensor([[1.3, 0.9]], dtype=torch.float64))
    # token 2 padded: only queries 0, 1 count (0.3 + 0.6 = 0.9); the padded key gets 0
    torch.testing.assert_close(power_significance(p, torch.tensor([[1, 1, 0]])),
                               torch.tensor([[0.9, 0.0]], dtype=torch.float64))


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(2, 7), st.integers(0, 10 ** 6))
def test_power_significance_sums_and_ranks_like_all_token_attention(B, H, T, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()                # (B, T) right-padded
    bias = attention_mask_bias(mask, torch.float64)                            # (B, 1, 1, T)
    probs = torch.softmax(torch.randn(B, H, T, T, generator=g, dtype=torch.float64) + bias, dim=-1)
    sig = power_significance(probs, mask)                                      # (B, T-1)
    n = lengths.to(torch.float64)
    # with [CLS]'s own column, each sample's significance sums to H * n (every real query row sums to 1)
    cls_col = (probs[:, :, :, 0] * mask[:, None, :]).sum(dim=(1, 2))           # (B,)
    torch.testing.assert_close(sig.sum(1) + cls_col, H * n)
    # = MPEE's Table 3 all-token attention times the per-sample constant H * n: same ranking
    torch.testing.assert_close(sig, all_token_attention(probs, mask) * (H * n)[:, None])


# ----------------------------------------------------------------------------- FLOPs (Eq. 15)
TINY = BertConfig(vocab_size=11, hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=8, max_position_embeddings=8)


def test_baseline_flops_hand_example():
    # D = 4, F = 8, C = 2, n = 3. layer(3, 3) = 4*2*3*16 + 2*9*4 + 2*9*4 + 2*2*3*4*8 = 384+72+72+384 = 912;
    # pooler head = 2*16 + 2*4*2 = 48; full = 2*912 + 48 = 1872.
    static = baseline_sample_flops([3], [3], 3, [1], TINY, 2)                  # one layer, one head
    assert (static.executed, static.full, static.per_layer) == (960, 1872, (960,))
    # PoWER-BERT: layer 1 keeps 2 tokens for its FFN, layer 2 keeps 1:
    # layer(3, 2) = 384+72+72+256 = 784; layer(2, 1) = 256+32+32+128 = 448; one head after layer 2
    power = baseline_sample_flops([3, 2], [2, 1], 3, [2], TINY, 2)
    assert (power.executed, power.full, power.per_layer) == (784 + 448 + 48, 1872, (784, 448 + 48))
    assert eq15_layer_flops(3, 2, 4, 8) == 784 and head_flops(4, 2) == 48


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5), st.sampled_from(["pooler", "tanh"]))
def test_baseline_flops_with_a_head_per_layer_equal_mpee_counting(n, L, e, head):
    """A classifier after every executed layer and no elimination: exactly MPEE's sample_flops."""
    e = min(e, L)
    bert = BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=L, num_attention_heads=2,
                      intermediate_size=13, max_position_embeddings=8)
    ours = baseline_sample_flops([n] * e, [n] * e, n, range(1, L + 1), bert, 3, head)
    mpee = sample_flops([n] * e, [n] * e, [0] * e, n, L, 8, 13, 3, head)
    assert ours == mpee
    one_head = baseline_sample_flops([n] * L, [n] * L, n, [L], bert, 3, head)
    assert one_head.executed == one_head.full                                   # nothing skipped: rho = 1
