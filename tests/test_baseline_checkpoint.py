"""Baseline checkpoints: new -> save -> load round trip on the real MiniLM, stage override, clear errors."""

import json

import pytest
import torch

from mpee_ref.baselines import DeeBERT
from mpee_ref.baselines.checkpoint import BASELINE_CONFIG, load_baseline, new_baseline, save_baseline


@pytest.fixture(scope="module")
def deebert(minilm_dir):
    with pytest.warns(UserWarning, match="pooler looks untrained"):
        return new_baseline("deebert", minilm_dir, seed=1, num_labels=2, entropy_threshold=0.2)


def test_new_baseline_is_seeded_and_starts_from_the_pooler(minilm_dir, deebert):
    with pytest.warns(UserWarning):
        again = new_baseline("deebert", minilm_dir, seed=1, num_labels=2, entropy_threshold=0.2)
    for (k, a), b in zip(deebert.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    pooler = deebert.bert.pooler.dense.weight
    assert all(torch.equal(h.pooler.dense.weight, pooler) for h in deebert.heads)


def test_round_trip_gives_the_same_predictions(deebert, tmp_path):
    save_baseline(deebert, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / BASELINE_CONFIG).read_text())
    assert meta["method"] == "deebert" and meta["config"]["entropy_threshold"] == 0.2
    method, loaded = load_baseline(tmp_path / "m", stage="ramps")
    assert method == "deebert" and isinstance(loaded, DeeBERT) and loaded.config.stage == "ramps"
    enc = loaded.tokenizer(["a gripping , funny film", "dull"])
    batch = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.token_type_ids}
    a, b = deebert.eval().infer(batch), loaded.infer(batch)
    assert [s.probabilities for s in a.samples] == [s.probabilities for s in b.samples]
    assert a.rho == b.rho


def test_errors_name_the_file_and_the_problem(deebert, tmp_path):
    with pytest.raises(FileNotFoundError, match=BASELINE_CONFIG):
        load_baseline(tmp_path)
    folder = save_baseline(deebert, tmp_path / "m")
    with pytest.raises(ValueError, match="unknown DeeBERTConfig field"):
        load_baseline(folder, patience=3)
    (folder / BASELINE_CONFIG).write_text(json.dumps({"format": "mpee_ref-baseline-1", "method": "static",
                                                      "config": {"num_labels": 2}}))
    with pytest.raises(ValueError, match=r"does not match the static model.*unexpected \['heads\.1"):
        load_baseline(folder)                               # six classifiers in the file, one in the model
    with pytest.raises(ValueError, match="not a registered baseline"):
        save_baseline(torch.nn.Linear(2, 2), tmp_path / "x")
