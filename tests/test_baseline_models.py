"""Model-level tests of the baselines (mpee_ref/baselines): real-exit inference equals the decision
computed from the full training forward, batched equals one sample at a time (padding changes
nothing), no-exit settings reproduce the plain BERT classifier, eliminated tokens are really removed,
FLOPs come from the Eq. 15 code, and each training stage sends gradients only where it should.

Tiny config with pairwise-distinct sizes (vocab 99, hidden 32, heads 4, FFN 37, layers 5, C 3), in
float64 so that "equal" can mean equal to 1e-10.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpee_ref.baselines import (PABEE, BaselineInferenceOutput, DeeBERT, DeeBERTConfig, FastBERT,
                                FastBERTConfig, PABEEConfig, PowerBERT, PowerBERTConfig, StaticConfig,
                                StaticTruncation, baseline_sample_flops, fastbert_distill_loss,
                                fastbert_uncertainty,
                                pabee_weighted_loss)
from mpee_ref.config import BertConfig
from mpee_ref.flops import eq15_layer_flops, head_flops
from mpee_ref.layer_exit import exit_entropy
from mpee_ref.losses import eq11_cross_entropy

L, C = 5, 3
BERT = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=L, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64)
LENGTHS = (13, 9, 5, 11, 7, 12)
RETENTION = (1.0, 0.75, 0.5, 0.5, 0.25)


def make(cls, cfg):
    torch.manual_seed(0)
    model = cls(BERT, cfg).double().eval()
    # larger weights than BERT's init so that samples differ and entropies spread over [0, ln C]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5, generator=g)
    return model


def batch(lengths=LENGTHS, seed=1):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, 99, (len(lengths), T), generator=g)
    ids[:, 0] = 2
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    types = torch.zeros_like(ids)
    types[:, T // 2:] = 1
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types * mask}


def one(x, b):
    n = int(x["attention_mask"][b].sum())
    return {k: v[b:b + 1, :n] for k, v in x.items()}


# method name -> (model, infer kwargs, reference exit layer from the full forward's logits (L, C) of one sample)
def _first(flags):
    return next((l for l, f in enumerate(flags, start=1) if f), len(flags))


def _pabee_exit(preds, t):
    cnt = 0
    for i in range(1, len(preds)):
        cnt = cnt + 1 if preds[i] == preds[i - 1] else 0
        if cnt >= t:
            return i + 1
    return len(preds)


METHODS = {
    "static": (lambda: make(StaticTruncation, StaticConfig(num_labels=C)), {}, lambda lg: L // 2),
    "deebert": (lambda: make(DeeBERT, DeeBERTConfig(num_labels=C, entropy_threshold=0.3)), {},
                lambda lg: _first((exit_entropy(lg) < 0.3).tolist())),
    "fastbert": (lambda: make(FastBERT, FastBERTConfig(num_labels=C, speed=0.3 / math.log(C))), {},
                 lambda lg: _first((fastbert_uncertainty(lg) < 0.3 / math.log(C)).tolist())),
    "pabee": (lambda: make(PABEE, PABEEConfig(num_labels=C, patience=1)), {},
              lambda lg: _pabee_exit(lg.argmax(-1).tolist(), 1)),
    "power": (lambda: make(PowerBERT, PowerBERTConfig(num_labels=C, retention=RETENTION)), {}, lambda lg: L),
}
MODELS = {name: spec[0]() for name, spec in METHODS.items()}


# ----------------------------------------------------------------------------- real exits == full forward
@pytest.mark.parametrize("name", list(METHODS))
def test_real_exit_inference_equals_decision_from_training_forward(name):
    model, _, ref_exit = MODELS[name], METHODS[name][1], METHODS[name][2]
    x = batch()
    train = model(**x)                                                          # (K, B, C) every classifier
    out = model.infer(x)
    exits = []
    for b, s in enumerate(out.samples):
        lg = train.logits[:, b]                                                 # (K, C)
        e = ref_exit(lg)
        exits.append(e)
        assert s.exit_layer == e
        k = model.head_layers.index(e)
        torch.testing.assert_close(torch.tensor(s.probabilities, dtype=torch.float64),
                                   torch.softmax(lg[k], -1), rtol=0, atol=1e-10)
        assert s.tokens_per_layer == tuple(train.tokens[:e, b].tolist())
    if name in ("deebert", "fastbert", "pabee"):
        assert len(set(exits)) >= 3, f"operating point too uniform to test anything: exits {exits}"


@pytest.mark.parametrize("name", list(METHODS))
def test_batched_equals_one_at_a_time(name):
    model = MODELS[name]
    x = batch()
    full = model.infer(x)
    for b, s in enumerate(full.samples):
        alone = model.infer(one(x, b)).samples[0]
        assert (alone.prediction, alone.exit_layer, alone.tokens_per_layer, alone.flops) == \
               (s.prediction, s.exit_layer, s.tokens_per_layer, s.flops)
        assert alone.probabilities == pytest.approx(s.probabilities, abs=1e-10)
        assert alone.signals == pytest.approx(s.signals, abs=1e-10)


@pytest.mark.parametrize("name", list(METHODS))
def test_flops_are_counted_by_the_eq15_code(name):
    model = MODELS[name]
    out = model.infer(batch())
    for s, n in zip(out.samples, LENGTHS):
        att = (n,) + s.tokens_per_layer[:-1]                                    # MHSA sees what the last FFN kept
        heads = [k for k in model.head_layers if k <= s.exit_layer]
        assert s.flops == baseline_sample_flops(att, s.tokens_per_layer, n, heads, BERT, C)
    assert out.rho == sum(s.flops.full for s in out.samples) / sum(s.flops.executed for s in out.samples)


@pytest.mark.parametrize("name", ["deebert", "pabee", "power"])
def test_exited_samples_and_eliminated_tokens_leave_the_tensors(name, monkeypatch):
    """The shapes each layer really computes on: the samples still running, padded only to the
    longest of them (and, for PoWER-BERT, only to the tokens it kept)."""
    model = MODELS[name]
    shapes = []
    for layer in model.bert.layers:
        def spy(h, bias, _orig=layer.attention_sublayer):
            shapes.append(tuple(h.shape[:2]))
            return _orig(h, bias)
        monkeypatch.setattr(layer, "attention_sublayer", spy)
    out = model.infer(batch())
    expected = []
    for l in range(1, L + 1):
        alive = [s for s in out.samples if s.exit_layer >= l]
        if not alive:
            break
        # tokens entering layer l's MHSA = tokens layer l-1's FFN kept (the input length at layer 1)
        width = max(n if l == 1 else s.tokens_per_layer[l - 2] for s, n in zip(out.samples, LENGTHS)
                    if s.exit_layer >= l)
        expected.append((len(alive), width))
    assert shapes == expected
    assert len(set(shapes)) >= 3                                               # the work really shrank


@settings(max_examples=8, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=4), st.integers(0, 1000),
       st.lists(st.sampled_from([1.0, 0.75, 0.5, 0.3, 0.1]), min_size=L, max_size=L))
def test_batched_equals_one_at_a_time_for_any_lengths(lengths, seed, retention):
    """Random lengths (a lone [CLS] included), inputs and retention configurations."""
    x = batch(tuple(lengths), seed)
    retention = tuple(sorted(retention, reverse=True))
    for name, kwargs in (("power", {"retention": retention}), ("deebert", {}), ("pabee", {})):
        full = MODELS[name].infer(x, **kwargs)
        for b, s in enumerate(full.samples):
            alone = MODELS[name].infer(one(x, b), **kwargs).samples[0]
            assert (alone.prediction, alone.exit_layer, alone.tokens_per_layer, alone.flops) == \
                   (s.prediction, s.exit_layer, s.tokens_per_layer, s.flops)
            assert alone.probabilities == pytest.approx(s.probabilities, abs=1e-10)


# ----------------------------------------------------------------------------- no exit == plain BERT
def plain_probs(model, x, layer):
    hs = model.bert(**x, output_hidden_states=True).hidden_states
    return torch.softmax(model.heads[model.head_layers.index(layer)](hs[layer][:, 0]), -1)   # (B, C)


@pytest.mark.parametrize("name,kwargs", [("deebert", {"entropy_threshold": 0.0}), ("fastbert", {"speed": 0.0}),
                                         ("pabee", {"patience": L}), ("power", {"retention": (1.0,) * L})])
def test_never_exiting_reproduces_the_plain_bert_classifier(name, kwargs):
    model = MODELS[name]
    x = batch()
    out = model.infer(x, **kwargs)
    got = torch.tensor([s.probabilities for s in out.samples], dtype=torch.float64)
    torch.testing.assert_close(got, plain_probs(model, x, L), rtol=0, atol=1e-12)
    assert out.exit_layers.tolist() == [L] * len(LENGTHS)
    assert [s.tokens_per_layer for s in out.samples] == [(n,) * L for n in LENGTHS]


def test_static_truncation_runs_half_the_layers():
    model = MODELS["static"]
    x = batch()
    out = model.infer(x)
    k = L // 2
    got = torch.tensor([s.probabilities for s in out.samples], dtype=torch.float64)
    torch.testing.assert_close(got, plain_probs(model, x, k), rtol=0, atol=1e-12)
    for s, n in zip(out.samples, LENGTHS):
        layer, h = eq15_layer_flops(n, n, 32, 37), head_flops(32, C)
        assert (s.exit_layer, s.flops.executed, s.flops.full) == (k, k * layer + h, L * layer + h)
    assert 2.0 < out.rho < L / k                                               # one head on each side


# ----------------------------------------------------------------------------- PoWER-BERT removes tokens
def test_power_bert_keeps_ceil_r_n_tokens_and_they_are_the_most_significant():
    model = MODELS["power"]
    out = model.infer(batch())
    for s, n in zip(out.samples, LENGTHS):
        assert s.tokens_per_layer == tuple(1 + math.ceil(r * (n - 1)) for r in RETENTION)
        assert s.flops.executed < s.flops.full
    assert out.rho > 1.3
    # a tighter configuration removes more and costs less
    tight = model.infer(batch(), retention=(0.5, 0.5, 0.25, 0.25, 0.25))
    assert tight.rho > out.rho


def test_power_bert_eliminates_by_significance():
    """One layer, keep 50%: the kept tokens are those with the largest total attention received."""
    from mpee_ref.baselines import power_significance
    model = MODELS["power"]
    x = one(batch(), 0)                                                         # 13 tokens
    h = model.bert.embeddings(x["input_ids"], x["token_type_ids"])
    z, probs = model.bert.layers[0].attention_sublayer(h, None)
    sig = power_significance(probs)[0]                                          # (12,)
    kept = model._eliminate((0.5,) * L)(1, z, x["attention_mask"], probs, torch.tensor([12]))[0]
    top = sorted(sig.topk(6).indices.tolist())
    torch.testing.assert_close(kept[0, 1:], z[0, 1:][top])                      # position order, [CLS] first
    torch.testing.assert_close(kept[0, 0], z[0, 0])


# ----------------------------------------------------------------------------- monotonicity
def test_higher_thresholds_exit_no_later():
    x = batch()
    for name, key, values in (("deebert", "entropy_threshold", (0.1, 0.3, 0.6, 2.0)),
                              ("fastbert", "speed", (0.1, 0.3, 0.6, 1.01))):
        prev = None
        for v in values:
            out = MODELS[name].infer(x, **{key: v})
            if prev is not None:
                assert bool((out.exit_layers <= prev).all())
            prev = out.exit_layers
        assert prev.tolist() == [1] * len(LENGTHS)                              # above ln C / 1: all exit at 1
    prev = None
    for t in (1, 2, 3, 4):                                                      # more patience: no earlier exit
        out = MODELS["pabee"].infer(x, patience=t)
        assert bool((out.exit_layers >= t + 1).all())
        if prev is not None:
            assert bool((out.exit_layers >= prev).all())
        prev = out.exit_layers


# ----------------------------------------------------------------------------- losses and gradients
def _grads(model):
    bert = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()
               if n.startswith("bert."))
    heads = [any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in h.parameters()) for h in model.heads]
    return bert, heads


@pytest.mark.parametrize("cls,cfg,stage,bert_grad,head_grads", [
    (DeeBERT, DeeBERTConfig(num_labels=C), "backbone", True, [False] * (L - 1) + [True]),
    (DeeBERT, DeeBERTConfig(num_labels=C), "ramps", False, [True] * (L - 1) + [False]),
    (FastBERT, FastBERTConfig(num_labels=C), "backbone", True, [False] * (L - 1) + [True]),
    (FastBERT, FastBERTConfig(num_labels=C), "distill", False, [True] * (L - 1) + [False]),
])
def test_two_stage_training_sends_gradients_only_where_the_stage_trains(cls, cfg, stage, bert_grad, head_grads):
    model = make(cls, cfg).train()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(**batch(), labels=labels, stage=stage)
    assert out.loss.dim() == 0 and float(out.loss.detach()) > 0
    out.loss.backward()
    assert _grads(model) == (bert_grad, head_grads)


def test_losses_are_the_methods_equations():
    x, labels = batch(), torch.tensor([0, 1, 2, 0, 1, 2])
    fast = MODELS["fastbert"](**x, stage="distill")                             # no labels needed
    torch.testing.assert_close(fast.loss, fastbert_distill_loss(fast.logits[:-1], fast.logits[-1]).sum())
    assert MODELS["fastbert"](**x, stage="backbone").loss is None
    pabee = MODELS["pabee"](**x, labels=labels)
    ce = eq11_cross_entropy(pabee.logits, labels)
    torch.testing.assert_close(pabee.loss, pabee_weighted_loss(ce))
    torch.testing.assert_close(pabee.per_head_loss, ce)
    dee = MODELS["deebert"](**x, labels=labels, stage="ramps")
    torch.testing.assert_close(dee.loss, eq11_cross_entropy(dee.logits[:-1], labels).sum())
    for name in ("static", "power"):
        out = MODELS[name](**x, labels=labels)
        torch.testing.assert_close(out.loss, eq11_cross_entropy(out.logits, labels)[0])


def test_head_norm_recipe_is_available_and_folds_away():
    """MPEE's exit-head recipe (standardised h_CLS) on the baselines' classifiers: batched == one at
    a time with the running statistics, and folding it into the weights changes no output."""
    model = make(PABEE, PABEEConfig(num_labels=C, patience=1, head_norm=True))
    model.train()
    model(**batch(seed=5))                                                      # running statistics move
    model.eval()
    assert all(float(h.norm.running_var.sub(1).abs().max()) > 0.01 for h in model.heads)
    x = batch()
    before = model.infer(x)
    for b, s in enumerate(before.samples):
        assert model.infer(one(x, b)).samples[0].exit_layer == s.exit_layer
    after = model.fold_head_norms().infer(x)
    assert model.config.head_norm is False and all(h.norm is None for h in model.heads)
    assert [s.exit_layer for s in after.samples] == [s.exit_layer for s in before.samples]
    for a, b in zip(after.samples, before.samples):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-10)
        assert a.flops == b.flops


def test_init_heads_from_pooler_copies_and_warns_on_an_untrained_pooler():
    model = DeeBERT(BERT, DeeBERTConfig(num_labels=C))                          # BERT init: pooler bias 0
    with pytest.warns(UserWarning, match="pooler looks untrained"):
        model.init_heads_from_pooler()
    for h in model.heads:
        torch.testing.assert_close(h.pooler.dense.weight, model.bert.pooler.dense.weight)


# ----------------------------------------------------------------------------- bad input
def test_clear_errors():
    with pytest.raises(ValueError, match="PowerBERTConfig.retention must be non-increasing"):
        PowerBERTConfig(retention=(0.5, 0.7))
    with pytest.raises(ValueError, match=r"retention\[1\] must be in \(0, 1\]"):
        PowerBERTConfig(retention=(1.0, 0.0))
    with pytest.raises(ValueError, match="needs one fraction per layer"):
        PowerBERT(BERT, PowerBERTConfig(num_labels=C, retention=(1.0, 0.5)))
    with pytest.raises(ValueError, match="PABEEConfig.patience must be an int >= 1"):
        PABEEConfig(patience=0)
    with pytest.raises(ValueError, match="DeeBERTConfig.num_labels must be an int >= 2"):
        DeeBERTConfig(num_labels=1)
    with pytest.raises(ValueError, match="StaticConfig.num_layers must be in"):
        StaticTruncation(BERT, StaticConfig(num_layers=L + 1))
    with pytest.raises(ValueError, match="needs eval mode"):
        make(PABEE, PABEEConfig(num_labels=C)).train().infer(batch())
    bad = batch()
    bad["attention_mask"] = bad["attention_mask"].flip(1).clone()
    bad["attention_mask"][:, 0] = 1
    with pytest.raises(ValueError, match="right-padded"):
        MODELS["deebert"].infer(bad)
    assert isinstance(MODELS["static"].infer(batch()["input_ids"][:, :5]), BaselineInferenceOutput)
