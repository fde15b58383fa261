"""The README's main job: `python -m mpee_ref demo` on the committed fine-tuned SST-2 model."""

from __future__ import annotations

import re
from dataclasses import replace

from mpee_ref.__main__ import main
from mpee_ref.experiments.demo import DEFAULT_MODEL
from mpee_ref.mpee import load_mpee


def test_committed_demo_model_is_small_and_loads():
    size = (DEFAULT_MODEL / "model.safetensors").stat().st_size
    assert size < 50 * 1024 * 1024
    model = load_mpee(DEFAULT_MODEL)
    assert model.mpee_config.num_labels == 2 and model.bert_config.num_hidden_layers == 6
    out = model.infer(["a gorgeous , witty , seductive movie .", "an utterly incompetent conclusion ."])
    assert out.predictions.tolist() == [1, 0]           # positive, negative


def test_demo_prints_a_layer_by_layer_trace(capsys):
    # the built-in examples at the model's default operating point (mpee_config.json): one sentence
    # leaves at layer 1 (the paper's "exit immediately at the first layer"), another prunes and fuses tokens
    F = load_mpee(DEFAULT_MODEL).mpee_config.threshold
    assert main(["demo", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    blocks = out.split('\n"')[1:]                                           # one block per sentence
    assert len(blocks) == 4
    exits = []
    for block in blocks:
        rows = re.findall(r"^\s+(\d)\s+(\d+)→(\d+)\s+([\d.]+)\s+([<≥]) F\s+(EXIT|continue)$", block, re.M)
        assert rows, block
        assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))    # layers 1..exit
        assert rows[-1][5] == "EXIT" and all(r[5] == "continue" for r in rows[:-1])
        assert all((float(r[3]) < F) == (r[4] == "<") for r in rows[:-1])    # entropy vs F shown right
        assert re.search(r"→ (positive|negative) at layer \d/6", block) and re.search(r"ρ = [\d.]+×", block)
        exits.append(len(rows))
    assert 1 in exits and max(exits) > 2
    assert "fused into <fused@2>" in out and "kept: [CLS]" in out


def test_committed_demo_model_heads_are_alive_at_every_layer():
    # the shallow heads of the first demo model were constant (every sentence "positive" at layers 1-3);
    # with exits off, each layer's classifier memory must separate these sentences
    model = load_mpee(DEFAULT_MODEL)
    texts = ["a gorgeous , witty , seductive movie .", "an utterly incompetent conclusion .",
             "a masterpiece of warmth and wit .", "dull , lifeless and badly acted .",
             "one of the best films of the year .", "the worst movie i have seen in ages ."]
    enc = model.tokenizer(texts)
    out = model(enc.input_ids, enc.attention_mask, enc.token_type_ids,
                config=replace(model.mpee_config, token_exit=False))
    for l, memory in enumerate(out.memories, start=1):                      # (B, C) per layer
        assert memory.argmax(-1).tolist() == [1, 0, 1, 0, 1, 0], f"layer {l}"


def test_demo_missing_model_is_one_clear_error(tmp_path, capsys):
    assert main(["demo", "x", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an MPEE model folder" in err


def test_demo_damaged_task_json_is_one_clear_error(tmp_path, capsys):
    import shutil
    folder = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL, folder)
    for text, what in (("{not json", "not valid JSON"), ('{"label_names": [1, 2]}', "list of strings")):
        (folder / "task.json").write_text(text)
        assert main(["demo", "x", "--model", str(folder), "--threads", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "task.json" in err and what in err


def test_demo_device_flag_moves_the_model_and_the_encoded_texts(monkeypatch, capsys):
    import torch

    from mpee_ref.experiments import demo
    from mpee_ref.mpee import MPEEModel
    capsys.readouterr()
    assert main(["demo", "x", "--device", "nonsense"]) == 2
    assert "--device: 'nonsense' is not a torch device" in capsys.readouterr().err
    monkeypatch.setattr(demo, "resolve_device", torch.device)        # let "meta" through: no GPU needed here
    seen = []

    def spy(self, input_ids, attention_mask, token_type_ids):
        seen.append(({t.device.type for t in (input_ids, attention_mask, token_type_ids)},
                     {p.device.type for p in self.parameters()}))
        raise ValueError("stop here")                      # a meta tensor has no values to classify

    monkeypatch.setattr(MPEEModel, "_check", spy)
    assert main(["demo", "x", "--device", "meta", "--threads", "1"]) == 2
    assert seen == [({"meta"}, {"meta"})]
