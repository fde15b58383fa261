"""``python -m mpee_ref sweep`` (mpee_ref/experiments/sweep.py): the F x R_ee grid of Fig. 3.

A tiny random BERT with untrained heads (test_train.py's helpers): checked are the numbers that hold for any
weights: the grid, agreement with ``evaluate_model`` at the same point, the no-exit corner, the Pareto front.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpee_ref.__main__ import main
from mpee_ref.data import read_glue
from mpee_ref.experiments import encode_examples, evaluate_model, run_inference
from mpee_ref.experiments.sweep import pareto_front, primary_metric, run_sweep, sweep_markdown
from mpee_ref.mpee import load_mpee
from test_train import make_tiny_encoder, make_tiny_sst2, one_thread  # noqa: F401 (autouse fixture)

L = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeptiny")
    enc = make_tiny_encoder(root / "enc")
    data_dir = make_tiny_sst2(root / "data", n_train=4, n_dev=10)
    model = load_mpee(enc)                                   # seed 0, as the CLI loads it
    dev = read_glue("sst-2", data_dir, "dev")
    data = encode_examples(model.tokenizer, dev, 128)
    # F = the median layer-1 entropy of these untrained heads: some samples exit at layer 1, some do not
    ent1 = sorted(s.layers[0].entropy for s in run_inference(model, data, threshold=0.0))
    mid = (ent1[4] + ent1[5]) / 2
    return {"enc": enc, "data_dir": data_dir, "model": model, "dev": dev, "data": data, "mid": round(mid, 6)}


def test_cli_writes_the_grid_consistent_with_evaluate_model(setup, tmp_path, capsys):
    mid = setup["mid"]
    thresholds, r_ees = [0.0, mid, 1.0], [0.0, 0.5]          # 1.0 nats > ln 2: every sample exits at layer 1
    rc = main(["sweep", "--model", str(setup["enc"]), "--task", "sst-2", "--data-dir", str(setup["data_dir"]),
               "--thresholds", ",".join(map(str, thresholds)), "--r-ee", "0,0.5", "--batch-size", "4",
               "--out", str(tmp_path), "--skip", "fig1", "--skip", "fig5"])
    assert rc == 0
    res = json.loads((tmp_path / "sweep.json").read_text())
    assert res["format"] == "mpee_ref-sweep-1" and res["metric"] == "accuracy" and res["n_examples"] == 10
    assert [(p["r_ee"], p["threshold"]) for p in res["points"]] == [(r, f) for r in r_ees for f in thresholds]
    for p in res["points"]:
        ref = evaluate_model(setup["model"], setup["dev"], "sst-2", 1, threshold=p["threshold"], r_ee=p["r_ee"])
        assert p["metrics"] == ref["metrics"] and p["exit_layer_counts"] == ref["exit_layer_counts"]
        assert p["rho"] == pytest.approx(ref["rho"], rel=1e-12)
        assert p["mean_exit_layer"] == ref["mean_exit_layer"]
        assert p["mean_tokens_per_layer"] == ref["mean_tokens_per_layer"]
    by = {(p["threshold"], p["r_ee"]): p for p in res["points"]}
    assert by[(1.0, 0.0)]["exit_layer_counts"] == {"1": 10, "2": 0, "3": 0}
    assert 1.0 < by[(mid, 0.0)]["mean_exit_layer"] < 3.0     # the median F really splits the samples
    # R_ee = 0.5 prunes at layers 1, 2, 3 (scale_layers((4, 7, 10), 3)): fewer tokens, higher rho
    assert by[(0.0, 0.5)]["mean_tokens_per_layer"][2] < by[(0.0, 0.0)]["mean_tokens_per_layer"][2]
    assert by[(0.0, 0.5)]["rho"] > by[(0.0, 0.0)]["rho"]
    assert res["pareto_front"] == pareto_front(res["points"], "accuracy")
    assert (tmp_path / "sweep.md").read_text() == capsys.readouterr().out
    assert res["fig4"]["samples_per_exit_layer"] == [int(v) for v in
                                                     by[(res["fig4"]["threshold"], res["fig4"]["r_ee"])]
                                                     ["exit_layer_counts"].values()]


def test_set_applies_a_config_field_to_every_point_and_is_recorded(setup, tmp_path, capsys):
    """``--set prune_layers=2`` (token exits after layer 2 only): every point as ``evaluate_model`` with
    the same field, unlike the default layers; written to sweep.json and named in sweep.md."""
    argv = ["sweep", "--model", str(setup["enc"]), "--task", "sst-2", "--data-dir", str(setup["data_dir"]),
            "--thresholds", f"0,{setup['mid']}", "--r-ee", "0.5", "--batch-size", "4", "--skip", "fig1", "--skip", "fig5"]
    assert main(argv + ["--out", str(tmp_path / "a"), "--set", "prune_layers=2"]) == 0
    assert main(argv + ["--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "sweep.json").read_text()) for d in "ab")
    assert a["config_overrides"] == {"prune_layers": [2]} and b["config_overrides"] == {}
    for p in a["points"]:
        ref = evaluate_model(setup["model"], setup["dev"], "sst-2", 1, threshold=p["threshold"], r_ee=p["r_ee"],
                             prune_layers=(2,))
        assert p["exit_layer_counts"] == ref["exit_layer_counts"] and p["rho"] == pytest.approx(ref["rho"], rel=1e-12)
        assert p["mean_tokens_per_layer"] == ref["mean_tokens_per_layer"]
    assert a["points"][0]["mean_tokens_per_layer"][:2] != b["points"][0]["mean_tokens_per_layer"][:2]
    assert "`--set prune_layers=2`" in (tmp_path / "a" / "sweep.md").read_text()
    capsys.readouterr()


def test_threshold_0_and_r_ee_0_is_the_no_exit_model(setup):
    (p,) = run_sweep(setup["model"], setup["data"], "sst-2", [0.0], [0.0], batch_size=3)
    plain = evaluate_model(setup["model"], setup["dev"], "sst-2", 1, token_exit=False, layer_exit=False)
    assert p["exit_layer_counts"] == {"1": 0, "2": 0, "3": 10} and p["mean_exit_layer"] == L
    assert p["rho"] == pytest.approx(plain["rho"], rel=1e-12) and p["rho"] < 1.0   # L heads vs 1 classifier
    assert p["mean_tokens_per_layer"] == [p["mean_input_tokens"]] * L
    assert p["metrics"] == plain["metrics"]


def _pt(rho: float, acc: float) -> dict:
    return {"rho": rho, "metrics": {"accuracy": acc}, "threshold": 0.0, "r_ee": 0.0}


def test_pareto_front_hand_example():
    pts = [_pt(1.0, 0.90), _pt(2.0, 0.88), _pt(2.0, 0.85), _pt(1.5, 0.80), _pt(3.0, 0.70), _pt(3.0, 0.70)]
    # (2.0, 0.85) and (1.5, 0.80) are dominated by (2.0, 0.88); the two (3.0, 0.70) tie and both stay
    assert pareto_front(pts, "accuracy") == [0, 1, 4, 5]


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 6)), min_size=1, max_size=12))
def test_pareto_front_is_exactly_the_non_dominated_set(raw):
    pts = [_pt(r / 2, a / 10) for r, a in raw]
    front = pareto_front(pts, "accuracy")

    def dominates(q, p):
        return (q["rho"] >= p["rho"] and q["metrics"]["accuracy"] >= p["metrics"]["accuracy"]
                and (q["rho"] > p["rho"] or q["metrics"]["accuracy"] > p["metrics"]["accuracy"]))

    for i, p in enumerate(pts):
        assert (i in front) == (not any(dominates(q, p) for q in pts))
    assert [pts[i]["rho"] for i in front] == sorted(pts[i]["rho"] for i in front)
    # along the front, more speed never comes with more accuracy (else the slower point were dominated)
    accs = [pts[i]["metrics"]["accuracy"] for i in front]
    assert accs == sorted(accs, reverse=True)


def test_markdown_table_is_sorted_by_rho_and_lists_the_front(setup):
    pts = [dict(_pt(r, a), mean_exit_layer=2.0, mean_tokens_per_layer=[5.0, None, 4.0])
           for r, a in ((1.2, 0.9), (3.5, 0.6), (2.1, 0.8), (2.1, 0.5))]
    md = sweep_markdown({"task": "sst-2", "split": "dev", "n_examples": 4, "model": "m", "batch_size": 1,
                         "metric": "accuracy", "points": pts, "pareto_front": pareto_front(pts, "accuracy")})
    all_part, front_part = md.split("## Pareto front")
    rhos = [float(x) for x in re.findall(r"\| ([\d.]+)× \|", all_part)]
    assert rhos == [3.5, 2.1, 2.1, 1.2]
    assert re.findall(r"\| ([\d.]+)× \|", front_part) == ["1.20", "2.10", "3.50"]
    assert "| 0 | 0 | 80.00 | 2.10× | 2.00 | 5.0, -, 4.0 |" in all_part


def test_primary_metric_per_task():
    assert [primary_metric(t) for t in ("sst-2", "mrpc", "cola", "qnli")] == ["accuracy", "f1", "mcc", "accuracy"]


@pytest.mark.parametrize("extra, needle", [
    (["--thresholds", "0,abc"], "--thresholds"),
    (["--fig4-threshold", "0.2"], "--fig4-r-ee"),
    (["--batch-size", "0"], "--batch-size"),
    (["--set", "r_ee=0.2"], "the grid sets them"),
    (["--set", "prune_layers=x"], "prune_layers"),
    (["--set", "num_labels=3"], "num_labels"),
])
def test_cli_errors_are_one_line_and_exit_2(setup, tmp_path, capsys, extra, needle):
    rc = main(["sweep", "--model", str(setup["enc"]), "--task", "sst-2", "--data-dir", str(setup["data_dir"]),
               "--out", str(tmp_path), *extra])
    err = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("note: ")]
    assert rc == 2 and len(err) == 1 and needle in err[0]
    assert not (tmp_path / "sweep.json").exists()
