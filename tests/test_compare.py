"""The comparison analytics (Table 1 / Figs. 3-4 analogues): hand examples and properties."""

import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from mpee_ref.experiments import compare
from mpee_ref.experiments.compare import MethodPoint


def _sweep(method, seed, rows, num_layers=3):
    """rows: (setting value, accuracy, rho, counts per layer)."""
    return {"method": method, "seed": seed, "metric": "accuracy", "num_layers": num_layers,
            "points": [{"setting": {"knob": k}, "metrics": {"accuracy": a}, "rho": r,
                        "exit_layer_counts": {str(l + 1): c for l, c in enumerate(counts)}}
                       for k, a, r, counts in rows]}


def _pt(metric, rho, method="m"):
    return MethodPoint(method=method, setting=(("knob", rho),), metric=(metric, 0.0), rho=(rho, 0.0),
                       exit_histogram=(1.0,), n_seeds=1)


def test_aggregate_means_and_stds_over_seeds():
    a = _sweep("deebert", 0, [(0.1, 0.80, 1.5, (1, 1, 2)), (0.5, 0.70, 3.0, (3, 1, 0))])
    b = _sweep("deebert", 1, [(0.1, 0.84, 1.7, (0, 2, 2)), (0.5, 0.74, 3.2, (4, 0, 0)), (0.9, 0.5, 6.0, (4, 0, 0))])
    pts = compare.aggregate([a, b])
    assert [p.setting for p in pts] == [(("knob", 0.1),), (("knob", 0.5),)]    # 0.9 is missing for seed 0
    p = pts[0]
    assert p.metric[0] == pytest.approx(0.82) and p.metric[1] == pytest.approx(math.sqrt(2 * 0.02 ** 2))
    assert p.rho[0] == pytest.approx(1.6) and p.n_seeds == 2
    assert p.exit_histogram == pytest.approx((0.125, 0.375, 0.5))
    assert pts[1].exit_histogram == pytest.approx((0.875, 0.125, 0.0))


def test_aggregate_refuses_mixed_methods_and_repeated_seeds():
    a = _sweep("deebert", 0, [(0.1, 0.8, 1.5, (1, 1, 1))])
    with pytest.raises(ValueError, match="one method"):
        compare.aggregate([a, _sweep("pabee", 1, [(0.1, 0.8, 1.5, (1, 1, 1))])])
    with pytest.raises(ValueError, match="seed listed twice"):
        compare.aggregate([a, a])
    with pytest.raises(ValueError, match="no samples"):
        compare.aggregate([_sweep("x", 0, [(0.1, 0.8, 1.5, (0, 0, 0))])])


def test_from_mpee_sweep_keeps_threshold_and_r_ee():
    sweep = {"metric": "accuracy", "num_layers": 2, "points": [
        {"threshold": 0.3, "r_ee": 0.5, "metrics": {"accuracy": 0.9}, "rho": 2.0, "exit_layer_counts": {"1": 2}}]}
    (p,) = compare.aggregate([compare.from_mpee_sweep(sweep, seed=0)])
    assert p.method == "mpee" and p.setting == (("r_ee", 0.5), ("threshold", 0.3)) and p.exit_histogram == (1.0, 0.0)


def test_pareto_interpolation_and_within_tolerance_by_hand():
    pts = [_pt(0.90, 1.0), _pt(0.88, 2.0), _pt(0.80, 3.0), _pt(0.85, 1.5), _pt(0.70, 2.5)]
    front = compare.pareto(pts)
    assert [p.rho[0] for p in front] == [1.0, 2.0, 3.0]              # 1.5 and 2.5 are dominated
    assert compare.metric_at_rho(pts, 2.0) == pytest.approx(0.88)
    assert compare.metric_at_rho(pts, 2.5) == pytest.approx(0.84)    # halfway between 0.88 and 0.80
    assert compare.metric_at_rho(pts, 1.0) == pytest.approx(0.90)
    assert compare.metric_at_rho(pts, 3.5) is None and compare.metric_at_rho(pts, 0.5) is None
    # a gap in the sweep is not bridged: neighbours must lie within a factor 1.5 of the target
    gap = [_pt(0.87, 1.2), _pt(0.51, 6.0)]
    assert compare.metric_at_rho(gap, 2.0) is None and compare.metric_at_rho(gap, 2.0, span=5.0) == pytest.approx(0.81)
    assert compare.metric_at_rho(gap, 1.2) == pytest.approx(0.87)
    assert compare.largest_rho_within(pts, reference=0.89).rho[0] == 2.0
    assert compare.largest_rho_within(pts, reference=0.95) is None
    assert compare.closest_to_rho(pts, 2.4).rho[0] == 2.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(1.0, 8.0)), min_size=1, max_size=12),
       st.floats(1.0, 8.0))
def test_interpolated_metric_lies_between_front_neighbours(rows, rho):
    pts = [_pt(m, r) for m, r in rows]
    front = compare.pareto(pts)
    for a, b in zip(front, front[1:]):                 # a Pareto front trades metric for speed
        assert a.rho[0] < b.rho[0] and a.metric[0] > b.metric[0]
    got = compare.metric_at_rho(pts, rho, span=math.inf)
    if front[0].rho[0] <= rho <= front[-1].rho[0]:
        assert got is not None
        assert front[-1].metric[0] - 1e-12 <= got <= front[0].metric[0] + 1e-12
        assert got >= max((p.metric[0] for p in front if p.rho[0] >= rho), default=-1) - 1e-12
    else:
        assert got is None
    bridged = compare.metric_at_rho(pts, rho)                   # the default span only ever drops a reading
    assert bridged is None or bridged == got


def test_markdown_table_and_plots(tmp_path):
    by_method = {"mpee": [_pt(0.88, 1.4, "mpee"), _pt(0.87, 2.6, "mpee")],
                 "static": [_pt(0.80, 1.95, "static")]}
    md = compare.comparison_markdown(by_method, plain=(0.88, 0.002), metric="accuracy")
    rows = md.strip().splitlines()
    assert rows[2].startswith("| mpee | 1 | 87.50 | 2.60× ± 0.00 | 87.00 ± 0.00 | knob 2.6 |"), rows[2]
    assert rows[3] == "| static | 1 | 80.00 (ρ 1.95) | none | - | - |"           # nearest point, within 5%
    far = compare.comparison_markdown({"x": [_pt(0.8, 1.5, "x")]}, plain=(0.88, 0.0), metric="accuracy")
    assert far.strip().splitlines()[2] == "| x | 1 | - | none | - | - |"
    pytest.importorskip("matplotlib")
    assert compare.plot_tradeoff(by_method, (0.88, 0.002), "accuracy", tmp_path / "f3.png").stat().st_size > 0
    chosen = [compare.closest_to_rho(v, 2.0) for v in by_method.values()]
    assert compare.plot_exit_histograms(chosen, tmp_path / "f4.png").stat().st_size > 0


def test_method_sweep_of_a_tiny_pabee_matches_its_own_inference():
    import torch
    from mpee_ref.baselines import PABEE, PABEEConfig
    from mpee_ref.config import BertConfig
    from mpee_ref.experiments.batching import EncodedDataset, collate

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    model = PABEE(cfg, PABEEConfig(num_labels=2)).eval()
    ids = tuple(tuple([2] + [int(x) for x in torch.randint(5, 50, (n,))] + [3]) for n in (3, 7, 5, 9))
    data = EncodedDataset(ids, tuple((0,) * len(i) for i in ids), (0, 1, 1, 0))
    sweep = compare.method_sweep(model, "pabee", data, "sst-2", "accuracy", seed=3, values=(1, 2), batch_size=3)
    assert sweep["method"] == "pabee" and sweep["seed"] == 3 and sweep["num_layers"] == 3
    batch = collate(data, range(4), 0)
    labels = batch.pop("labels")
    for point, patience in zip(sweep["points"], (1, 2)):
        out = model.infer(batch, patience=patience)
        assert point["setting"] == {"patience": float(patience)}
        assert point["rho"] == pytest.approx(out.rho)
        assert point["metrics"]["accuracy"] == pytest.approx(float((out.predictions == labels).float().mean()))
        assert sum(point["exit_layer_counts"].values()) == 4
        assert point["exit_layer_counts"] == {str(l): int((out.exit_layers == l).sum()) for l in (1, 2, 3)}


def test_compare_command_trains_sweeps_and_reuses(tmp_path, capsys):
    """End to end on the tiny model of test_train.py: plain, MPEE, static and DeeBERT (two stages), two seeds."""
    from test_train import make_tiny_encoder, make_tiny_sst2
    from mpee_ref.__main__ import main

    enc, data, out = make_tiny_encoder(tmp_path / "enc"), make_tiny_sst2(tmp_path / "data"), tmp_path / "cmp"
    argv = ["compare", "--model", str(enc), "--task", "sst-2", "--data-dir", str(data), "--out", str(out),
            "--methods", "plain,mpee,static,deebert", "--seeds", "0,1", "--thresholds", "0,0.6", "--r-ees", "0,0.3",
            "--train-args", "--max-steps 2 --batch-size 4 --lr 1e-3 --max-train-examples 8 --warmup-ratio 0",
            "--threads", "1"]
    assert main(argv) == 0
    result = json.loads((out / "compare.json").read_text())
    assert set(result["sweeps"]) == {"plain", "mpee", "static", "deebert"}
    assert len(result["sweeps"]["mpee"][0]["points"]) == 4 and len(result["sweeps"]["static"][1]["points"]) == 1
    assert (out / "deebert" / "s1" / "stage2" / "final" / "baseline_config.json").is_file()
    table = (out / "compare.md").read_text()
    for method in ("mpee", "static", "deebert"):
        assert f"| {method} | 2 |" in table
    printed = capsys.readouterr().out
    assert "| mpee | 2 |" in printed
    stamp = (out / "mpee" / "s0" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0                                            # everything reused, nothing retrained
    assert (out / "mpee" / "s0" / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    changed = [x.replace("--lr 1e-3", "--lr 2e-3") for x in argv]
    assert main(changed) == 2                                         # a finished run with other flags is refused
    assert "trained with other arguments (differs in ['lr'])" in capsys.readouterr().err


def test_a_finished_run_older_than_new_train_fields_is_reused(tmp_path):
    """A train_summary.json written before --method/--stage/--option existed matches their defaults."""
    from mpee_ref.experiments import TrainArgs
    from mpee_ref.experiments.ablation import check_same_args
    from mpee_ref.experiments.runs import jsonable_args

    now = TrainArgs(task="sst-2", data_dir="d", out=str(tmp_path), model="m", lr=5e-5)
    old = {k: v for k, v in jsonable_args(now).items() if k not in ("method", "stage", "options", "freeze_backbone")}
    (tmp_path / "train_summary.json").write_text(json.dumps({"args": old}))
    check_same_args(tmp_path, now)
    with pytest.raises(ValueError, match=r"differs in \['method'\]"):
        check_same_args(tmp_path, TrainArgs(task="sst-2", data_dir="d", out=str(tmp_path), model="m", lr=5e-5,
                                            method="pabee"))


def test_per_method_flags():
    assert compare.per_method_flags("power-bert: --option retention=0.5,0.25 ; deebert:--lr 1e-4") == {
        "power_bert": "--option retention=0.5,0.25", "deebert": "--lr 1e-4"}
    assert compare.per_method_flags("") == {}
    with pytest.raises(ValueError, match="expected 'METHOD: FLAGS'"):
        compare.per_method_flags("--lr 1e-4")


def test_a_finished_run_is_reused_under_another_name_of_its_folders(tmp_path):
    """A run reached through a link (e.g. a search candidate linking an earlier comparison's runs) matches
    when its model and data folders are the same folders under other names."""
    from mpee_ref.experiments import TrainArgs
    from mpee_ref.experiments.ablation import check_same_args
    from mpee_ref.experiments.runs import jsonable_args

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    saved = TrainArgs(task="sst-2", data_dir=str(tmp_path / "real"), out=str(tmp_path), model=str(tmp_path / "real"))
    (tmp_path / "train_summary.json").write_text(json.dumps({"args": jsonable_args(saved)}))
    check_same_args(tmp_path, TrainArgs(task="sst-2", data_dir=str(tmp_path / "link"), out=str(tmp_path),
                                        model=str(tmp_path / "link")))
    with pytest.raises(ValueError, match=r"differs in \['model'\]"):
        check_same_args(tmp_path, TrainArgs(task="sst-2", data_dir=str(tmp_path / "real"), out=str(tmp_path),
                                            model=str(tmp_path)))
