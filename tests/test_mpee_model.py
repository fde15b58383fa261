"""Model-level tests of MPEE (mpee_ref/mpee/model.py): equivalences between code paths, real
removal of exited tokens and samples, monotonicity of exits and FLOPs, the ablation switches.

Tiny config with pairwise-distinct sizes (vocab 99, hidden 32, heads 4, FFN 37, layers 5, C 3), in
float64 so that "equal" can mean equal to 1e-10.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpee_ref.config import BertConfig
from mpee_ref.encoder.equations import attention_mask_bias
from mpee_ref.layer_exit import exit_entropy
from mpee_ref.mpee import MPEEConfig, MPEEModel
from mpee_ref.mpee.model import PAD_CODE, fused_code, fused_layer, is_fused

L, C = 5, 3
BERT = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=L, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64)


def make_model(**overrides) -> MPEEModel:
    cfg = MPEEConfig(num_labels=C, prune_layers=(2, 4), **overrides)
    torch.manual_seed(0)
    model = MPEEModel(BERT, cfg).double().eval()
    # Larger weights than BERT's normal(0, 0.02) init, so that samples differ and entropies spread over
    # [0, ln C] (with the default init every sample's entropy is within 1e-3 of ln C).
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5, generator=g)
    return model


MODEL = make_model()


def batch(lengths=(13, 9, 5, 11), seed=1):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, 99, (len(lengths), T), generator=g)
    ids[:, 0] = 2  # a [CLS]-like id
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = ids * mask
    types = torch.zeros_like(ids)
    types[:, T // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}


def encoder_head_probs(model: MPEEModel, inputs, layer: int) -> torch.Tensor:
    """softmax(head_layer(BERT(x)^layer[CLS])) computed with the plain encoder (no MPEE wiring)."""
    out = model.bert(**inputs, output_hidden_states=True)
    return torch.softmax(model.exits[layer - 1](out.hidden_states[layer][:, 0]), -1)


# ----------------------------------------------------------------------------- equivalences
def test_nothing_exiting_reproduces_plain_bert_classifier():
    """R_ee = 0, a never-firing F and λ = 1: MPEE is exactly BERT + the last layer's classifier."""
    model = make_model(r_ee=0.0, threshold=0.0, lam=1.0)
    x = batch()
    out = model.infer(x, trace=True)
    ref = encoder_head_probs(model, x, L)                                   # (B, C)
    got = torch.tensor([s.probabilities for s in out.samples], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    assert out.exit_layers.tolist() == [L] * 4
    for s, n in zip(out.samples, (13, 9, 5, 11)):
        assert s.tokens_per_layer == (n,) * L
        assert all(t.positions == tuple(range(n)) and t.fused_positions == () for t in s.layers)


def test_training_forward_equals_inference_path():
    """forward() (masking, all layers) and infer() (removal) compute the same memories and entropies."""
    x = batch()
    model = make_model(threshold=0.0)                                       # nobody exits early
    train = model(**x)
    out = model.infer(x)
    for b, s in enumerate(out.samples):
        ent = exit_entropy(train.memories[:, b])                             # (L,)
        torch.testing.assert_close(torch.tensor(s.entropies, dtype=torch.float64), ent, rtol=0, atol=1e-10)
        torch.testing.assert_close(torch.tensor(s.probabilities, dtype=torch.float64),
                                   torch.softmax(train.memories[-1, b], -1), rtol=0, atol=1e-10)
        assert s.tokens_per_layer == tuple(train.tokens[:, b].tolist())


def _strip(s):
    return (s.prediction, s.exit_layer, [(t.positions, t.fused_positions, t.n_att, t.n_ffn) for t in s.layers],
            s.flops)


def test_batched_equals_one_at_a_time():
    x = batch()
    threshold = 0.2                          # with these weights: samples exit at layers 5, 2, 2, 5
    together = MODEL.infer(x, threshold=threshold, trace=True).samples
    assert len({s.exit_layer for s in together}) > 1, "the test needs samples exiting at different layers"
    assert any(sum(bool(t.fused_positions) for t in s.layers) >= 2 for s in together), "and pruning twice"
    for b, n in enumerate((13, 9, 5, 11)):
        alone = MODEL.infer({k: v[b:b + 1, :n] for k, v in x.items()}, threshold=threshold, trace=True).samples[0]
        assert _strip(alone) == _strip(together[b])
        torch.testing.assert_close(torch.tensor(alone.probabilities), torch.tensor(together[b].probabilities),
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(torch.tensor(alone.entropies), torch.tensor(together[b].entropies),
                                   rtol=0, atol=1e-12)


def test_padding_changes_nothing():
    x = batch()
    padded = {k: torch.cat([v, torch.zeros(v.shape[0], 7, dtype=v.dtype)], 1) for k, v in x.items()}
    a, b = MODEL.infer(x, trace=True).samples, MODEL.infer(padded, trace=True).samples
    assert [_strip(s) for s in a] == [_strip(s) for s in b]
    ta, tb = MODEL(**x), MODEL(**padded)
    torch.testing.assert_close(ta.memories, tb.memories, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- token exits
def test_pruning_layers_keep_ceil_n_times_one_minus_r_and_fuse_the_rest():
    model = make_model(r_ee=0.3, threshold=0.0)
    s = model.infer(batch(lengths=(13,)), trace=True).samples[0]
    n_ffn = s.tokens_per_layer
    # layer 2: N = 12 non-CLS tokens -> m = ceil(12 * 0.7) = 9 kept, 3 fused into one token: 1 + 9 + 1 = 11
    assert n_ffn[0] == 13 and n_ffn[1] == 11
    # layer 4: N = 10 (incl. the fused token) -> m = ceil(7.0) = 7 kept, 3 fused: 1 + 7 + 1 = 9
    assert n_ffn[2] == 11 and n_ffn[3] == 9 and n_ffn[4] == 9
    l2, l4 = s.layers[1], s.layers[3]
    assert len(l2.fused_positions) == 3 and len(l4.fused_positions) == 3
    assert l2.positions[0] == 0 and l2.positions[-1] == -2                   # [CLS] first, layer 2's fused token last
    kept2 = [p for p in l2.positions[1:] if p > 0]
    assert kept2 == sorted(kept2)                                            # kept tokens in input order
    assert set(kept2).isdisjoint(l2.fused_positions)
    assert set(kept2) | set(l2.fused_positions) == set(range(1, 13))
    assert all(w > 0 for w in l2.fused_weights)


def test_ablation_switches():
    x = batch()
    no_token = MODEL.infer(x, token_exit=False, threshold=0.0).samples
    assert all(t.n_ffn == t.n_att == len(s.input_ids) for s in no_token for t in s.layers)
    no_layer = MODEL.infer(x, layer_exit=False, threshold=10.0).samples
    assert all(s.exit_layer == L for s in no_layer)
    drop = MODEL.infer(x, fusion="drop", threshold=0.0, trace=True).samples
    assert all(p >= 0 for s in drop for t in s.layers for p in t.positions)
    assert drop[0].tokens_per_layer[1] == 1 + math.ceil(12 * 0.7)            # no fused token appended
    with pytest.raises(ValueError, match="num_labels"):
        MODEL.infer(x, num_labels=4)


# ----------------------------------------------------------------------------- monotonicity

@settings(max_examples=10)
@given(st.floats(0.0, 1.2), st.floats(0.0, 1.2))
def test_raising_threshold_never_exits_later(f1, f2):
    lo, hi = sorted((f1, f2))
    a, b = MODEL.infer(batch(), threshold=lo).samples, MODEL.infer(batch(), threshold=hi).samples
    for s_lo, s_hi in zip(a, b):
        assert s_hi.exit_layer <= s_lo.exit_layer
        assert s_hi.flops.executed <= s_lo.flops.executed


@settings(max_examples=10)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_flops_never_increase_with_r_ee_without_layer_exit(r1, r2):
    lo, hi = sorted((r1, r2))
    a = MODEL.infer(batch(), r_ee=lo, layer_exit=False, trace=True).samples
    b = MODEL.infer(batch(), r_ee=hi, layer_exit=False, trace=True).samples
    for s_lo, s_hi in zip(a, b):
        assert all(t_hi.n_ffn <= t_lo.n_ffn for t_lo, t_hi in zip(s_lo.layers, s_hi.layers))
        # Fusing a single token (p = 1) replaces it by α h: it costs 2D FLOPs and removes nothing, so
        # FLOPs are monotone in R_ee up to 2D per layer that fuses exactly one token (docs/interpretation/flops.md).
        single = sum(len(t.fused_positions) == 1 for t in s_hi.layers)
        assert s_hi.flops.executed <= s_lo.flops.executed + 2 * BERT.hidden_size * single


# ----------------------------------------------------------------------------- training
def test_training_loss_backpropagates_to_every_used_parameter():
    model = make_model()
    model.train()
    x = batch()
    out = model(**x, labels=torch.tensor([0, 1, 2, 1]))
    assert out.loss is not None and torch.isfinite(out.loss.total)
    out.loss.total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    # the backbone's own pooler is not used by MPEE: each exit head has its own copy (initialised from it)
    assert no_grad == ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]


def test_bad_inputs_raise_clear_errors():
    x = batch()
    left = {k: v.flip(1) for k, v in x.items()}
    left["input_ids"][:, 0] = 2
    left["attention_mask"][:, 0] = 1
    with pytest.raises(ValueError, match="right-padded"):
        MODEL.infer(left)
    with pytest.raises(ValueError, match="labels"):
        MODEL(**x, labels=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="eval mode"):
        make_model().train().infer(x)


# ----------------------------------------------------------------------------- Eq. 15 on the real forward
def test_flop_counter_matches_the_accounting_on_the_real_inference():
    """torch's FlopCounterMode, run around infer() at batch size 1, sees exactly the analytic count
    (mpee_ref.flops), up to one documented difference: eq08_fuse multiplies all N candidate tokens by
    their α (0 for kept tokens) in one einsum, 2·N·D FLOPs, where the accounting charges the 2·p·D an
    implementation that gathers the p fused tokens first would spend."""
    from torch.utils.flop_counter import FlopCounterMode

    x = batch(lengths=(13,))
    for threshold in (0.0, 0.2):                       # exits at layer 5, then at layer 2
        with FlopCounterMode(display=False) as counter:
            s = MODEL.infer(x, threshold=threshold, trace=True).samples[0]
        fused_layers = [t for t in s.layers if t.fused_positions]
        expected = (s.flops.executed
                    - sum(2 * len(t.fused_positions) * BERT.hidden_size for t in fused_layers)
                    + sum(2 * (t.n_att - 1) * BERT.hidden_size for t in fused_layers))
        assert counter.get_total_flops() == expected


def test_bottom_selection_keeps_the_lowest_scores():
    """Fig. 5's control: token_select="bottom" keeps the m lowest-memory tokens instead of the m highest."""
    x = batch(lengths=(13,))
    top = MODEL.infer(x, threshold=0.0, trace=True).samples[0].layers[1]
    bottom = MODEL.infer(x, threshold=0.0, token_select="bottom", trace=True).samples[0].layers[1]
    assert len(top.positions) == len(bottom.positions) == 11                # same m = 9, + [CLS] + fused
    assert set(top.positions[1:-1]) != set(bottom.positions[1:-1])
    # what "top" fuses (its 3 lowest) is kept by "bottom", whose 9 lowest include them
    assert set(top.fused_positions) <= set(bottom.positions[1:-1])


def test_token_score_override_is_used_per_call():
    """Table 3's all-token attention, switched per call, changes which tokens are kept (and equals a
    model configured with it)."""
    x = batch(lengths=(13,))
    cls_ = MODEL.infer(x, threshold=0.0, trace=True).samples[0]
    all_ = MODEL.infer(x, threshold=0.0, token_score="all", trace=True).samples[0]
    configured = make_model(token_score="all").infer(x, threshold=0.0, trace=True).samples[0]
    assert _strip(all_) == _strip(configured)
    assert [t.positions for t in cls_.layers] != [t.positions for t in all_.layers]


# ----------------------------------------------------------------------------- traces, position codes, host reads
def test_trace_off_keeps_everything_but_the_token_detail():
    x = batch()
    off, on = MODEL.infer(x, threshold=0.2).samples, MODEL.infer(x, threshold=0.2, trace=True).samples
    for a, b in zip(off, on):
        assert all(t.positions is t.fused_positions is t.fused_weights is None for t in a.layers)
        assert all(t.positions is not None for t in b.layers)
        assert a.layers == tuple(replace(t, positions=None, fused_positions=None, fused_weights=None) for t in b.layers)
        assert (a.prediction, a.probabilities, a.exit_layer, a.flops) == (b.prediction, b.probabilities, b.exit_layer,
                                                                            b.flops)
        assert [t.exited for t in a.layers] == [False] * (a.exit_layer - 1) + [True]


def test_position_codes_name_every_fusion_token():
    assert (fused_code(3), fused_layer(-3)) == (-3, 3)
    assert [is_fused(c) for c in (0, 5, -1, -4, PAD_CODE)] == [False, False, True, True, False]
    s = MODEL.infer(batch(lengths=(13,)), threshold=0.0, trace=True).samples[0]      # prunes at layers 2 and 4
    assert [c for c in s.layers[-1].positions if is_fused(c)] == [fused_code(2), fused_code(4)]
    assert s.layers[0].positions == tuple(range(13))


def test_one_host_read_per_layer_and_none_per_sample(monkeypatch):
    """Without a trace, reading tensors back to Python (bool/int/float/item/tolist) costs a fixed number
    of reads per call plus one per layer (does anyone leave?), whatever the batch size."""
    model = make_model(token_exit=False)
    reads = {"n": 0}
    for name in ("__bool__", "__int__", "__float__", "item", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real: reads.__setitem__("n", reads["n"] + 1)
                            or _real(self, *a))

    def count(inputs, **kw):
        reads["n"] = 0
        out = model.infer(inputs, **kw)
        assert out.exit_layers.tolist() == [L] * out.exit_layers.shape[0]      # nobody exits early here
        return reads["n"] - 1                                                   # less the tolist just above

    one, four = batch(lengths=(13,)), batch()
    tested, untested = count(four, threshold=1e-9), count(four, layer_exit=False)
    assert tested - untested == L - 1                     # the exit test at layers 1..L-1; layer L always exits
    assert count(one, threshold=1e-9) == tested            # independent of the batch size
    assert count(four, threshold=1e-9, trace=True) > tested


def test_a_call_override_follows_a_changed_model_config():
    model = make_model()
    x = batch()
    before = model.infer(x, threshold=0.0)
    model.mpee_config = replace(model.mpee_config, r_ee=0.0)
    after = model.infer(x, threshold=0.0)                  # the same override, a new config underneath
    assert [s.tokens_per_layer for s in after.samples] == [(n,) * L for n in (13, 9, 5, 11)]
    assert [s.tokens_per_layer for s in before.samples] != [s.tokens_per_layer for s in after.samples]


def test_configure_sets_a_field_for_every_later_call_and_refuses_parameter_fields():
    model, x = make_model(), batch()
    per_call = model.infer(x, threshold=0.0, prune_layers=(1,))
    assert model.configure(prune_layers=(1,)) is model and model.mpee_config.prune_layers == (1,)
    configured = model.infer(x, threshold=0.0)
    assert [s.tokens_per_layer for s in configured.samples] == [s.tokens_per_layer for s in per_call.samples]
    assert [s.prediction for s in configured.samples] == [s.prediction for s in per_call.samples]
    with pytest.raises(ValueError, match="head is fixed by the trained parameters"):
        model.configure(head="tanh")
    assert model.mpee_config.head == "pooler"
