"""The authors' preset and its switches: every Table 2 ablation trains a step under both presets; the
padding regime (``pad_to``), the truncated memory (``memory_alignment="truncate"``), the final
classifier path (``final_classifier``). The bit-level comparison with the authors' code is
tests/test_authors_code.py; these are the hand examples and properties.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpee_ref.config import BertConfig
from mpee_ref.flops import head_flops, sample_flops
from mpee_ref.mpee import MPEEConfig, MPEEModel
from mpee_ref.mpee.config import ABLATIONS
from mpee_ref.token_exit import eq07_num_kept, padded_widths, prune_tokens

L, C = 6, 3
BERT = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=L, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=128, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
PRESETS = {"paper": lambda **kw: MPEEConfig.paper(C, **kw), "authors": lambda **kw: MPEEConfig.authors(C, L, **kw)}


def make_model(cfg: MPEEConfig, std: float = 0.3) -> MPEEModel:
    torch.manual_seed(0)
    model = MPEEModel(BERT, cfg).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std, generator=g)
    return model


def batch(lengths, seed=2):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, 99, (len(lengths), T), generator=g)
    ids[:, 0] = 2
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


# ============================================================================ ablations train, both presets
def test_without_wsd_under_the_authors_preset_drops_gamma():
    cfg = MPEEConfig.authors(C, L).without("wsd")
    assert (cfg.use_kd, cfg.gamma) == (False, None)
    assert MPEEConfig.paper(C).without("wsd").gamma is None


# 128 and 100 tokens lose real tokens at layer 2 under the authors' 128 slots (89 kept), 7 never
LENGTHS = (128, 100, 40, 7)


@pytest.mark.parametrize("ablation", (None,) + ABLATIONS)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_table2_ablation_trains_a_step_under_both_presets(preset, ablation):
    cfg = PRESETS[preset](classifier_dropout=0.0)
    cfg = cfg if ablation is None else cfg.without(ablation)
    model = make_model(cfg).train()
    inputs, labels = batch(LENGTHS), torch.tensor([0, 1, 2, 1])
    out = model(**inputs, labels=labels)
    terms = out.loss
    # the total is the documented combination of its terms
    if not cfg.use_kd:
        assert terms.kd is None and torch.allclose(terms.total, terms.ce.sum(), rtol=1e-12)
    elif cfg.gamma is None:
        assert torch.allclose(terms.total, terms.ce.sum() + terms.kd.sum(), rtol=1e-12)
    else:
        g = cfg.gamma
        assert torch.allclose(terms.total, ((1 - g) * terms.ce + g * terms.kd).sum() + g * terms.teacher_ce,
                              rtol=1e-12)
    # token bookkeeping of the ablation: w/o Token-EE keeps every token, otherwise the long inputs shrink
    if cfg.token_exit:
        assert int(out.tokens[-1, 0]) < LENGTHS[0]
    else:
        assert out.tokens.tolist() == [list(LENGTHS)] * L
    # one SGD step on the same batch lowers the loss (first-order; float64, no dropout)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    terms.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert float(model.exits[0].classifier.weight.grad.abs().sum()) > 0
    assert float(model.bert.layers[0].attention.self.query.weight.grad.abs().sum()) > 0
    opt.step()
    with torch.no_grad():
        assert float(model(**inputs, labels=labels).loss.total) < float(terms.total)


# ============================================================================ the padding regime
def test_padded_widths_hand_example_and_float_ceiling():
    # 128 slots, keep 70% at 4/7/10: ceil(0.7 * 127) = 89 -> 91, ceil(0.7 * 90) = 63 -> 65, ceil(0.7 * 64) = 45 -> 47
    assert padded_widths(128, (4, 7, 10), 12, 0.7, "keep") == (128,) * 4 + (91,) * 3 + (65,) * 3 + (47,) * 2
    # without fusion no slot is appended: 89 + 1, ceil(0.7 * 89) + 1 = 64, ceil(0.7 * 63) + 1 = 46
    assert padded_widths(128, (4, 7, 10), 12, 0.7, "keep", fused=False) == \
        (128,) * 4 + (90,) * 3 + (64,) * 3 + (46,) * 2
    # the paper's reading of R_ee (0.3 exits) gives the same kept counts
    assert padded_widths(128, (2, 4, 5), 6, 0.3, "exit") == padded_widths(128, (2, 4, 5), 6, 0.7, "keep")
    # exact ceiling == the authors' float ceiling at every width reached from 128
    for W in set(padded_widths(128, (4, 7, 10), 12, 0.7, "keep")):
        assert int(eq07_num_kept(torch.tensor([W - 1]), 0.7, "keep")[0]) == math.ceil(0.7 * (W - 1))
    # padded_widths trusts its inputs: MPEEConfig refuses pad_to < 2 (test_config_rejects_bad_padding_switches)


def test_pad_to_counts_kept_tokens_over_padded_slots():
    model = make_model(MPEEConfig.authors(C, L)).eval()
    inp = batch((128, 100, 40, 7))
    res = model.infer(inp, layer_exit=False)
    # FFN inputs; layer 2 keeps 89 (+ [CLS] + fused = 91), layer 4 keeps 63 (65), layer 5 keeps 45 (47)
    assert res.samples[0].tokens_per_layer == (128, 91, 91, 65, 47, 47)
    assert res.samples[1].tokens_per_layer == (100, 91, 91, 65, 47, 47)
    assert res.samples[2].tokens_per_layer == (40,) * 6        # < 46 tokens: only padding exits
    assert res.samples[3].tokens_per_layer == (7,) * 6
    # the real-length regime (pad_to=None) prunes every input: 40 -> ceil(0.7 * 39) + 2 = 30
    real = model.infer(inp, layer_exit=False, pad_to=None)
    assert real.samples[2].tokens_per_layer[1] == 30 and real.samples[3].tokens_per_layer[1] == 7
    with pytest.raises(ValueError, match="more than pad_to=64"):
        model.infer(inp, pad_to=64)


def test_authors_preset_batched_equals_batch_1():
    model = make_model(MPEEConfig.authors(C, L, pad_to=40)).eval()
    inp = batch((40, 33, 21, 12, 38))
    ent = sorted(t.entropy for s in model.infer(inp, threshold=0.0).samples for t in s.layers[:-1])
    F = ent[len(ent) // 3]
    many = model.infer(inp, threshold=F).samples
    assert len({s.exit_layer for s in many}) >= 2
    for b, s in enumerate(many):
        one = model.infer({k: v[b:b + 1, :int(inp["attention_mask"][b].sum())] for k, v in inp.items()},
                          threshold=F).samples[0]
        assert (one.exit_layer, one.prediction, one.tokens_per_layer) == \
               (s.exit_layer, s.prediction, s.tokens_per_layer)
        assert one.probabilities == pytest.approx(s.probabilities, abs=1e-12)
        assert one.flops == s.flops


def test_config_rejects_bad_padding_switches():
    with pytest.raises(ValueError, match="pad_to must be None or an int >= 2"):
        MPEEConfig(pad_to=1)
    with pytest.raises(ValueError, match="cannot be combined with ratio_base='original'"):
        MPEEConfig(pad_to=128, ratio_base="original")
    with pytest.raises(ValueError, match="memory_alignment must be 'gather' or 'truncate'"):
        MPEEConfig(memory_alignment="keep")
    a = MPEEConfig.authors(C, L)
    assert (a.pad_to, a.memory_alignment, a.final_classifier) == (128, "truncate", True)
    assert MPEEConfig.from_dict(a.to_dict()) == a


# ============================================================================ the truncated memory
def test_truncated_memory_hand_example():
    # 4 non-CLS tokens with memory 0.1, 0.4, 0.2, 0.3; keep ceil(0.5 * 4) = 2: tokens 2 and 4 (scores 0.4, 0.3)
    hidden = torch.tensor([[[9.0], [1.0], [2.0], [3.0], [4.0]]])               # (1, 5, 1): [CLS], h1..h4
    mask, memory = torch.ones(1, 5, dtype=torch.long), torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    fused = 0.1 * 1.0 + 0.2 * 3.0                                               # h_eef = Σ α_i h_i = 0.7
    g = prune_tokens(hidden, mask, memory, 0.5, r_ee_means="keep", fused_memory="mean")
    assert g.hidden[0, :, 0].tolist() == pytest.approx([9.0, 2.0, 4.0, fused])  # position order
    assert g.memory[0].tolist() == pytest.approx([0.4, 0.3, 0.15])              # each token's own; mean of 0.1, 0.2
    t = prune_tokens(hidden, mask, memory, 0.5, r_ee_means="keep", fused_memory="mean", memory_alignment="truncate")
    assert t.hidden[0, :, 0].tolist() == pytest.approx([9.0, 2.0, 4.0, fused])  # score order (0.4 > 0.3)
    assert t.memory[0].tolist() == pytest.approx([0.1, 0.4, 0.15])              # old slots 0, 1; then the fused
    assert t.source_index[0].tolist() == [1, 3, -1]
    # score order differs from position order when the later token scores higher
    t2 = prune_tokens(hidden, mask, torch.tensor([[0.1, 0.3, 0.2, 0.4]]), 0.5, r_ee_means="keep",
                      memory_alignment="truncate")
    assert t2.hidden[0, :3, 0].tolist() == [9.0, 4.0, 2.0] and t2.memory[0, :2].tolist() == pytest.approx([0.1, 0.3])
    # the authors' mean over every exiting slot (padding included): sum 0.3 over 3 slots
    c = prune_tokens(hidden, mask, memory, 0.5, r_ee_means="keep", fused_memory="mean",
                     memory_alignment="truncate", fused_mean_count=torch.tensor([3]))
    assert float(c.memory[0, 2]) == pytest.approx(0.1)
    # truncate reorders even where nothing exits (keep 100%)
    n = prune_tokens(hidden, mask, torch.tensor([[0.1, 0.3, 0.2, 0.4]]), 1.0, r_ee_means="keep",
                     memory_alignment="truncate")
    assert n.hidden[0, :, 0].tolist() == [9.0, 4.0, 2.0, 3.0, 1.0] and n.memory[0].tolist() == pytest.approx([0.1, 0.3, 0.2, 0.4])
    with pytest.raises(ValueError, match="memory_alignment must be 'gather' or 'truncate'"):   # the boundary
        MPEEConfig(memory_alignment="x")


# ============================================================================ the final classifier
def test_final_classifier_path_and_its_flops():
    model = make_model(MPEEConfig.authors(C, L, pad_to=None)).eval()
    inp = batch((20, 14, 9))
    with torch.no_grad():
        res = model.infer(inp, layer_exit=False, trace=True)
        train = model(**inp)                         # eval mode: the same final logits
    probs = torch.softmax(train.final_logits, dim=-1)
    for b, s in enumerate(res.samples):
        assert s.exit_layer == L and s.probabilities == pytest.approx(probs[b].tolist(), abs=1e-12)
        tr = s.layers
        base = sample_flops([t.n_att for t in tr], [t.n_ffn for t in tr], [len(t.fused_positions) for t in tr],
                            tr[0].n_att, L, 32, 37, C, "pooler")
        assert s.flops.executed == base.executed + head_flops(32, C, "pooler") and s.flops.full == base.full
    # a sample whose layer-L memory passes the test is predicted by the memory, not the final classifier
    with torch.no_grad():
        mem_probs = torch.softmax(train.memories[-1], dim=-1)
        res_pass = model.infer(inp, threshold=10.0, layer_exit=True)        # every entropy < 10: exit at 1
    assert all(s.exit_layer == 1 for s in res_pass.samples)
    assert not torch.allclose(mem_probs, probs)
    with pytest.raises(ValueError, match="final_classifier is fixed"):
        model.infer(inp, final_classifier=False)
    with pytest.raises(ValueError, match="final_head=True needs a run through all 6 layers"):
        sample_flops([5], [5], [0], 5, L, 32, 37, C, final_head=True)


def test_final_classifier_replaces_exit_L_in_the_loss():
    cfg = MPEEConfig.authors(C, L, classifier_dropout=0.0)
    model = make_model(cfg).train()
    inp, y = batch((12, 9)), torch.tensor([2, 0])
    out = model(**inp, labels=y)
    ce_final = torch.nn.functional.cross_entropy(out.final_logits, y)
    assert out.loss.ce[-1].item() == pytest.approx(ce_final.item(), rel=1e-12)
    plain = make_model(replace(cfg, final_classifier=False)).train()
    ce_mem = torch.nn.functional.cross_entropy(plain(**inp).memories[-1], y)
    assert plain(**inp, labels=y).loss.ce[-1].item() == pytest.approx(ce_mem.item(), rel=1e-12)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.sampled_from([0.3, 0.5, 0.7, 1.0]),
       st.integers(0, 10_000))
def test_truncate_keeps_the_same_tokens_as_gather_and_leaves_the_memory_in_place(lengths, keep, seed):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths) + 1
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None] + 1).long()        # [CLS] + n tokens
    hidden = torch.randn(len(lengths), T, 5, generator=g, dtype=torch.float64) * mask[..., None]
    memory = torch.rand(len(lengths), T - 1, generator=g, dtype=torch.float64) * mask[:, 1:]
    kw = dict(r_ee_means="keep", fused_memory="mean")
    a = prune_tokens(hidden, mask, memory, keep, **kw)
    t = prune_tokens(hidden, mask, memory, keep, memory_alignment="truncate", **kw)
    assert torch.equal(a.kept, t.kept) and torch.equal(a.fused, t.fused) and torch.equal(a.num_kept, t.num_kept)
    for b in range(len(lengths)):
        n = int(t.attention_mask[b].sum())
        assert n == int(a.attention_mask[b].sum())
        # the same rows (kept tokens and the fused token), in score order under truncate
        rows = lambda r: sorted(map(tuple, r.hidden[b, 1:n].tolist()))                    # noqa: E731
        assert rows(a) == rows(t)
        m = int(t.num_kept[b])
        kept_scores = t.memory.new_tensor([memory[b, i] for i in t.source_index[b, :m].tolist()])
        assert bool((kept_scores[:-1] >= kept_scores[1:]).all())                          # best first
        assert torch.equal(t.memory[b, :m], memory[b, :m])                                 # entry j stays at j
        if n - 1 > m:                                                                      # the fused slot
            assert float(t.memory[b, m]) == pytest.approx(float(a.memory[b, m]))
