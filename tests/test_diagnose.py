"""``python -m mpee_ref diagnose`` (mpee_ref/experiments/diagnose.py): per-layer exit-head health."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mpee_ref.__main__ import main
from mpee_ref.experiments.diagnose import layer_health, layer_outputs
from mpee_ref.experiments.batching import encode_examples
from mpee_ref.data import read_glue
from mpee_ref.mpee import load_mpee

from test_train import make_tiny_encoder, make_tiny_sst2, one_thread  # noqa: F401 (autouse fixture)


def test_layer_health_hand_example():
    # layer 1: constant logits [0, 0] -> predicts class 0 for all, entropy ln 2, spread 0, dead.
    # layer 2: logits +-[1, -1] following the label -> accuracy 1, spread 1 (centred logits +-1).
    labels = [0, 1, 0, 1]
    z1 = torch.zeros(4, 2)
    z2 = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    # h_CLS: layer 1 the same vector for all (cosine 1, std 0, max |mean| 8); layer 2 +-e1, +-e2:
    # pairs (e1,-e1) and (e2,-e2) have cosine -1, the 8 other ordered pairs 0 -> mean -4/12 = -1/3
    cls1 = torch.tensor([[8.0, 1.0]] * 4)
    cls2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    outputs = {"logits": torch.stack([z1, z2]), "memories": torch.stack([z1, z2]),
               "eta": torch.tensor([[0.25, 0.75]] * 4), "cls": torch.stack([cls1, cls2])}
    h1, h2 = layer_health(outputs, labels, "sst-2")
    assert h1.metric == {"accuracy": 0.5} and h1.majority_share == 1.0 and h1.dead
    assert h1.mean_entropy == pytest.approx(math.log(2)) and h1.logit_spread == 0.0 and h1.eta == 0.25
    assert h2.metric == {"accuracy": 1.0} and h2.majority_share == 0.5 and not h2.dead
    assert h2.logit_spread == pytest.approx(1.0) and h2.eta == 0.75
    assert (h1.cls_cosine, h1.cls_feature_std, h1.cls_max_abs_mean) == (pytest.approx(1.0), 0.0, 8.0)
    assert h2.cls_cosine == pytest.approx(-1 / 3) and h2.cls_feature_std == pytest.approx(0.5 ** 0.5)


def test_layer_outputs_run_every_layer_with_exits_off(tmp_path):
    enc = make_tiny_encoder(tmp_path / "enc")
    data_dir = make_tiny_sst2(tmp_path / "data")
    with pytest.warns(UserWarning):
        model = load_mpee(enc, threshold=10.0, r_ee=0.5)      # would exit everything at layer 1, prune half
    data = encode_examples(model.tokenizer, read_glue("sst-2", data_dir, "dev"), 32)
    out = layer_outputs(model, data, batch_size=3)
    assert out["logits"].shape == (3, 10, 2) and out["eta"].shape == (10, 3)
    # the same as the training forward with token exit off, one sample at a time
    from mpee_ref.experiments.batching import collate
    from dataclasses import replace
    one = collate(data, [4], 0)
    ref = model(one["input_ids"], one["attention_mask"], one["token_type_ids"],
                config=replace(model.mpee_config, token_exit=False))
    assert torch.allclose(out["memories"][:, 4], ref.memories[:, 0], atol=1e-5)


def test_diagnose_cli_writes_json_and_plot(tmp_path, capsys):
    enc = make_tiny_encoder(tmp_path / "enc")
    data_dir = make_tiny_sst2(tmp_path / "data")
    with pytest.warns(UserWarning):
        rc = main(["diagnose", "--model", str(enc), "--task", "sst-2", "--data-dir", str(data_dir),
                   "--out", str(tmp_path / "d"), "--batch-size", "4"])
    assert rc == 0
    result = json.loads((tmp_path / "d" / "diagnose.json").read_text())
    assert [l["layer"] for l in result["layers"]] == [1, 2, 3] and result["n_examples"] == 10
    assert set(result["layers"][0]) == {"layer", "metric", "head_metric", "mean_entropy", "logit_spread",
                                        "majority_share", "eta", "dead", "cls_cosine", "cls_feature_std",
                                        "cls_max_abs_mean"}
    assert sum(l["eta"] for l in result["layers"]) == pytest.approx(1.0, abs=1e-5)
    pytest.importorskip("matplotlib")
    assert (tmp_path / "d" / "diagnose.png").stat().st_size > 1000
    assert "layer 1:" in capsys.readouterr().err
