"""load_mpee / save_mpee (mpee_ref/mpee/checkpoint.py) on the real MiniLM checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpee_ref.mpee import load_mpee, save_mpee

TEXTS = ["a gorgeous , witty , seductive movie .", "the plot is a mess and the acting is worse ."]


@pytest.fixture(scope="module")
def untrained(minilm_dir):
    return load_mpee(minilm_dir, num_labels=2, threshold=0.5)


def test_encoder_folder_gives_reproducible_untrained_heads(minilm_dir, untrained):
    again = load_mpee(minilm_dir, num_labels=2)
    for (name, a), (_, b) in zip(untrained.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    pooler = untrained.bert.pooler.dense
    for head in untrained.exits:                        # every pooler head starts as the pretrained pooler
        assert torch.equal(head.pooler.dense.weight, pooler.weight)
    assert untrained.mpee_config.threshold == 0.5 and not untrained.training


def test_infer_on_text(untrained):
    out = untrained.infer(TEXTS)
    assert len(out.samples) == 2
    for s in out.samples:
        assert s.input_ids[0] == 101 and s.input_ids[-1] == 102          # [CLS] ... [SEP] of the real vocab
        assert abs(sum(s.probabilities) - 1.0) < 1e-6
        assert 1 <= s.exit_layer <= 6 and s.flops.executed > 0


def test_save_load_round_trip(untrained, tmp_path):
    save_mpee(untrained, tmp_path / "m")
    back = load_mpee(tmp_path / "m")
    assert back.mpee_config == untrained.mpee_config
    for (name, a), (_, b) in zip(untrained.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    assert not list((tmp_path / "m").glob("*.tmp"))
    ref, got = untrained.infer(TEXTS), back.infer(TEXTS)
    assert [s.probabilities for s in ref.samples] == [s.probabilities for s in got.samples]
    # fp16 storage halves the file and changes predictions' probabilities by < 1e-2 here
    save_mpee(untrained, tmp_path / "h", dtype=torch.float16)
    half = load_mpee(tmp_path / "h").infer(TEXTS)
    for a, b in zip(ref.samples, half.samples):
        assert max(abs(x - y) for x, y in zip(a.probabilities, b.probabilities)) < 1e-2


def test_errors_name_the_problem(untrained, tmp_path):
    folder = save_mpee(untrained, tmp_path / "m")
    with pytest.raises(ValueError, match="num_labels"):
        load_mpee(folder, num_labels=3)
    state = load_file(str(folder / "model.safetensors"))
    state.pop("exits.0.classifier.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.safetensors.*exits\.0\.classifier\.weight.*extra\.weight"):
        load_mpee(folder)
    (folder / "mpee_config.json").write_text(json.dumps({"num_labels": 2, "bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        load_mpee(folder)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_mpee(tmp_path / "nothing")


def test_infer_on_text_warns_when_the_tokenizer_truncates(untrained):
    import warnings
    long_text = " ".join(["word"] * 300)
    with pytest.warns(UserWarning, match=r"1 of 2 inputs \(indices \[1\]\) were truncated to the tokenizer's "
                                         r"max_length 128"):
        untrained.infer(["short text", long_text])
    exactly = " ".join(["word"] * 126)                       # [CLS] + 126 + [SEP] = 128: full, not cut
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        untrained.infer([exactly])
