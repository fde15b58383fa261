"""tools/four_stage.py: the four-stage schedule as one resumable command, on a tiny random BERT."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import load_tool
from test_train import make_tiny_encoder, make_tiny_sst2

four_stage = load_tool("four_stage")


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    enc, data = make_tiny_encoder(tmp_path / "enc"), make_tiny_sst2(tmp_path / "data")
    return ["--task", "sst-2", "--data-dir", str(data), "--model", str(enc), "--out", str(tmp_path / "s"),
            "--max-seq-length", "16", "--batch-size", "4", "--max-train-examples", "8", "--max-eval-examples", "4",
            "--max-steps", "2", *extra]


def test_dry_run_prints_the_four_commands_and_runs_nothing(tmp_path, capsys):
    assert four_stage.main(_argv(tmp_path, "--dry-run", "--freeze-layers", "1")) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("[")]
    assert [l.split("]")[0][1:] for l in lines] == ["plain", "joint", "top", "heads"]
    plain, joint, top, heads = lines
    assert "--mode plain" in plain and "--preset paper" in plain and "--epochs 3" in plain
    assert "--preset recipe --head-lr-mult 20.0" in joint and "--freeze" not in joint
    assert f"--model {tmp_path / 's' / 'joint' / 'final'}" in top and "--mode plain --freeze-layers 1" in top
    assert "--freeze-backbone --freeze-layers 1" in heads and "--head-lr-mult 20.0" in heads
    assert all("--seed 0" in l and "--max-steps 2" in l for l in lines)
    assert "token_exit" not in out
    assert not (tmp_path / "s").exists()
    assert four_stage.main(_argv(tmp_path, "--dry-run", "--prune-top")) == 0          # L14: stage 3 prunes
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[")]
    assert ["--set token_exit=true" in l for l in lines] == [False, False, True, False]


def test_plain_flag_reuses_a_model_and_a_bad_one_is_one_clear_error(tmp_path, capsys):
    argv = _argv(tmp_path, "--dry-run")
    assert four_stage.main(argv + ["--plain", str(tmp_path / "enc")]) == 0
    out = capsys.readouterr().out
    assert "[plain]" not in out and f"--model {tmp_path / 'enc'} --preset recipe" in out
    assert four_stage.main(argv + ["--plain", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --plain: ") and "nowhere" in err and "model.safetensors" in err


def test_the_schedule_trains_freezes_what_it_says_and_skips_finished_stages(tmp_path, capsys):
    argv = _argv(tmp_path, "--freeze-layers", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # the tiny encoder's pooler looks untrained (L10)
        assert four_stage.main(argv) == 0
    s = tmp_path / "s"
    w = {name: load_file(str(s / name / "final" / "model.safetensors")) for name in four_stage.STAGES[1:]}
    bottom = [k for k in w["joint"] if k.startswith(("bert.embeddings.", "bert.encoder.layer.0.", "exits.0."))]
    backbone = [k for k in w["top"] if k.startswith("bert.")]
    assert bottom and all(torch.equal(w["top"][k], w["joint"][k]) for k in bottom)          # stage 3 froze 1..K
    assert not torch.equal(w["top"]["bert.encoder.layer.1.attention.self.query.weight"],
                           w["joint"]["bert.encoder.layer.1.attention.self.query.weight"])
    assert all(torch.equal(w["heads"][k], w["top"][k]) for k in backbone + bottom)           # stage 4: heads only
    assert not torch.equal(w["heads"]["exits.1.classifier.weight"], w["top"]["exits.1.classifier.weight"])
    assert "model: " + str(s / "heads" / "final") in capsys.readouterr().out

    assert four_stage.main(argv) == 0                   # everything done: nothing runs again
    out = capsys.readouterr().out
    assert out.count("done, skipped") == 4 and "$ python" not in out


def test_a_failing_stage_stops_the_schedule_with_its_exit_code(tmp_path, capsys):
    argv = _argv(tmp_path, "--freeze-layers", "3")      # the tiny model has 3 layers: stage 3 must refuse
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = four_stage.main(argv)
    assert rc == 2
    err = capsys.readouterr().err
    assert "stage 'top' failed" in err
    assert not (tmp_path / "s" / "heads").exists()
