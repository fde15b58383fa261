"""Eq. (15): FLOPs accounting and the acceleration ratio rho (mpee_ref/flops/equations.py).

The oracle is ``torch.utils.flop_counter.FlopCounterMode`` on the reference encoder: our closed forms
must equal what it counts for the matrix products actually executed, to the FLOP.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as nnf
from hypothesis import example, given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from mpee_ref.config import BertConfig
from mpee_ref.encoder import BertEncoder
from mpee_ref.flops import (SampleFlops, authors_layer_macs, authors_padded_lengths, authors_sample_flops,
                            eq15_layer_flops, eq15_speedup, full_model_flops, fusion_flops, head_flops,
                            sample_flops)

# Tiny config with pairwise-distinct sizes: V 99, D 32, H 4, I 37 (FFN), L 3, C 3.
V, D, H, FF, L, C = 99, 32, 4, 37, 3, 3
HEADS = ("pooler", "tanh")


def flops_of(fn) -> int:
    """Total FLOPs FlopCounterMode counts while running ``fn()``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def encoder() -> BertEncoder:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=V, hidden_size=D, num_attention_heads=H, intermediate_size=FF,
                     num_hidden_layers=L)
    return BertEncoder(cfg).eval().double()


def make_head(kind: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    w = {"w2": torch.randn(C, D, generator=gen, dtype=torch.float64), "b2": torch.zeros(C, dtype=torch.float64)}
    if kind == "pooler":
        w |= {"w1": torch.randn(D, D, generator=gen, dtype=torch.float64), "b1": torch.zeros(D, dtype=torch.float64)}
    return w


def run_head(kind: str, w: dict[str, torch.Tensor], cls: torch.Tensor) -> torch.Tensor:
    """Eq. (9) heads: pooler = Linear D->D, tanh, Linear D->C; tanh = Linear D->C, tanh."""
    if kind == "pooler":
        return nnf.linear(torch.tanh(nnf.linear(cls, w["w1"], w["b1"])), w["w2"], w["b2"])   # (B, C)
    return torch.tanh(nnf.linear(cls, w["w2"], w["b2"]))                                     # (B, C)


# ----------------------------------------------------------------------------- hand example
def test_eq15_hand_example():
    # D=4, I=8 (FFN), n=3, C=2.
    # layer(3,3): Q,K,V,O 4*(2*3*16)=384; QK^T 2*9*4=72; PV 72; FFN 2*(2*3*4*8)=384 -> 912.
    # layer(3,2): 384 + 144 + 2*(2*2*4*8)=256 -> 784.   layer(2,2): 4*(2*2*16)=256 + 2*(2*4*4)=64 + 256 -> 576.
    # pooler head: 2*16 + 2*4*2 = 48; tanh head: 2*4*2 = 16.   fusing p=2 tokens: 2*2*4 = 16.
    assert eq15_layer_flops(3, 3, 4, 8) == 912
    assert eq15_layer_flops(3, 2, 4, 8) == 784
    assert eq15_layer_flops(2, 2, 4, 8) == 576
    assert head_flops(4, 2, "pooler") == 48
    assert head_flops(4, 2, "tanh") == 16
    assert fusion_flops(2, 4) == 16 and fusion_flops(0, 4) == 0
    # full, L=2: 2*912 + 48 = 1872.
    assert full_model_flops(3, 2, 4, 8, 2) == 1872
    assert full_model_flops(3, 2, 4, 8, 2, "tanh") == 2 * 912 + 16
    # run: layer 1 fuses 2 of the 2 non-CLS tokens into one (3 -> 2 tokens), layer 2 unpruned, exit at 2:
    # layer 1 = 784 + 16 + 48 = 848; layer 2 = 576 + 48 = 624; executed = 1472.
    s = sample_flops([3, 2], [2, 2], [2, 0], 3, 2, 4, 8, 2)
    assert s == SampleFlops(executed=1472, full=1872, per_layer=(848, 624))
    assert eq15_speedup([s.full], [s.executed]) == pytest.approx(1872 / 1472, rel=1e-15)
    # same run, exit at layer 1: executed 848.
    assert sample_flops([3], [2], [2], 3, 2, 4, 8, 2).executed == 848
    # heads left out: 784 + 16 + 576 = 1376 vs 2*912 = 1824.
    s0 = sample_flops([3, 2], [2, 2], [2, 0], 3, 2, 4, 8, 2, count_heads=False)
    assert (s0.executed, s0.full, s0.per_layer) == (1376, 1824, (800, 576))


# ----------------------------------------------------------------------------- FlopCounterMode oracle
@pytest.mark.parametrize("n_att,n_ffn", [(1, 1), (5, 5), (7, 3), (9, 2), (12, 12), (12, 7)])
def test_eq15_layer_flops_equal_flop_counter(encoder, n_att, n_ffn):
    layer = encoder.layers[1]
    h = torch.randn(1, n_att, D, dtype=torch.float64)          # (1, T, D)

    def run():
        z, _ = layer.attention_sublayer(h, None)                 # (1, T, D)
        layer.ffn_sublayer(z[:, :n_ffn])                         # (1, T', D)

    assert flops_of(run) == eq15_layer_flops(n_att, n_ffn, D, FF)


@pytest.mark.parametrize("n", [1, 6, 11])
def test_eq15_full_encoder_forward_is_L_layers(encoder, n):
    ids = torch.randint(0, V, (1, n), generator=torch.Generator().manual_seed(n))   # (1, n)
    counted = flops_of(lambda: encoder(ids))
    assert counted == L * eq15_layer_flops(n, n, D, FF)           # embeddings add nothing
    assert counted == full_model_flops(n, L, D, FF, C, count_heads=False)


@pytest.mark.parametrize("kind", HEADS)
def test_eq09_head_flops_equal_flop_counter(kind):
    w = make_head(kind, torch.Generator().manual_seed(1))
    cls = torch.randn(1, D, dtype=torch.float64)                 # (1, D)
    assert flops_of(lambda: run_head(kind, w, cls)) == head_flops(D, C, kind)


@pytest.mark.parametrize("p", [1, 2, 5])
def test_eq08_fusion_flops_equal_flop_counter(p):
    tokens = torch.randn(p, D, dtype=torch.float64)              # (p, D): the pruned tokens
    alpha = torch.rand(p, dtype=torch.float64)                   # (p,)
    assert flops_of(lambda: alpha[None, :] @ tokens) == fusion_flops(p, D)


def simulate_run(encoder, ids, kind, w, prune: dict[int, int], exit_layer: int):
    """A pruned, early-exiting run at batch 1; returns (n_att, n_ffn, num_fused).

    At 0-based layer l in ``prune``, keep ``prune[l]`` non-CLS tokens by [CLS] attention and fuse the
    rest into one token (Eq. 8); every executed layer evaluates its exit head (Eq. 9).
    """
    n_att, n_ffn, fused = [], [], []
    h = encoder.embeddings(ids, torch.zeros_like(ids))           # (1, T, D)
    for l, layer in enumerate(encoder.layers[:exit_layer]):
        T = h.shape[1]
        z, probs = layer.attention_sublayer(h, None)             # (1, T, D), (1, H, T, T)
        p = 0
        if l in prune:
            score = probs[0, :, 0, 1:].mean(0)                   # (T-1,)
            order = torch.argsort(score, descending=True) + 1    # (T-1,) token positions
            keep, rest = order[:prune[l]], order[prune[l]:]
            p = len(rest)
            fused_tok = score[rest - 1][None, :] @ z[0, rest]    # (1, D): sum_i alpha_i h_i
            z = torch.cat([z[:, :1], z[:, keep], fused_tok[None]], dim=1)   # (1, T', D)
        h = layer.ffn_sublayer(z)                                # (1, T', D)
        run_head(kind, w, h[:, 0])                               # (1, C)
        n_att.append(T), n_ffn.append(h.shape[1]), fused.append(p)
    return n_att, n_ffn, fused


@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("prune,exit_layer", [({}, 3), ({0: 4, 1: 4}, 2), ({1: 2}, 3), ({0: 7}, 1)])
def test_eq15_sample_flops_equal_flop_counter_on_a_run(encoder, kind, prune, exit_layer):
    n = 9
    ids = torch.randint(0, V, (1, n), generator=torch.Generator().manual_seed(3))   # (1, n)
    w = make_head(kind, torch.Generator().manual_seed(4))
    record = {}

    def run():
        record["counts"] = simulate_run(encoder, ids, kind, w, prune, exit_layer)

    executed = flops_of(run)
    full = flops_of(lambda: run_head(kind, w, encoder(ids).last_hidden_state[:, 0]))
    s = sample_flops(*record["counts"], n, L, D, FF, C, kind)
    assert (s.executed, s.full) == (executed, full)
    assert len(s.per_layer) == exit_layer


# ----------------------------------------------------------------------------- properties
@st.composite
def runs(draw):
    """A valid run: sizes, exit layer e <= L, and per-layer (n_att, n_ffn, p) that chain."""
    Ls = draw(st.integers(1, 6))
    e = draw(st.integers(1, Ls))
    n = draw(st.integers(1, 30))
    Dd, Fi, Cc = draw(st.integers(1, 12)), draw(st.integers(2, 40)), draw(st.integers(1, 5))
    head = draw(st.sampled_from(HEADS))
    att, ffn, fused, cur = [], [], [], n
    for _ in range(e):
        att.append(cur)
        p = draw(st.integers(0, cur - 1))
        cur = draw(st.integers(1, cur - p + 1 if p else cur))
        ffn.append(cur), fused.append(p)
    return dict(n_att=att, n_ffn=ffn, num_fused=fused, n_tokens=n, num_layers=Ls, hidden=Dd,
                intermediate=Fi, num_labels=Cc, head=head)


def _run(att, ffn, fused, n, Ls):
    return dict(n_att=att, n_ffn=ffn, num_fused=fused, n_tokens=n, num_layers=Ls, hidden=6,
                intermediate=10, num_labels=3, head="pooler")


@given(runs())
@example(_run([5] * 3, [5] * 3, [0] * 3, 5, 3))           # nothing pruned, no exit: equality
@example(_run([5] * 3, [5] * 3, [1, 0, 1], 5, 3))         # two 1-token fusions, no token leaves: equality
@example(_run([5] * 3, [5, 5, 4], [0, 0, 0], 5, 3))       # one token dropped at the last FFN: strict
@example(_run([5] * 2, [5] * 2, [0] * 2, 5, 3))           # exit one layer early: strict
def test_eq15_executed_bound_and_its_equality_case(r):
    # executed <= full + (e-1)*head + 2D*k1 (k1 = layers fusing one token), equality iff e = L and no
    # token ever leaves the sequence (needs I >= 2, which runs() guarantees).
    s = sample_flops(**r)
    e, hd = len(r["n_att"]), head_flops(r["hidden"], r["num_labels"], r["head"])
    k1 = sum(p == 1 for p in r["num_fused"])
    bound = s.full + (e - 1) * hd + 2 * r["hidden"] * k1
    assert s.executed <= bound
    untouched = e == r["num_layers"] and set(r["n_att"]) | set(r["n_ffn"]) == {r["n_tokens"]}
    assert (s.executed == bound) == untouched
    assert sum(s.per_layer) == s.executed
    # heads left out: the same bound without the head term
    s0 = sample_flops(**r, count_heads=False)
    assert s0.executed <= s0.full + 2 * r["hidden"] * k1
    assert s.executed - s0.executed == e * hd and s.full - s0.full == hd


@given(runs())
def test_eq15_earlier_exit_never_costs_more(r):
    s = sample_flops(**r)
    for k in range(1, len(r["n_att"])):
        cut = {**r, "n_att": r["n_att"][:k], "n_ffn": r["n_ffn"][:k], "num_fused": r["num_fused"][:k]}
        s_k = sample_flops(**cut)
        assert s_k.executed == sum(s.per_layer[:k]) < s.executed
        assert s_k.full == s.full


@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 30), st.integers(1, 30),
       st.integers(1, 16), st.integers(1, 40))
def test_eq15_layer_flops_monotone_in_tokens(a1, f1, a2, f2, Dd, Fi):
    f1, f2 = min(f1, a1), min(f2, a2)
    if a1 <= a2 and f1 <= f2:
        assert eq15_layer_flops(a1, f1, Dd, Fi) <= eq15_layer_flops(a2, f2, Dd, Fi)
    if (a1, f1) != (a2, f2) and a1 <= a2 and f1 <= f2:
        assert eq15_layer_flops(a1, f1, Dd, Fi) < eq15_layer_flops(a2, f2, Dd, Fi)


@given(st.integers(1, 30), st.integers(1, 6), st.data())
def test_eq15_dropping_more_tokens_never_costs_more(n, Ls, data):
    # Two runs without fusion on the same input; the second keeps at most `cap` tokens after layer 1's MHSA.
    e = data.draw(st.integers(1, Ls))
    att, ffn, cur = [], [], n
    for _ in range(e):
        att.append(cur)
        cur = data.draw(st.integers(1, cur))
        ffn.append(cur)
    cap = data.draw(st.integers(1, n))
    ffn2 = [min(f, cap) for f in ffn]
    att2 = [n] + ffn2[:-1]
    a = sample_flops(att, ffn, [0] * e, n, Ls, 8, 20, 2)
    b = sample_flops(att2, ffn2, [0] * e, n, Ls, 8, 20, 2)
    assert b.executed <= a.executed and b.full == a.full
    assert (b.executed == a.executed) == (ffn2 == ffn)


@given(st.integers(1, 40), st.integers(1, 12), st.sampled_from(HEADS))
def test_eq15_no_pruning_no_exit(n, Ls, head):
    # count_heads=False: rho = 1 exactly. Default: L heads vs the baseline's 1, rho < 1 when L > 1.
    run = dict(n_att=[n] * Ls, n_ffn=[n] * Ls, num_fused=[0] * Ls, n_tokens=n, num_layers=Ls,
               hidden=8, intermediate=20, num_labels=3, head=head)
    s0 = sample_flops(**run, count_heads=False)
    assert s0.executed == s0.full and eq15_speedup([s0.full], [s0.executed]) == 1.0
    s = sample_flops(**run)
    layer, hd = eq15_layer_flops(n, n, 8, 20), head_flops(8, 3, head)
    assert (s.executed, s.full) == (Ls * (layer + hd), Ls * layer + hd)
    assert (eq15_speedup([s.full], [s.executed]) < 1.0) == (Ls > 1)


@given(st.lists(st.integers(1, 10**15), min_size=1, max_size=20))
def test_eq15_speedup_of_identical_lists_is_one(xs):
    assert eq15_speedup(xs, xs) == 1.0


def test_eq15_speedup_is_a_ratio_of_sums():
    # (10 + 30) / (5 + 30) = 8/7, not the mean of per-sample ratios (2 + 1) / 2 = 1.5
    assert eq15_speedup([10, 30], [5, 30]) == 8 / 7
    # exact on integers far beyond float precision
    assert eq15_speedup([3 * 10**30 + 1], [10**30]) == 3.0


# ----------------------------------------------------------------------------- authors' convention
def test_authors_hand_example():
    # D=4, n=3: 2*4*9 + 4*16*3 + 8*16*3 = 72 + 192 + 384 = 648 MACs.
    assert authors_layer_macs(3, 3, 4) == 648
    # max_len 11, L=3, prune at layer 2, keep 0.7: kept = ceil(0.7*10) = 7 -> 7 + CLS + fused = 9 tokens.
    assert authors_padded_lengths(3, (2,), 0.7, 3, max_len=11) == ((11, 11, 9), (11, 9, 9))
    # macs(n, f) = 8n^2 + 64n + 128f at D=4: (11,11) 3080, (11,9) 2824, (9,9) 2376.
    assert authors_sample_flops(3, (2,), 0.7, 3, 4, max_len=11) == SampleFlops(
        executed=3080 + 2824 + 2376, full=3 * 3080, per_layer=(3080, 2824, 2376))
    assert authors_sample_flops(1, (2,), 0.7, 3, 4, max_len=11) == SampleFlops(3080, 3 * 3080, (3080,))


def test_authors_bert_base_numbers():
    # 128 -> ceil(0.7*127)+2 = 91 -> ceil(0.7*90)+2 = 65 -> ceil(0.7*64)+2 = 47 at layers 4, 7, 10.
    att, ffn = authors_padded_lengths(12, (4, 7, 10), 0.7, 12)
    assert att == (128,) * 4 + (91,) * 3 + (65,) * 3 + (47,) * 2
    assert ffn == (128,) * 3 + (91,) * 3 + (65,) * 3 + (47,) * 3
    D2 = 768 * 768
    macs = lambda a, f: 2 * 768 * a * a + 4 * D2 * a + 8 * D2 * f   # noqa: E731
    full = 12 * macs(128, 128)
    assert full == 11_173_625_856
    executed = (3 * macs(128, 128) + macs(128, 91) + 2 * macs(91, 91) + macs(91, 65) + 2 * macs(65, 65)
                + macs(65, 47) + 2 * macs(47, 47))
    f = authors_sample_flops(12, (4, 7, 10), 0.7, 12, 768)
    assert (f.executed, f.full, sum(f.per_layer)) == (executed, full, executed)
    assert executed == 7_384_522_752       # rho = 1.513 with pruning alone, no early exit


@given(runs())
def test_authors_convention_is_half_ours_without_heads_and_fusion(r):
    # With I = 4D and no fusion/heads, our FLOPs are exactly 2 x the authors' MACs.
    r = {**r, "intermediate": 4 * r["hidden"]}
    a = sample_flops(**r, convention="authors")
    ours = [eq15_layer_flops(x, y, r["hidden"], r["intermediate"]) for x, y in zip(r["n_att"], r["n_ffn"])]
    assert [2 * m for m in a.per_layer] == ours
    assert 2 * a.full == full_model_flops(r["n_tokens"], r["num_layers"], r["hidden"], r["intermediate"],
                                          r["num_labels"], count_heads=False)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,match", [
    (lambda: eq15_layer_flops(3, 4, 4, 8), r"n_ffn \(4\) must be <= n_att \(3\)"),
    (lambda: eq15_layer_flops(0, 0, 4, 8), r"n_att must be an int >= 1, got 0"),
    (lambda: eq15_layer_flops(3, 3, 4.0, 8), r"hidden must be an int"),
    (lambda: head_flops(4, 2, "mlp"), r"head must be one of"),
    (lambda: fusion_flops(-1, 4), r"num_fused must be an int >= 0, got -1"),
    (lambda: sample_flops([3, 2], [2], [0, 0], 3, 2, 4, 8, 2), r"same length"),
    (lambda: sample_flops([3, 3, 3], [3, 3, 3], [0, 0, 0], 3, 2, 4, 8, 2), r"must be in \[1, num_layers = 2\]"),
    (lambda: sample_flops([4], [4], [0], 3, 2, 4, 8, 2), r"n_att\[0\] \(4\) must equal n_tokens \(3\)"),
    (lambda: sample_flops([3, 3], [2, 2], [0, 0], 3, 2, 4, 8, 2), r"n_att\[1\] \(3\) must equal n_ffn\[0\] \(2\)"),
    (lambda: sample_flops([3], [3], [3], 3, 2, 4, 8, 2), r"\[CLS\] is never fused"),
    (lambda: sample_flops([5], [5], [2], 5, 2, 4, 8, 2), r"n_ffn\[0\] \(5\) must be <= .* \(4\)"),
    (lambda: sample_flops([3], [3], [0], 3, 2, 4, 8, 2, convention="x"), r"convention must be one of"),
    (lambda: eq15_speedup([1, 2], [1]), r"same length"),
    (lambda: eq15_speedup([], []), r"empty"),
    (lambda: eq15_speedup([1], [0]), r"sum\(executed\) is 0"),
    (lambda: authors_sample_flops(13, (4,), 0.7, 12, 768), r"exit_layer \(13\) must be <= num_layers \(12\)"),
    (lambda: authors_sample_flops(12, (4, 4), 0.7, 12, 768), r"prune_layers must be distinct"),
    (lambda: authors_sample_flops(12, (4,), 0.0, 12, 768), r"keep_ratio must be in \(0, 1\]"),
])
def test_eq15_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_eq15_numbers_are_exact_python_ints():
    big = eq15_layer_flops(10**6, 10**6, 10**4, 4 * 10**4)
    assert isinstance(big, int)
    assert big == 8 * 10**6 * 10**8 + 4 * 10**12 * 10**4 + 4 * 10**6 * 10**4 * 4 * 10**4
    assert math.isclose(eq15_speedup([big, big], [big, big // 2]), 4 / 3)
