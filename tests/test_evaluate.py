"""``python -m mpee_ref evaluate`` and ``evaluate_model`` (mpee_ref/experiments/evaluate.py).

A tiny random BERT (see test_train.py) with untrained heads: the numbers checked are those that hold
for any weights (exit bookkeeping, ρ with nothing skipped, batched == batch 1, metric == predictions).
"""

from __future__ import annotations

import json
import math

import pytest

from mpee_ref.__main__ import main
from mpee_ref.data import read_glue
from mpee_ref.experiments import encode_examples, evaluate_model, run_inference
from mpee_ref.flops import eq15_layer_flops, head_flops
from mpee_ref.mpee import load_mpee
from test_train import make_tiny_encoder, make_tiny_sst2, one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaltiny")
    enc = make_tiny_encoder(root / "enc")
    data = make_tiny_sst2(root / "data", n_train=4, n_dev=10)
    model = load_mpee(enc, seed=3)
    return {"enc": enc, "data": data, "model": model, "dev": read_glue("sst-2", data, "dev")}


def test_nothing_skipped_gives_exit_L_full_tokens_and_rho_of_the_extra_heads(setup):
    model, dev = setup["model"], setup["dev"]
    res = evaluate_model(model, dev, "sst-2", threshold=0.0, r_ee=0.0)   # no entropy is < 0; keep every token
    L, D, F, C = 3, 32, 37, 2
    lengths = [len(ids) for ids in encode_examples(model.tokenizer, dev, 128).input_ids]
    assert res["n_examples"] == 10 and res["mean_exit_layer"] == 3.0
    assert res["exit_layer_counts"] == {"1": 0, "2": 0, "3": 10} and res["samples_per_layer"] == [10, 10, 10]
    assert res["mean_tokens_per_layer"] == [sum(lengths) / 10] * 3 == [res["mean_input_tokens"]] * 3
    # Eq. 15 by hand: executed = L layers + L exit heads; full = L layers + 1 classifier
    layers = sum(eq15_layer_flops(n, n, D, F) for n in lengths)
    h = head_flops(D, C, "pooler")
    assert res["flops"]["executed"] == L * layers + 10 * L * h and res["flops"]["full"] == L * layers + 10 * h
    assert res["rho"] == pytest.approx((L * layers + 10 * h) / (L * layers + 10 * L * h), rel=1e-12)
    assert res["rho"] < 1.0
    # the authors' count has no heads: nothing skipped means rho = 1 exactly (padded and real lengths)
    assert res["authors_flops"]["real_lengths"]["rho"] == 1.0
    assert res["threshold"] == 0.0 and res["r_ee"] == 0.0 and res["config"]["threshold"] == 0.0
    assert res["metrics"]["accuracy"] == pytest.approx(
        sum(s.prediction == y for s, y in zip(run_inference(model, encode_examples(model.tokenizer, dev, 128),
                                                            threshold=0.0, r_ee=0.0), [e.label for e in dev])) / 10)
    json.dumps(res)                                                   # JSON-serialisable as is


def test_token_exit_off_and_no_layer_exit_gives_authors_rho_1_padded(setup):
    res = evaluate_model(setup["model"], setup["dev"], "sst-2", token_exit=False, layer_exit=False)
    assert res["authors_flops"]["padded"]["rho"] == 1.0 and res["mean_exit_layer"] == 3.0


def test_batched_equals_batch_1(setup):
    model, dev = setup["model"], setup["dev"]
    data = encode_examples(model.tokenizer, dev, 128)
    # pick F as the median layer-1 entropy of these untrained heads, so some samples exit at layer 1
    ent1 = sorted(s.layers[0].entropy for s in run_inference(model, data, threshold=0.0))
    F = (ent1[4] + ent1[5]) / 2
    one = run_inference(model, data, 1, threshold=F, r_ee=0.5)
    many = run_inference(model, data, 4, threshold=F, r_ee=0.5)
    assert len({s.exit_layer for s in one}) >= 2                    # a mix of exits, so the test means something
    assert [s.prediction for s in one] == [s.prediction for s in many]
    assert [s.exit_layer for s in one] == [s.exit_layer for s in many]
    assert [s.tokens_per_layer for s in one] == [s.tokens_per_layer for s in many]
    for a, b in zip(one, many):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
    res = evaluate_model(model, dev, "sst-2", 4, verify_batch1=10, threshold=F, r_ee=0.5)
    assert res["batch_consistency"] == {"checked": 10, "prediction_mismatches": 0, "exit_layer_mismatches": 0}
    assert res["mean_exit_layer"] == sum(s.exit_layer for s in one) / 10
    assert sum(res["exit_layer_counts"].values()) == 10 and res["exit_layer_counts"]["1"] == \
        sum(s.exit_layer == 1 for s in one)


def test_cli_writes_json_with_the_fields(setup, tmp_path, capsys):
    out = tmp_path / "e.json"
    rc = main(["evaluate", "--model", str(setup["enc"]), "--task", "sst-2", "--data-dir", str(setup["data"]),
               "--max-examples", "6", "--threshold", "0.25", "--set", "r_ee=0.4", "--batch-size", "3",
               "--json", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    res = json.loads(out.read_text())
    assert printed == res
    for key in ("metrics", "rho", "mean_exit_layer", "exit_layer_counts", "mean_tokens_per_layer", "wall_time_s",
                "examples_per_s", "authors_flops", "batch_consistency"):
        assert key in res
    assert res["n_examples"] == 6 and res["threshold"] == 0.25 and res["r_ee"] == 0.4 and res["batch_size"] == 3
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0 and math.isfinite(res["rho"])
    assert res["batch_consistency"]["prediction_mismatches"] == 0


@pytest.mark.parametrize("argv, needle", [
    (["--model", "MISSING", "--task", "sst-2"], "MISSING"),
    (["--task", "sst-7"], "unknown GLUE task 'sst-7'"),
    (["--task", "sst-2", "--set", "threshold=abc"], "threshold"),
])
def test_cli_errors_are_one_line_and_exit_2(setup, tmp_path, capsys, argv, needle):
    base = {"--model": str(setup["enc"]), "--data-dir": str(setup["data"])}
    args = dict(zip(argv[::2], argv[1::2]))
    args = {**base, **{k: (str(tmp_path / v) if v == "MISSING" else v) for k, v in args.items()}}
    rc = main(["evaluate", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0]


def test_wrong_number_of_classes_is_refused(setup):
    with pytest.raises(ValueError, match="3 classes"):
        evaluate_model(load_mpee(setup["enc"], num_labels=3), setup["dev"], "sst-2")
