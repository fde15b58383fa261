"""Figure data and plots (mpee_ref/experiments/figures.py): Fig. 1 token similarity, Figs. 3-4 from sweep
points, Fig. 5 top vs bottom class-attention tokens. Plots need matplotlib (optional extra ``plot``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mpee_ref.__main__ import main
from mpee_ref.data import read_glue
from mpee_ref.experiments import encode_examples, evaluate_encoded, run_inference
from mpee_ref.experiments.figures import (choose_fig4_point, fig1_token_similarity, fig3_curves,
                                          fig4_exit_distribution, fig5_token_select, have_matplotlib, kept_input_tokens,
                                          mean_pairwise_cosine, plot_fig1, plot_fig3, plot_fig4, plot_fig5)
from mpee_ref.mpee import load_mpee
from test_train import make_tiny_encoder, make_tiny_sst2, one_thread  # noqa: F401 (autouse fixture)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("figtiny")
    enc = make_tiny_encoder(root / "enc")
    data_dir = make_tiny_sst2(root / "data", n_train=4, n_dev=10)
    model = load_mpee(enc)
    data = encode_examples(model.tokenizer, read_glue("sst-2", data_dir, "dev"), 128)
    return {"enc": enc, "data_dir": data_dir, "model": model, "data": data}


# ----------------------------------------------------------------------------- Fig. 1
def test_cosine_identical_tokens_give_1_and_orthogonal_give_0():
    e = torch.eye(4, dtype=torch.float64)                                  # (4, 4) orthonormal rows
    same = torch.stack([3.0 * e[0], e[0], 0.5 * e[0]])[None]               # (1, 3, 4) one direction, any norm
    ortho = e[:3][None]                                                    # (1, 3, 4)
    ones = torch.ones(1, 3)
    assert mean_pairwise_cosine(same, ones).item() == pytest.approx(1.0, abs=1e-15)
    assert mean_pairwise_cosine(ortho, ones).item() == pytest.approx(0.0, abs=1e-15)
    assert mean_pairwise_cosine(-same[:, :2] * torch.tensor([1.0, -1.0], dtype=torch.float64)[None, :, None],
                                torch.ones(1, 2)).item() == pytest.approx(-1.0, abs=1e-15)


def test_cosine_hand_example_with_padding_and_a_single_token_row():
    e = torch.eye(3, dtype=torch.float64)
    # row 0: tokens e0, e0, e1 + one padding slot holding e0 (ignored): ordered pairs i != j = 6, of which
    #        (0,1) and (1,0) have cosine 1, the other 4 cosine 0 -> 2/6 = 1/3
    # row 1: one real token -> no pair -> NaN
    h = torch.stack([torch.stack([e[0], e[0], e[1], e[0]]), torch.stack([e[2], e[0], e[0], e[0]])])  # (2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    got = mean_pairwise_cosine(h, mask)
    assert got[0].item() == pytest.approx(1 / 3, abs=1e-15) and math.isnan(got[1].item())
    with pytest.raises(ValueError, match=r"mask: expected shape \(B, T\) = \(2, 4\), got \(2, 3\)"):
        mean_pairwise_cosine(h, mask[:, :3])
    with pytest.raises(ValueError, match=r"hidden: expected \(B, T, D\), got shape \(4, 3\)"):
        mean_pairwise_cosine(h[0], mask)


def test_fig1_averages_per_sentence_cosines_of_the_plain_encoder(setup):
    model, data = setup["model"], setup["data"]
    got = fig1_token_similarity(model, data, batch_size=4)
    assert len(got) == 3 + 1
    # by hand: one sentence at a time, no padding, every ordered pair i != j
    want = [0.0] * 4
    for ids, types in zip(data.input_ids, data.token_type_ids):
        with torch.no_grad():
            out = model.bert(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([types]),
                             output_hidden_states=True)
        for l, h in enumerate(out.hidden_states):
            u = torch.nn.functional.normalize(h[0], dim=-1)
            cos = u @ u.T
            n = len(ids)
            want[l] += float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))) / len(data)
    assert got == pytest.approx(want, abs=1e-5)
    assert all(-1.0 <= v <= 1.0 for v in got) and len(set(round(v, 6) for v in got)) == 4


# ----------------------------------------------------------------------------- Figs. 3, 4
def _pt(f, r, rho, acc, counts=None):
    return {"threshold": f, "r_ee": r, "rho": rho, "metrics": {"accuracy": acc},
            "exit_layer_counts": counts or {"1": 0, "2": 0, "3": 1}}


def test_fig3_groups_by_r_ee_and_sorts_by_threshold():
    pts = [_pt(0.2, 0.0, 1.5, 0.8), _pt(0.1, 0.0, 1.2, 0.9), _pt(0.1, 0.5, 2.0, 0.7)]
    assert fig3_curves(pts, "accuracy") == {
        "0.0": [{"threshold": 0.1, "rho": 1.2, "metric": 0.9}, {"threshold": 0.2, "rho": 1.5, "metric": 0.8}],
        "0.5": [{"threshold": 0.1, "rho": 2.0, "metric": 0.7}]}


def test_fig4_default_point_is_the_fastest_within_one_point_of_the_best():
    pts = [_pt(0.0, 0.0, 1.0, 0.900), _pt(0.1, 0.0, 2.0, 0.891), _pt(0.2, 0.0, 3.0, 0.889), _pt(0.3, 0.3, 2.5, 0.895)]
    assert choose_fig4_point(pts, "accuracy") == 3           # 0.889 is 1.1 points below 0.900: out
    assert choose_fig4_point(pts, "accuracy", tolerance=0.02) == 2
    assert fig4_exit_distribution(_pt(0, 0, 1, 1, {"1": 4, "3": 2}), 3) == [4, 0, 2]
    with pytest.raises(ValueError, match="points"):
        choose_fig4_point([], "accuracy")


# ----------------------------------------------------------------------------- Fig. 5
def test_fig5_top_and_bottom_keep_different_tokens_of_the_same_count(setup):
    model, data = setup["model"], setup["data"]
    res = fig5_token_select(model, data, "sst-2", [0.0, 0.5], batch_size=4)
    assert res["r_ee"] == [0.0, 0.5]
    # R_ee = 0: nothing exits, so top and bottom keep the same tokens and give the same result
    assert res["kept_overlap"][0] == 1.0 and res["top"][0] == res["bottom"][0]
    # R_ee = 0.5: the same number of tokens per layer, but not the same tokens
    assert res["top"][1]["mean_tokens_per_layer"] == res["bottom"][1]["mean_tokens_per_layer"]
    assert res["kept_overlap"][1] < 0.9
    top = run_inference(model, data, 4, r_ee=0.5, layer_exit=False, token_select="top", trace=True)
    bottom = run_inference(model, data, 4, r_ee=0.5, layer_exit=False, token_select="bottom", trace=True)
    assert all(s.exit_layer == 3 for s in top + bottom)     # layer_exit=False: only the token choice differs
    differ = [a.layers[1].positions != b.layers[1].positions for a, b in zip(top, bottom)]
    assert sum(differ) >= 8
    ref = evaluate_encoded(model, data, "sst-2", 1, r_ee=0.5, layer_exit=False, token_select="bottom").summary
    assert res["bottom"][1]["rho"] == pytest.approx(ref["rho"], rel=1e-12)
    assert res["bottom"][1]["metrics"] == ref["metrics"]


def test_fig5_overlap_counts_input_tokens_only(setup):
    """Every EE-fusion token (code -l, made at layer l) is left out of kept_overlap, not only layer 1's."""
    model, data = setup["model"], setup["data"]
    res = fig5_token_select(model, data, "sst-2", [0.5], batch_size=4)
    last = {sel: [s.layers[-1].positions for s in run_inference(model, data, 4, r_ee=0.5, layer_exit=False,
                                                                 token_select=sel, trace=True)]
            for sel in ("top", "bottom")}
    assert any(p < -1 for pos in last["top"] for p in pos)        # fusion tokens of layers 2, 3 reach the end

    def mean_overlap(kept):
        pairs = list(zip(kept(last["top"]), kept(last["bottom"])))
        return sum(len(a & b) / len(a | b) for a, b in pairs) / len(pairs)

    expected = mean_overlap(lambda rows: [{p for p in pos if p >= 0} for pos in rows])
    assert res["kept_overlap"] == [pytest.approx(expected, abs=1e-15)]
    # what the old rule (leave out layer 1's fusion token only) gives here: not the same number
    assert mean_overlap(lambda rows: [set(pos) - {-1} for pos in rows]) != pytest.approx(expected, abs=1e-3)
    assert kept_input_tokens((0, 3, -1, 5, -3)) == {0, 3, 5}


# ----------------------------------------------------------------------------- plots
def test_plots_write_pngs(tmp_path):
    if not have_matplotlib():
        pytest.skip("matplotlib not installed (optional extra 'plot'): pip install matplotlib")
    pts = [_pt(0.1, 0.0, 1.2, 0.9), _pt(0.3, 0.0, 1.9, 0.8), _pt(0.1, 0.3, 2.0, 0.7)]
    fig5 = {"r_ee": [0.1, 0.3], "top": [{"metrics": {"accuracy": 0.9}}, {"metrics": {"accuracy": 0.8}}],
            "bottom": [{"metrics": {"accuracy": 0.7}}, {"metrics": {"accuracy": 0.5}}]}
    paths = [plot_fig1([0.2, 0.4, 0.6, 0.8], tmp_path / "f1.png"),
             plot_fig3(fig3_curves(pts, "accuracy"), "accuracy", tmp_path / "f3.png"),
             plot_fig4([5, 0, 2], "F 0.1", tmp_path / "sub" / "f4.png"),
             plot_fig5(fig5, "accuracy", tmp_path / "f5.png")]
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 1000


def test_sweep_cli_writes_every_figure(setup, tmp_path):
    if not have_matplotlib():
        pytest.skip("matplotlib not installed (optional extra 'plot'): pip install matplotlib")
    rc = main(["sweep", "--model", str(setup["enc"]), "--task", "sst-2", "--data-dir", str(setup["data_dir"]),
               "--thresholds", "0,0.6", "--r-ee", "0,0.3", "--fig5-r-ee", "0.5", "--batch-size", "5",
               "--fig4-threshold", "0.65", "--fig4-r-ee", "0.1", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "sweep.json").read_text())
    names = ["fig3_tradeoff.png", "fig4_exit_layers.png", "fig5_token_select.png", "fig1_token_similarity.png"]
    assert res["figures"] == names
    for n in names:
        assert (tmp_path / n).read_bytes()[:8] == PNG
    # a Fig. 4 point outside the grid is evaluated on its own
    assert (res["fig4"]["threshold"], res["fig4"]["r_ee"]) == (0.65, 0.1)
    assert sum(res["fig4"]["samples_per_exit_layer"]) == 10
    assert res["fig1"]["mean_pairwise_cosine"] == pytest.approx(fig1_token_similarity(setup["model"], setup["data"]))
