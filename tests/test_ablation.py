"""``python -m mpee_ref ablation`` (mpee_ref/experiments/ablation.py): Tables 2 and 3.

Inference-only rows on a tiny random MPEE model (untrained heads: checked are the bookkeeping facts that
hold for any weights), and the full mode (one tiny training per row, a couple of steps) for Table 3.
"""

from __future__ import annotations

import json

import pytest

from mpee_ref.__main__ import main
from mpee_ref.data import read_glue
from mpee_ref.experiments import encode_examples, evaluate_model, run_inference
from mpee_ref.experiments.ablation import (TABLE2_ROWS, config_changes, inference_only_rows, table_markdown,
                                           train_args_from_cli)
from mpee_ref.mpee import MPEEConfig, load_mpee, save_mpee
from test_train import deterministic_calls, make_tiny_encoder, make_tiny_sst2, one_thread  # noqa: F401 (autouse)

L = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("abltiny")
    enc = make_tiny_encoder(root / "enc")
    data_dir = make_tiny_sst2(root / "data", n_train=8, n_dev=10)
    model = load_mpee(enc)
    save_mpee(model, root / "mpee")                          # an "MPEE folder" (mpee_config.json) for the CLI
    dev = read_glue("sst-2", data_dir, "dev")
    data = encode_examples(model.tokenizer, dev, 128)
    ent1 = sorted(s.layers[0].entropy for s in run_inference(model, data, threshold=0.0))
    mid = (ent1[4] + ent1[5]) / 2                            # some samples exit at layer 1, some do not
    return {"enc": enc, "mpee": root / "mpee", "data_dir": data_dir, "model": model, "dev": dev, "data": data,
            "mid": mid}


def test_config_changes_are_the_without_switches():
    base = MPEEConfig()
    assert config_changes(base, None) == {}
    assert config_changes(base, "att-memory") == {"attention_memory": False}
    assert config_changes(base, "ee-fusion") == {"fusion": "drop"}
    assert config_changes(base, "layer-ee") == {"layer_exit": False}
    assert config_changes(base, "token-ee") == {"token_exit": False}
    assert config_changes(base, "ee-memory") == {"classifier_memory": False}


def test_inference_only_table2_rows_differ_where_they_must(setup):
    model, data, mid = setup["model"], setup["data"], setup["mid"]
    rows = inference_only_rows(model, data, "sst-2", "table2", threshold=mid, r_ee=0.5, batch_size=4)
    assert [r["name"] for r in rows] == [n for n, _ in TABLE2_ROWS]
    by = {r["name"]: r for r in rows}
    assert all(r["mode"] == "inference-only" for r in rows)
    assert "needs retraining" in by["w/o EE-memory"]["skipped"] and "needs retraining" in by["w/o WSD"]["skipped"]
    full = by["MPEE"]
    ref = evaluate_model(model, setup["dev"], "sst-2", 1, threshold=mid, r_ee=0.5)
    assert full["metrics"] == ref["metrics"] and full["rho"] == pytest.approx(ref["rho"], rel=1e-12)
    assert 1.0 < full["mean_exit_layer"] < L
    # w/o Token-EE: every executed layer sees the whole input (mean over the samples that reach each layer)
    no_tok = by["w/o Token-EE"]
    assert no_tok["config_changes"] == {"token_exit": False}
    per_exit = run_inference(model, data, 4, threshold=mid, token_exit=False)
    assert all(s.tokens_per_layer == (len(s.input_ids),) * s.exit_layer for s in per_exit)
    assert no_tok["mean_tokens_per_layer"][0] == no_tok["mean_input_tokens"] == full["mean_input_tokens"]
    assert no_tok["rho"] < full["rho"]
    # w/o Layer-EE: every sample runs all L layers
    no_layer = by["w/o Layer-EE"]
    assert no_layer["mean_exit_layer"] == L and no_layer["rho"] < full["rho"]
    # the token-pruning rows really prune at R_ee = 0.5 (layers 1, 2, 3 = scale_layers((4, 7, 10), 3))
    for name in ("MPEE", "w/o Att-memory", "w/o EE-fusion", "w/o Layer-EE"):
        assert by[name]["mean_tokens_per_layer"][0] < by[name]["mean_input_tokens"]
    # w/o EE-fusion has no fused token: at the first pruning layer (same N, same m) one token fewer than MPEE,
    # and strictly fewer tokens from then on
    nf = run_inference(model, data, 4, r_ee=0.5, layer_exit=False, fusion="drop")
    wf = run_inference(model, data, 4, r_ee=0.5, layer_exit=False)
    assert all(a.tokens_per_layer[0] == b.tokens_per_layer[0] - 1 for a, b in zip(nf, wf))
    assert all(x < y for a, b in zip(nf, wf) for x, y in zip(a.tokens_per_layer, b.tokens_per_layer))
    md = table_markdown({"table": "table2", "task": "sst-2", "mode": "inference-only", "threshold": mid,
                         "r_ee": 0.5, "n_examples": 10, "split": "dev", "metric_names": ["accuracy"], "rows": rows})
    assert "inference-only" in md and "the paper retrains" in md and md.count("n/a (") == 2
    assert f"| w/o Layer-EE | {100 * no_layer['metrics']['accuracy']:.1f} | {no_layer['rho']:.2f}× |" in md


def test_inference_only_table3_all_token_attention(setup):
    model, data = setup["model"], setup["data"]
    rows = inference_only_rows(model, data, "sst-2", "table3", threshold=0.0, r_ee=0.5, batch_size=5)
    assert [r["name"] for r in rows] == ["Class Attention", "All-token Attention"]
    assert rows[0]["config_changes"] == {} and rows[1]["config_changes"] == {"token_score": "all"}
    all_model = load_mpee(setup["mpee"], token_score="all")
    ref = evaluate_model(all_model, setup["dev"], "sst-2", 1, threshold=0.0, r_ee=0.5)
    assert rows[1]["metrics"] == ref["metrics"] and rows[1]["rho"] == pytest.approx(ref["rho"], rel=1e-12)
    a = run_inference(model, data, 5, threshold=0.0, r_ee=0.5, trace=True)
    b = run_inference(all_model, data, 5, threshold=0.0, r_ee=0.5, trace=True)
    assert sum(x.layers[0].positions != y.layers[0].positions for x, y in zip(a, b)) >= 3   # other tokens kept
    assert model.mpee_config.token_score == "class"                                     # restored after the rows
    with pytest.raises(ValueError, match="table"):
        inference_only_rows(model, data, "sst-2", "table4")


def test_cli_inference_only_writes_json_and_markdown(setup, tmp_path, capsys):
    rc = main(["ablation", "--inference-only", str(setup["mpee"]), "--task", "sst-2", "--data-dir",
               str(setup["data_dir"]), "--out", str(tmp_path), "--threshold", "0.5", "--r-ee", "0.4",
               "--batch-size", "4", "--max-examples", "6"])
    assert rc == 0
    t2, t3 = (json.loads((tmp_path / f"table{k}.json").read_text()) for k in (2, 3))
    assert t2["mode"] == t3["mode"] == "inference-only" and t2["threshold"] == 0.5 and t2["r_ee"] == 0.4
    assert t2["n_examples"] == 6 and len(t2["rows"]) == 7 and len(t3["rows"]) == 2
    assert (tmp_path / "table2.md").read_text() + (tmp_path / "table3.md").read_text() == capsys.readouterr().out
    assert "F = 0.5 nats, R_ee = 0.4" in (tmp_path / "table3.md").read_text()


@pytest.mark.parametrize("argv, needle", [
    ([], "exactly one of --model"),
    (["--inference-only", "ENC"], "no mpee_config.json"),
    (["--model", "ENC", "--train-args", "--epochs x"], "--train-args"),
])
def test_cli_errors_are_one_line_and_exit_2(setup, tmp_path, capsys, argv, needle):
    argv = [str(setup["enc"]) if a == "ENC" else a for a in argv]
    rc = main(["ablation", "--task", "sst-2", "--data-dir", str(setup["data_dir"]), "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and needle in err[-1]


def test_train_args_from_cli_adds_the_row_flags_to_the_shared_ones(setup):
    a = train_args_from_cli("E", "sst-2", "D", "O", "--epochs 2 --seed 7 --set r_ee=0.4", ["--ablate", "wsd"])
    assert (a.model, a.task, a.data_dir, a.out, a.epochs, a.seed) == ("E", "sst-2", "D", "O", 2, 7)
    assert a.ablate == ("wsd",) and a.overrides == {"r_ee": 0.4} and a.progress and a.deterministic


def test_full_mode_trains_one_model_per_row_and_reuses_finished_rows(setup, tmp_path, capsys):
    argv = ["ablation", "--model", str(setup["enc"]), "--task", "sst-2", "--data-dir", str(setup["data_dir"]),
            "--out", str(tmp_path), "--which", "table3", "--threshold", "0.0", "--r-ee", "0.5", "--batch-size", "5",
            "--train-args", "--max-steps 2 --batch-size 4 --lr 1e-3 --max-eval-examples 2 --eval-batch-size 2 "
                            "--no-progress"]
    assert main(argv) == 0
    t3 = json.loads((tmp_path / "table3.json").read_text())
    assert t3["mode"] == "full" and [r["model"] for r in t3["rows"]] == \
        [str(tmp_path / "rows" / "mpee" / "final"), str(tmp_path / "rows" / "set-token-score-all" / "final")]
    assert t3["rows"][0]["config_changes"] == {} and t3["rows"][1]["config_changes"] == {"token_score": "all"}
    trained = load_mpee(tmp_path / "rows" / "set-token-score-all" / "final")
    assert trained.mpee_config.token_score == "all" and trained.mpee_config.threshold == MPEEConfig().threshold
    summary = json.loads((tmp_path / "rows" / "mpee" / "train_summary.json").read_text())
    assert summary["args"]["seed"] == 42 and summary["args"]["max_steps"] == 2
    ref = evaluate_model(trained, setup["dev"], "sst-2", 1, threshold=0.0, r_ee=0.5)
    assert t3["rows"][1]["metrics"] == ref["metrics"] and t3["rows"][1]["rho"] == pytest.approx(ref["rho"], rel=1e-12)
    stamp = (tmp_path / "rows" / "mpee" / "final" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0                                                  # finished rows are not retrained
    assert (tmp_path / "rows" / "mpee" / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "table3.json").read_text())["rows"] == t3["rows"]
    argv[-1] = argv[-1].replace("--max-steps 2", "--max-steps 3")
    assert main(argv) == 2 and "trained with other arguments" in capsys.readouterr().err
