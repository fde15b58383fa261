"""``train --method``: every baseline trains through the same loop as MPEE on the tiny model of
test_train.py; two-stage methods continue from their first stage; resume is exact; bad combinations
are refused with one clear message."""

from __future__ import annotations

import json

import pytest
import torch

from mpee_ref.baselines import DeeBERT
from mpee_ref.baselines.checkpoint import load_baseline
from mpee_ref.baselines.registry import METHODS
from mpee_ref.experiments import TrainArgs, train_model
from mpee_ref.experiments.runs import check_resume, run_identity

from test_train import _args, _weights, deterministic_calls, one_thread, tiny  # noqa: F401 (fixtures)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_and_saves_a_loadable_final_model(tiny, tmp_path, method):  # noqa: F811
    out = tmp_path / method
    summary = train_model(_args(tiny, out, method=method, max_steps=2))
    assert summary["method"] == method and summary["steps"] == 2
    assert summary["final_dev_no_exit"] is None
    dev = summary["final_dev"]
    assert dev["method"] == method and dev["n_examples"] == 4 and dev["rho"] > 0.5
    assert sum(dev["exit_layer_counts"].values()) == 4
    name, model = load_baseline(out / "final")
    assert name == method and isinstance(model, METHODS[method].model)
    w0 = _weights(tiny["enc"])
    w1 = _weights(out / "final")
    moved = not torch.equal(w0["embeddings.word_embeddings.weight"], w1["bert.embeddings.word_embeddings.weight"])
    assert moved                                                    # the backbone trained in the first stage
    assert json.loads((out / "final" / "task.json").read_text())["task"] == "sst-2"


def test_deebert_second_stage_trains_only_the_off_ramps(tiny, tmp_path):  # noqa: F811
    train_model(_args(tiny, tmp_path / "s1", method="deebert", max_steps=2))
    s2 = tmp_path / "s2"
    train_model(_args(tiny, s2, method="deebert", stage="ramps", freeze_backbone=True,
                      model=str(tmp_path / "s1" / "final"), max_steps=2))
    a, b = _weights(tmp_path / "s1" / "final"), _weights(s2 / "final")
    for k in a:
        same = torch.equal(a[k], b[k])
        if k.startswith("bert.") or k.startswith("heads.2."):       # backbone and final classifier: frozen
            assert same, k
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("heads.0."))
    _, model = load_baseline(s2 / "final")
    assert isinstance(model, DeeBERT) and model.config.stage == "ramps"


def test_baseline_resume_gives_the_uninterrupted_result(tiny, tmp_path):  # noqa: F811
    full = tmp_path / "a"
    train_model(_args(tiny, full, method="pabee", max_steps=3))
    part = tmp_path / "b"
    train_model(_args(tiny, part, method="pabee", max_steps=3, stop_after_steps=1))
    with pytest.raises(ValueError, match="differing fields.*method: 'pabee' then, 'deebert' now"):
        train_model(_args(tiny, part, method="deebert", max_steps=3, resume=True))
    train_model(_args(tiny, part, method="pabee", max_steps=3, resume=True))
    wa, wb = _weights(full / "final"), _weights(part / "final")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_checkpoint_older_than_the_method_fields_resumes_with_their_defaults(tiny, tmp_path):  # noqa: F811
    def identity(**kw):
        return run_identity(_args(tiny, tmp_path, **kw), None)
    old = {k: v for k, v in identity().items() if k not in ("method", "stage", "options")}
    state = {"identity": json.dumps(old)}
    assert check_resume(state, tmp_path, identity(), _args(tiny, tmp_path)) is None
    with pytest.raises(ValueError, match="method: 'mpee' then, 'pabee' now"):
        check_resume(state, tmp_path, identity(method="pabee"), _args(tiny, tmp_path, method="pabee"))


@pytest.mark.parametrize("kw, message", [
    (dict(method="deebert", mode="plain"), "--mode: an MPEE option; --method deebert takes --option"),
    (dict(method="pabee", overrides={"threshold": 0.2}), "--set: an MPEE option"),
    (dict(method="pabee", stage="ramps"), r"pabee has stages \(one stage: no --stage\)"),
    (dict(method="deebert", stage="ramps"), "add --freeze-backbone"),
    (dict(stage="ramps"), "only for a baseline"),
])
def test_bad_method_combinations_are_refused(tiny, tmp_path, kw, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        _args(tiny, tmp_path, **kw)


def test_unknown_option_names_the_config_field(tiny, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--option: unknown PABEEConfig field 'entropy_threshold'"):
        train_model(_args(tiny, tmp_path / "x", method="pabee", options={"entropy_threshold": "0.3"}, max_steps=1))
    assert TrainArgs(task="sst-2", data_dir="d", out="o", model="m", method="power_bert",
                     options={"retention": "0.9,0.8,0.7"}).options == {"retention": "0.9,0.8,0.7"}


def test_evaluate_and_sweep_read_a_baseline_folder(tiny, tmp_path, capsys):  # noqa: F811
    from mpee_ref.__main__ import main
    train_model(_args(tiny, tmp_path / "run", method="pabee", max_steps=2))
    common = ["--model", str(tmp_path / "run" / "final"), "--task", "sst-2", "--data-dir", str(tiny["data"]),
              "--max-examples", "6"]
    assert main(["evaluate", *common, "--setting", "1", "--batch-size", "3"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["method"] == "pabee" and one["setting"] == {"patience": 1.0} and one["n_examples"] == 6
    assert main(["sweep", *common, "--grid", "1,2", "--out", str(tmp_path / "sw")]) == 0
    sweep = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [p["setting"] for p in sweep["points"]] == [{"patience": 1.0}, {"patience": 2.0}]
    assert sweep["points"][0]["rho"] == pytest.approx(one["rho"])
    assert sweep["points"][0]["metrics"] == one["metrics"]
    capsys.readouterr()
    assert main(["evaluate", *common, "--threshold", "0.2"]) == 2
    assert "MPEE options; a baseline's knob is --setting" in capsys.readouterr().err
    assert main(["diagnose", *common, "--out", str(tmp_path / "d")]) == 2
    assert "holds a baseline model" in capsys.readouterr().err
