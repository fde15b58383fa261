"""The exit-head recipe (docs/interpretation/layer_exit_and_losses.md, L10): per-feature standardisation
of h_CLS before Eq. (9) (``head_norm``) and its folding into the head, ``head_init``, ``--head-lr-mult``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from mpee_ref.config import BertConfig
from mpee_ref.experiments import build_config
from mpee_ref.experiments.train import param_groups
from mpee_ref.layer_exit import ExitHead, HeadStandardiser, fold_standardisation, standardise_cls
from mpee_ref.mpee import MPEEConfig, MPEEModel, load_mpee, save_mpee

D, C = 32, 3  # pairwise-distinct tiny sizes


def test_standardise_cls_hand_example():
    # features: mean [1, 10], var [4, 0.25], eps 0 -> ([3, 10.5] - [1, 10]) / [2, 0.5] = [1, 1]
    h = torch.tensor([[3.0, 10.5]], dtype=torch.float64)
    out = standardise_cls(h, torch.tensor([1.0, 10.0], dtype=torch.float64),
                          torch.tensor([4.0, 0.25], dtype=torch.float64), 0.0)
    assert torch.equal(out, torch.tensor([[1.0, 1.0]], dtype=torch.float64))


@given(seed=st.integers(0, 2**31 - 1), offset=st.floats(-10, 10), spread=st.floats(1e-3, 10))
def test_fold_standardisation_equals_standardise_then_affine(seed, offset, spread):
    g = torch.Generator().manual_seed(seed)
    h = offset + spread * torch.randn(6, D, generator=g, dtype=torch.float64)        # (6, D)
    mean, var = h.mean(0), h.var(0) + 0.1                                             # (D,), (D,)
    w, b = torch.randn(C, D, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    w2, b2 = fold_standardisation(w, b, mean, var, 1e-5)
    direct = standardise_cls(h, mean, var, 1e-5) @ w.T + b                            # (6, C)
    assert torch.allclose(h @ w2.T + b2, direct, atol=1e-9 * (1 + direct.abs().max()))


def test_standardiser_matches_batchnorm_without_affine():
    torch.manual_seed(0)
    ours, ref = HeadStandardiser(D).double(), nn.BatchNorm1d(D, affine=False).double()
    for _ in range(3):                                       # training: batch statistics, running update
        x = 5.0 + 0.01 * torch.randn(8, D, dtype=torch.float64)
        assert torch.allclose(ours(x), ref(x), atol=1e-12)
    assert torch.allclose(ours.running_mean, ref.running_mean, atol=1e-15)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-15)
    ours.eval(), ref.eval()
    x = 5.0 + 0.01 * torch.randn(4, D, dtype=torch.float64)
    assert torch.allclose(ours(x), ref(x), atol=1e-12)
    ours.train()                                             # a training batch of one uses the running stats
    before = ours.running_mean.clone()
    assert torch.allclose(ours(x[:1]), ref(x[:1]), atol=1e-12) and torch.equal(ours.running_mean, before)


@pytest.mark.parametrize("kind", ["pooler", "tanh"])
def test_folded_head_equals_normalised_head_in_eval(kind):
    torch.manual_seed(1)
    head = ExitHead(D, C, kind, norm=True).double()
    head.norm.running_mean.normal_(3.0, 2.0)
    head.norm.running_var.uniform_(1e-4, 2.0)
    head.eval()
    folded = head.folded()
    assert folded.norm is None and not folded.training
    assert not any(k.startswith("norm.") for k in folded.state_dict())
    h = 3.0 + torch.randn(5, D, dtype=torch.float64)
    assert torch.allclose(folded(h), head(h), atol=1e-10)


def test_normalised_head_learns_where_the_raw_head_stays_constant():
    # The failure the recipe fixes, in miniature: h_CLS = a large shared offset + a tiny per-sample signal
    # (as MiniLM-L6's shallow [CLS]: outlier features ~8, spread ~1e-3). The label is the sign of feature 0.
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(256, D, generator=g)                                       # (256, D)
    h = 8.0 * torch.sign(torch.randn(D, generator=g)) + 1e-3 * signal               # (256, D)
    y = (signal[:, 0] > 0).long()                                                   # (256,)

    def accuracy_after_training(norm: bool) -> float:
        torch.manual_seed(0)
        head = ExitHead(D, 2, "pooler", dropout_p=0.0, norm=norm)
        opt = torch.optim.Adam(head.parameters(), lr=1e-3)
        for step in range(150):
            idx = torch.arange(32) + 32 * (step % 8)
            loss = nn.functional.cross_entropy(head(h[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        return float((head(h).argmax(-1) == y).float().mean())

    raw, normalised = accuracy_after_training(False), accuracy_after_training(True)
    assert raw < 0.65, raw                 # still (close to) a constant prediction
    assert normalised > 0.8, normalised


BERT = BertConfig(vocab_size=99, hidden_size=D, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64)


def _trained_norm_model() -> MPEEModel:
    torch.manual_seed(0)
    model = MPEEModel(BERT, MPEEConfig.recipe(C, prune_layers=(2,), threshold=0.9)).double()
    ids = torch.randint(5, 99, (6, 9))
    model.train()
    model(ids, torch.ones_like(ids), labels=torch.arange(6) % C).loss.total.backward()   # moves the stats
    return model.eval()


def test_fold_head_norms_keeps_inference_and_training_outputs(tmp_path):
    model = _trained_norm_model()
    assert float(model.exits[0].norm.running_mean.abs().max()) > 0
    ids = torch.randint(5, 99, (4, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    before_train = model(ids, mask).memories
    before = model.infer({"input_ids": ids, "attention_mask": mask})
    model.fold_head_norms()
    assert model.mpee_config.head_norm is False and all(h.norm is None for h in model.exits)
    assert torch.allclose(model(ids, mask).memories, before_train, atol=1e-10)
    after = model.infer({"input_ids": ids, "attention_mask": mask})
    assert [s.exit_layer for s in after.samples] == [s.exit_layer for s in before.samples]
    for a, b in zip(after.samples, before.samples):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-10)


def test_head_norm_model_round_trips_and_cannot_be_overridden(tmp_path):
    model = _trained_norm_model().float()
    save_mpee(model, tmp_path / "m")
    (tmp_path / "m" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] +
                                                        [f"w{i}" for i in range(95)]) + "\n")
    back = load_mpee(tmp_path / "m")
    assert back.mpee_config.head_norm is True
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with pytest.raises(ValueError, match="head_norm"):
        load_mpee(tmp_path / "m", head_norm=False)
    with pytest.raises(ValueError, match="head_norm"):
        back.infer({"input_ids": torch.randint(5, 99, (1, 4))}, head_norm=False)


def test_recipe_preset_and_build_config():
    assert MPEEConfig.recipe().head_norm and not MPEEConfig.paper().head_norm
    assert not MPEEConfig.authors().head_norm
    cfg = build_config(2, 6, preset="recipe", overrides={"threshold": 0.2})
    assert cfg.head_norm and cfg.threshold == 0.2 and cfg.head == "pooler"
    with pytest.raises(ValueError, match="head_init"):
        MPEEConfig(head_init="copy")


def test_param_groups_split_backbone_from_heads_and_teacher():
    model = MPEEModel(BERT, MPEEConfig(num_labels=C))
    back, heads = param_groups(model, 5e-5, 20.0)
    assert back["lr"] == 5e-5 and heads["lr"] == pytest.approx(1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("bert.") for p in back["params"])
    assert all(names[id(p)].startswith(("exits.", "teacher.")) for p in heads["params"])
    assert len(back["params"]) + len(heads["params"]) == len(list(model.parameters()))


def test_head_init_pooler_copies_and_warns_fresh_does_not(tmp_path):
    from test_train import make_tiny_encoder
    enc = make_tiny_encoder(tmp_path / "enc")               # a random encoder: its pooler bias is all zero
    with pytest.warns(UserWarning, match="pooler looks untrained"):
        copied = load_mpee(enc)
    assert torch.equal(copied.exits[0].pooler.dense.weight, copied.bert.pooler.dense.weight)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = load_mpee(enc, head_init="fresh")
    assert not torch.equal(fresh.exits[0].pooler.dense.weight, fresh.bert.pooler.dense.weight)
    assert 0.015 < float(fresh.exits[0].pooler.dense.weight.std()) < 0.025         # normal(0, 0.02)


def test_two_stage_training_freezes_the_backbone_and_adds_standardisers(tmp_path):
    from test_train import make_tiny_encoder, make_tiny_sst2
    from mpee_ref.experiments import TrainArgs, train_model
    from safetensors.torch import load_file

    enc, data = make_tiny_encoder(tmp_path / "enc"), make_tiny_sst2(tmp_path / "data")
    common = dict(task="sst-2", data_dir=str(data), batch_size=4, lr=1e-3, warmup_ratio=0.0,
                  max_train_examples=8, max_eval_examples=4, progress=False, deterministic=False, max_steps=2)
    with pytest.warns(UserWarning):
        train_model(TrainArgs(out=str(tmp_path / "plain"), model=str(enc), mode="plain", **common))
    stage1 = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    train_model(TrainArgs(out=str(tmp_path / "heads"), model=str(tmp_path / "plain" / "final"), preset="recipe",
                          freeze_backbone=True, head_lr_mult=2.0, **common))
    stage2 = load_file(str(tmp_path / "heads" / "final" / "model.safetensors"))
    assert all(torch.equal(stage2[k], v) for k, v in stage1.items() if k.startswith("bert."))
    assert not torch.equal(stage2["exits.0.classifier.weight"], stage1["exits.0.classifier.weight"])
    assert float(stage2["exits.0.norm.running_var"].sub(1).abs().max()) > 0      # statistics were gathered
    assert load_mpee(tmp_path / "heads" / "final").mpee_config.head_norm


def test_freeze_layers_trains_only_the_layers_above_k_and_keeps_their_exits(tmp_path):
    """``--freeze-layers 1`` (L13) on a recipe model: the embeddings, layer 1 and its exit head (weights and
    running statistics) are bit-identical after training; every layer above, its head and the teacher move."""
    from test_train import make_tiny_encoder, make_tiny_sst2
    from mpee_ref.experiments import TrainArgs, train_model
    from safetensors.torch import load_file

    enc, data = make_tiny_encoder(tmp_path / "enc"), make_tiny_sst2(tmp_path / "data")
    common = dict(task="sst-2", data_dir=str(data), batch_size=4, lr=1e-2, warmup_ratio=0.0, preset="recipe",
                  max_train_examples=8, max_eval_examples=4, progress=False, deterministic=False, max_steps=2)
    with pytest.warns(UserWarning):
        train_model(TrainArgs(out=str(tmp_path / "joint"), model=str(enc), **common))
    before = load_file(str(tmp_path / "joint" / "final" / "model.safetensors"))
    train_model(TrainArgs(out=str(tmp_path / "top"), model=str(tmp_path / "joint" / "final"), freeze_layers=1,
                          head_lr_mult=2.0, **common))
    after = load_file(str(tmp_path / "top" / "final" / "model.safetensors"))
    frozen = [k for k in before if k.startswith(("bert.embeddings.", "bert.encoder.layer.0.", "exits.0."))]
    assert "exits.0.norm.running_mean" in frozen and len(frozen) > 20
    assert all(torch.equal(after[k], before[k]) for k in frozen)
    for k in ("bert.encoder.layer.1.attention.self.query.weight", "exits.1.classifier.weight",
              "exits.1.norm.running_mean", "teacher.dense.weight"):
        assert not torch.equal(after[k], before[k]), k


def test_frozen_by_layers_names_the_embeddings_the_first_k_layers_and_their_heads():
    from mpee_ref.experiments.train import frozen_by_layers
    assert frozen_by_layers("bert.embeddings.word_embeddings.weight", 1)
    assert frozen_by_layers("bert.encoder.layer.1.output.dense.bias", 2)
    assert not frozen_by_layers("bert.encoder.layer.2.output.dense.bias", 2)
    assert frozen_by_layers("exits.1.classifier.weight", 2) and not frozen_by_layers("exits.10.classifier.weight", 2)
    assert not frozen_by_layers("teacher.dense.weight", 5) and not frozen_by_layers("bert.pooler.dense.weight", 5)
    assert not frozen_by_layers("bert.embeddings.word_embeddings.weight", 0)


def test_freeze_layers_refuses_every_layer_and_other_freezes():
    from mpee_ref.experiments import TrainArgs
    model = MPEEModel(BertConfig(vocab_size=50, hidden_size=D, num_hidden_layers=3, num_attention_heads=4,
                                 intermediate_size=48, max_position_embeddings=16), MPEEConfig(num_labels=C))
    with pytest.raises(ValueError, match="freeze at most 2"):
        param_groups(model, 1e-3, 1.0, freeze_layers=3)
    with pytest.raises(ValueError, match="--freeze-layers: MPEE only"):
        TrainArgs(task="sst-2", data_dir="d", out="o", model="m", freeze_layers=1, method="pabee")
    with pytest.raises(ValueError, match="freeze_layers must be an int >= 0"):
        TrainArgs(task="sst-2", data_dir="d", out="o", model="m", freeze_layers=-1)
