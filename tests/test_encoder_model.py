r"""Eqs. (1)-(4) wired into ``mpee_ref.encoder.BertEncoder``: parity with HF ``transformers.BertModel``
(eager attention) on a tiny config of pairwise-distinct sizes, equivalences (padding, batching, module
== equations), input validation and train/eval behaviour.

Tiny config: vocab 99, hidden 32, heads 4 (dh 8), FFN 37, layers 3, max positions 64, type vocab 2.
Real-checkpoint parity lives elsewhere (MiniLM-L6).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mpee_ref import BertConfig, BertEncoder
from mpee_ref.encoder import equations as eq

TINY = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64)



def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with distinct random values (biases and LayerNorm betas non-zero,
    gammas != 1), so a swapped or unused tensor changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            noise = torch.randn(prm.shape, generator=gen, dtype=prm.dtype)
            prm.copy_(1.0 + 0.2 * noise if name.endswith("LayerNorm.weight") else 0.2 * noise)
    return model


def tiny_model(seed: int = 0, cfg: BertConfig = TINY) -> BertEncoder:
    return randomize_(BertEncoder(cfg), seed).eval()


def padded_batch(seed: int = 0, B: int = 4, T: int = 13, lengths=(13, 9, 1, 5)):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY.vocab_size, (B, T), generator=gen)          # (B, T)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()   # (B, T)
    ids = ids * mask                                                          # pad id 0 on the tail
    token_types = torch.randint(0, 2, (B, T), generator=gen) * mask          # (B, T)
    return ids, mask, token_types


# ----------------------------------------------------------------------------- HF parity
def hf_model(cfg: BertConfig):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(**{k: v for k, v in cfg.to_dict().items() if k != "model_type"})
    hf_cfg._attn_implementation = "eager"
    model = transformers.BertModel(hf_cfg, add_pooling_layer=True)
    model.config._attn_implementation = "eager"
    return model.eval()


@pytest.mark.parametrize("direction", ["ours_into_hf", "hf_into_ours"])
def test_parity_with_hf_bert_on_padded_batch(direction):
    if direction == "ours_into_hf":
        ours = tiny_model(seed=1)
        hf = hf_model(TINY)
        hf.load_state_dict(ours.state_dict(), strict=True)
    else:
        hf = randomize_(hf_model(TINY), seed=2)
        ours = BertEncoder(TINY).eval()
        hf_sd = {k: v for k, v in hf.state_dict().items() if k != "embeddings.position_ids"}
        ours.load_state_dict(hf_sd, strict=True)
    assert hf.config._attn_implementation == "eager"
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        a = ours(ids, mask, tt, output_attentions=True, output_hidden_states=True)
        b = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_attentions=True,
               output_hidden_states=True)
    assert (a.last_hidden_state - b.last_hidden_state).abs().max() <= 1e-5
    assert len(a.hidden_states) == len(b.hidden_states) == TINY.num_hidden_layers + 1
    for ours_h, hf_h in zip(a.hidden_states, b.hidden_states):
        assert (ours_h - hf_h).abs().max() <= 1e-5
    assert len(a.attentions) == len(b.attentions) == TINY.num_hidden_layers
    for ours_p, hf_p in zip(a.attentions, b.attentions):
        assert ours_p.shape == (4, 4, 13, 13)
        torch.testing.assert_close(ours_p, hf_p, rtol=0, atol=1e-6)
    # the comparison is not vacuous: the batch really has padding and the layers really mix tokens
    assert bool((a.attentions[0][1, :, :, 9:] == 0).all())
    assert (a.hidden_states[-1] - a.hidden_states[0]).abs().max() > 0.1


def test_parity_is_sensitive_to_a_single_weight():
    """Guard for the parity test: perturbing one LayerNorm beta in HF breaks the 1e-5 bound."""
    ours = tiny_model(seed=1)
    hf = hf_model(TINY)
    hf.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        hf.encoder.layer[1].output.LayerNorm.bias[3] += 1e-3
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        diff = (ours(ids, mask, tt).last_hidden_state
                - hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state)
    assert diff.abs().max() > 1e-5


# ----------------------------------------------------------------------------- outputs
def test_hidden_states_and_attentions_are_optional_and_consistent():
    model = tiny_model()
    ids, mask, tt = padded_batch()
    plain = model(ids, mask, tt)
    assert plain.hidden_states is None and plain.attentions is None
    full = model(ids, mask, tt, output_hidden_states=True, output_attentions=True)
    assert len(full.hidden_states) == TINY.num_hidden_layers + 1
    assert torch.equal(full.hidden_states[-1], full.last_hidden_state)
    assert torch.equal(full.last_hidden_state, plain.last_hidden_state)
    # hidden_states[0] is h^0 = LN(E_word[x] + E_pos[p] + E_type[s]) written out
    e = model.embeddings
    T = ids.shape[1]
    x = e.word_embeddings.weight[ids] + e.position_embeddings.weight[:T] + e.token_type_embeddings.weight[tt]
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    h0 = e.LayerNorm.weight * (x - mu) / torch.sqrt(var + TINY.layer_norm_eps) + e.LayerNorm.bias
    torch.testing.assert_close(full.hidden_states[0], h0, rtol=0, atol=1e-5)


@pytest.mark.parametrize("lengths", [(13, 9, 1, 5), (13, 13, 13, 13)])
def test_module_equals_the_equations_layer_by_layer(lengths):
    """BertLayer.forward == eq01_transformer_layer on its params() with the mask bias: the module adds
    nothing. The unpadded batch checks that skipping the all-zero bias changes nothing."""
    model = tiny_model().double()
    ids, mask, tt = padded_batch(lengths=lengths)
    out = model(ids, mask, tt, output_hidden_states=True, output_attentions=True)
    bias = eq.attention_mask_bias(mask, torch.float64)
    for l, layer in enumerate(model.layers):
        h, probs = eq.eq01_transformer_layer(out.hidden_states[l], layer.params(),
                                             TINY.num_attention_heads, TINY.layer_norm_eps, bias)
        assert torch.equal(h, out.hidden_states[l + 1])
        assert torch.equal(probs, out.attentions[l])


MODEL64 = tiny_model(seed=3).double()


@settings(max_examples=20)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), n_pad=st.integers(1, 5),
       seed=st.integers(0, 2**31 - 1))
def test_padding_and_batching_change_nothing_float64(lengths, n_pad, seed):
    """Each sample alone, unpadded == its real rows in a padded batch (atol 1e-12, float64); extra
    padding tokens with random ids never change real tokens."""
    model = MODEL64
    T = max(lengths) + n_pad
    gen = torch.Generator().manual_seed(seed)
    B = len(lengths)
    ids = torch.randint(0, TINY.vocab_size, (B, T), generator=gen)          # pad ids are random too
    tt = torch.randint(0, 2, (B, T), generator=gen)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batch = model(ids, mask, tt).last_hidden_state                      # (B, T, D)
        for b, n in enumerate(lengths):
            alone = model(ids[b:b + 1, :n], None, tt[b:b + 1, :n]).last_hidden_state   # (1, n, D)
            torch.testing.assert_close(batch[b, :n], alone[0], rtol=0, atol=1e-12)



# ----------------------------------------------------------------------------- train / eval
def test_eval_is_deterministic_and_train_applies_dropout():
    model = tiny_model()
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        e1 = model(ids, mask, tt).last_hidden_state
        e2 = model(ids, mask, tt).last_hidden_state
        model.train()
        torch.manual_seed(0)
        t1 = model(ids, mask, tt).last_hidden_state
        t2 = model(ids, mask, tt).last_hidden_state
        model.eval()
        e3 = model(ids, mask, tt).last_hidden_state
    assert torch.equal(e1, e2) and torch.equal(e1, e3)
    assert (t1 - t2).abs().max() > 1e-2
    assert (t1 - e1).abs().max() > 1e-2


def test_train_without_dropout_equals_eval():
    """Dropout is the only train/eval difference: with both probabilities 0, train == eval."""
    cfg = dataclasses.replace(TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = tiny_model(cfg=cfg)
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        ev = model(ids, mask, tt).last_hidden_state
        model.train()
        tr = model(ids, mask, tt).last_hidden_state
    assert torch.equal(ev, tr)


@pytest.mark.parametrize("which", ["hidden_dropout_prob", "attention_probs_dropout_prob"])
def test_train_applies_each_dropout_on_its_own(which):
    """Each of BERT's two dropouts is wired: with only one of them non-zero, train != eval."""
    probs = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0} | {which: 0.3}
    cfg = dataclasses.replace(TINY, **probs)
    model = tiny_model(cfg=cfg)
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        ev = model(ids, mask, tt).last_hidden_state
        model.train()
        torch.manual_seed(0)
        tr = model(ids, mask, tt).last_hidden_state
    assert (tr - ev).abs().max() > 1e-2


def test_each_sublayer_of_bert_layer_applies_dropout_in_train_mode():
    model = tiny_model()
    layer = model.layers[0]
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(2, 5, TINY.hidden_size, generator=gen)                 # (B, T, D)
    with torch.no_grad():
        z_eval, _ = layer.attention_sublayer(h, None)
        f_eval = layer.ffn_sublayer(h)
        layer.train()
        torch.manual_seed(0)
        z_train, _ = layer.attention_sublayer(h, None)
        f_train = layer.ffn_sublayer(h)
    assert (z_train - z_eval).abs().max() > 1e-2
    assert (f_train - f_eval).abs().max() > 1e-2


# ----------------------------------------------------------------------------- input validation
@pytest.mark.parametrize("make_args, message", [
    (lambda: (torch.ones(5, dtype=torch.long),), r"input_ids must be a \(B, T\) integer tensor, got torch.Size\(\[5\]\)"),
    (lambda: (torch.ones(2, 3, 4, dtype=torch.long),), r"input_ids must be a \(B, T\) integer tensor"),
    (lambda: (torch.ones(2, 3),), r"input_ids must be int64/int32, got torch.float32"),
    (lambda: (torch.tensor([[1, 99]]),), r"input_ids out of range \[0, 99\): min 1, max 99"),
    (lambda: (torch.tensor([[-1, 2]]),), r"input_ids out of range \[0, 99\): min -1, max 2"),
    (lambda: (torch.ones(1, 65, dtype=torch.long),), r"sequence length 65 exceeds max_position_embeddings \(64\)"),
    (lambda: (torch.ones(0, 3, dtype=torch.long),), r"input_ids is empty: shape \(0, 3\)"),
    (lambda: (torch.ones(2, 6, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)),
     r"attention_mask has shape \(2, 5\), expected \(2, 6\) like input_ids"),
    (lambda: (torch.ones(2, 6, dtype=torch.long), torch.ones(6, dtype=torch.long)),
     r"attention_mask has shape \(6,\), expected \(2, 6\)"),
    (lambda: (torch.ones(1, 3, dtype=torch.long), torch.tensor([[1, 2, 0]])),
     r"attention_mask must contain only 0 and 1, got value\(s\) \[2\]"),
    (lambda: (torch.ones(1, 3, dtype=torch.long), torch.tensor([[0, 1, 1]])),
     r"attention_mask\[:, 0\] must be 1"),
    (lambda: (torch.ones(1, 3, dtype=torch.long), None, torch.ones(1, 4, dtype=torch.long)),
     r"token_type_ids has shape \(1, 4\), expected \(1, 3\)"),
    (lambda: (torch.ones(1, 3, dtype=torch.long), None, torch.tensor([[0, 2, 1]])),
     r"token_type_ids out of range \[0, 2\): min 0, max 2"),
])
def test_bad_inputs_raise_value_error_with_clear_message(make_args, message):
    model = BertEncoder(TINY).eval()
    with pytest.raises(ValueError, match=message):
        model(*make_args())


def test_valid_edge_inputs_are_accepted():
    model = BertEncoder(TINY).eval()
    out = model(torch.full((1, 64), 98, dtype=torch.int32))                 # max length, max id, int32
    assert out.last_hidden_state.shape == (1, 64, 32)
    out = model(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool))
    assert out.last_hidden_state.shape == (2, 3, 32)
