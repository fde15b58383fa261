"""The baselines' hyper-parameter search: candidate parsing, scoring, the choice, and the command end to end."""

import json

import pytest

from mpee_ref.experiments import search
from mpee_ref.experiments.search import Score


def _sweep(method, seed, rows, num_layers=3):
    return {"method": method, "seed": seed, "metric": "accuracy", "num_layers": num_layers,
            "points": [{"setting": {"knob": k}, "metrics": {"accuracy": a}, "rho": r,
                        "exit_layer_counts": {"1": 1, "2": 1, "3": 1}} for k, a, r in rows]}


def test_parse_candidates():
    assert search.parse_candidates(" a: --lr 1e-4 ; b: ") == {"a": "--lr 1e-4", "b": ""}
    for bad, msg in (("", "no candidate"), ("--lr 1e-4", "NAME: FLAGS"), ("x/y: --lr 1", "plain NAME"),
                     ("a: ; a: --lr 1", "given twice")):
        with pytest.raises(ValueError, match=msg):
            search.parse_candidates(bad)


def test_candidate_flags_come_after_the_family_and_the_method():
    a = search.SearchArgs(task="sst-2", data_dir="d", model="m", out="runs/s",
                          method_train_args="power_bert: --option retention=0.5", candidates="c: --head-lr-mult 20")
    ca = search.candidate_args(a, "c", "--head-lr-mult 20", "power_bert")
    assert ca.out.endswith("runs/s/c") and not hasattr(ca, "candidates")
    assert ca.method_train_args == "power_bert: --option retention=0.5 --head-lr-mult 20"
    assert search.candidate_args(a, "c", "--lr 1", "pabee").method_train_args == \
        "power_bert: --option retention=0.5; pabee: --lr 1"


def test_score_interpolates_at_the_target_or_reports_the_front_end():
    sw = [_sweep("pabee", 0, [(1, 0.90, 1.5), (2, 0.80, 2.5)]), _sweep("pabee", 1, [(1, 0.90, 1.5), (2, 0.80, 2.5)])]
    s = search.score("pabee", "c", sw, 2.0)
    assert s == Score("pabee", "c", pytest.approx(0.85), 2.0, True)
    short = search.score("pabee", "c", [_sweep("pabee", 0, [(1, 0.9, 1.0), (2, 0.88, 1.5)])], 2.0)
    assert short == Score("pabee", "c", 0.88, 1.5, False)
    gap = search.score("deebert", "c", [_sweep("deebert", 0, [(1, 0.87, 1.2), (2, 0.51, 6.0)])], 2.0)
    assert gap == Score("deebert", "c", 0.87, 1.2, False)          # no straight line across the gap


def test_choose_prefers_reaching_the_target_then_the_metric_then_the_first_listed():
    scores = [Score("a", "x", 0.90, 1.5, False), Score("a", "y", 0.80, 2.0, True),
              Score("b", "x", 0.85, 2.0, True), Score("b", "y", 0.85, 2.0, True),
              Score("c", "x", 0.70, 2.0, True), Score("c", "y", 0.75, 2.0, True)]
    assert {m: s.candidate for m, s in search.choose(scores).items()} == {"a": "y", "b": "x", "c": "y"}


def test_search_command_end_to_end(tmp_path, capsys):
    """On the tiny model of test_train.py: two candidates, two baselines, one seed; rerun reuses everything."""
    from test_train import make_tiny_encoder, make_tiny_sst2
    from mpee_ref.__main__ import main

    enc, data, out = make_tiny_encoder(tmp_path / "enc"), make_tiny_sst2(tmp_path / "data"), tmp_path / "search"
    argv = ["search", "--model", str(enc), "--task", "sst-2", "--data-dir", str(data), "--out", str(out),
            "--methods", "plain,static,pabee", "--seeds", "0", "--target-rho", "1.5",
            "--train-args", "--max-steps 2 --batch-size 4 --max-train-examples 8 --warmup-ratio 0",
            "--candidates", "slow: --lr 1e-4; fast: --lr 1e-3", "--threads", "1"]
    assert main(argv) == 0
    result = json.loads((out / "search.json").read_text())
    assert {(s["method"], s["candidate"]) for s in result["scores"]} == {
        (m, c) for m in ("static", "pabee") for c in ("slow", "fast")}
    assert set(result["chosen"]) == {"static", "pabee"}
    summary = json.loads((out / "fast" / "pabee" / "s0" / "train_summary.json").read_text())
    assert summary["args"]["lr"] == 1e-3 and not (out / "slow" / "plain").exists()
    table = (out / "search.md").read_text()
    assert "| static |" in table and "--method-train-args" in table and table.count("**") == 4
    assert "| pabee |" in capsys.readouterr().out
    stamp = (out / "slow" / "static" / "s0" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0                                            # reused, nothing retrained
    assert (out / "slow" / "static" / "s0" / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    assert main(argv[:-4] + ["--candidates", "", "--threads", "1"]) == 2
    assert "no candidate given" in capsys.readouterr().err
