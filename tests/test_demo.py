"""The README's main job: `python -m mpee_ref demo` on the committed fine-tuned SST-2 model."""

from __future__ import annotations

import re

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
    assert main(["demo", "a gorgeous , witty , seductive movie .", "-F", "0.6", "--r-ee", "0.5",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d)\s+(\d+)→(\d+)\s+([\d.]+)\s+([<≥]) F\s+(EXIT|continue)$", out, re.M)
    assert rows, out
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1))        # layers 1..exit
    assert rows[-1][5] == "EXIT" and all(r[5] == "continue" for r in rows[:-1])
    assert all((float(r[3]) < 0.6) == (r[4] == "<") for r in rows)          # entropy vs F shown right
    assert "fused into <fused@2>" in out and "kept: [CLS]" in out
    assert re.search(r"→ positive at layer \d/6", out) and re.search(r"ρ = [\d.]+×", out)


def test_demo_missing_model_is_one_clear_error(tmp_path, capsys):
    assert main(["demo", "x", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an MPEE model folder" in err
