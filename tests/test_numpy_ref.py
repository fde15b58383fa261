"""The NumPy port (mpee_ref/numpy_ref) passes the golden vectors through the runner and matches the torch model
on MiniLM-L6."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mpee_ref import numpy_ref as npr
from mpee_ref.numpy_ref import adapter as numpy_adapter
from mpee_ref.vectors import GoldenVectors, report, run

REPO = Path(__file__).resolve().parents[1]
VEC = REPO / "tests" / "vectors"
MANIFEST = json.loads((VEC / "manifest.json").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- the golden vectors, through the runner
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_port_passes_the_runner(precision, minilm_dir):
    """Every entry through ``python -m mpee_ref.vectors check``'s code with the port's adapter
    (mpee_ref/numpy_ref/adapter.py): float64 at the tight tolerances, float32 at the fp32 ones."""
    results = run(numpy_adapter.ENTRIES, precision, golden=GoldenVectors(VEC, minilm_dir))
    assert {r.entry for r in results} == set(MANIFEST["entries"])
    expected_skip = {"eq01_layer_norm_offset"} if precision == "float32" else set()
    assert {r.entry for r in results if r.status == "skipped"} == expected_skip, report(results)
    assert all(r.status in ("pass", "skipped") for r in results), report(results)
    # the adapter returns every intermediate too, so a divergence is located, not just detected
    for r in results:
        if r.status == "pass":
            spec = MANIFEST["entries"][r.entry]["tensors"]
            returned = {t.name for t in r.tensors}
            assert returned >= {n for n, s in spec.items() if s["role"] == "output"}, r.entry
            assert returned >= {n for n, s in spec.items() if s["role"] == "intermediate"
                                and not n.startswith("grad/")}, r.entry


def test_port_passes_the_runner_command_line():
    """The documented command, as a porter runs it (tiny entries only: no weights needed)."""
    entries = ",".join(e for e in MANIFEST["entries"] if e != "e2e_real")
    r = subprocess.run([sys.executable, "-m", "mpee_ref.vectors", "check", "--adapter", "mpee_ref.numpy_ref.adapter",
                        "--precision", "float32", "--entries", entries], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"pass {len(MANIFEST['entries']) - 2} fail 0 missing 0 skipped 1" in r.stdout, r.stdout


def test_port_imports_no_torch():
    """Load mpee_ref/numpy_ref as a stand-alone package with torch made unimportable."""
    code = (
        "import sys, importlib.util; sys.modules['torch'] = None\n"
        f"p = {str(REPO / 'mpee_ref' / 'numpy_ref')!r}\n"
        "spec = importlib.util.spec_from_file_location('numpy_ref', p + '/__init__.py', submodule_search_locations=[p])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['numpy_ref'] = m; spec.loader.exec_module(m)\n"
        "import numpy as np; print(m.eq07_num_kept(np.array([10]), 0.7)[0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"       # ceil(10 * 0.3) with the float guard: 10 * (1 - 0.7) = 3.0000000000000004


# ----------------------------------------------------------------------------- real weights (MiniLM-L6)
SENTENCES = ["a gripping , funny and thoroughly entertaining film .",
             "the plot is thin and the jokes fall flat , but the cast is charming enough to carry it",
             "bad .",
             "it is not a great movie , yet i would happily watch it again on a rainy sunday afternoon ."]
HIDDEN_ATOL = 2e-4      # float32 port vs float32 torch, LayerNorm outputs of O(1)-O(10)


def _encode(folder):
    from mpee_ref.io import load_tokenizer
    enc = load_tokenizer(folder)(SENTENCES)
    return enc.input_ids.numpy(), enc.attention_mask.numpy(), enc.token_type_ids.numpy()


def test_port_matches_torch_encoder_on_minilm(minilm_dir):
    import torch
    from mpee_ref.io import load_encoder
    ids, mask, tt = _encode(minilm_dir)
    with torch.no_grad():
        ref = load_encoder(minilm_dir)(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tt),
                                       output_hidden_states=True).hidden_states
    got = npr.BertNumpy.from_folder(minilm_dir, dtype=np.float32).forward(ids, mask, tt)
    assert len(got) == len(ref) == 7
    real = mask.astype(bool)
    for l, (g, r) in enumerate(zip(got, ref)):
        np.testing.assert_allclose(g[real], r.numpy()[real], atol=HIDDEN_ATOL, rtol=0, err_msg=f"layer {l}")


def test_port_matches_torch_mpee_on_minilm(minilm_dir, tmp_path):
    import importlib.util
    import torch
    from mpee_ref.mpee import load_mpee, save_mpee
    spec = importlib.util.spec_from_file_location("make_vectors", REPO / "tools" / "make_vectors.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    model = load_mpee(minilm_dir, num_labels=3, r_ee=0.4)          # prunes at layers 2, 4, 5 of 6
    with torch.no_grad():                                           # spread the untrained heads' entropies
        for head in model.exits:
            head.classifier.weight.mul_(300.0)
    save_mpee(model, tmp_path / "mpee")
    port = npr.MPEENumpy.from_folder(tmp_path / "mpee", dtype=np.float32)
    ids, mask, tt = _encode(minilm_dir)
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "token_type_ids": torch.from_numpy(tt)}
    # F between the entropies, as far from all of them as possible, with exit layers that differ by sample
    ents = [s.entropies[:-1] for s in model.infer(batch, layer_exit=False).samples]
    flat = sorted(x for row in ents for x in row)

    def exits(f):
        return [next((l for l, x in enumerate(row, start=1) if x < f), 6) for row in ents]

    candidates = [(min(abs(x - f) for x in flat), f) for f in ((a + b) / 2 for a, b in zip(flat, flat[1:]))
                  if min(exits(f)) < 6 and len(set(exits(f))) > 1]
    margin, threshold = max(candidates)
    assert margin > 1e-5, ents          # entropies of the fp32 port differ by ~1e-6

    ref = model.infer(batch, threshold=threshold, trace=True).samples
    got = port.infer(ids, mask, tt, threshold=threshold)
    assert min(s.exit_layer for s in ref) < 6 and len({s.exit_layer for s in ref}) > 1
    assert any(len(t.fused_positions) > 0 for s in ref for t in s.layers)
    for b, (r, g) in enumerate(zip(ref, got)):
        assert (g.exit_layer, g.prediction) == (r.exit_layer, r.prediction), b
        assert [t.positions for t in g.layers] == [t.positions for t in r.layers], b
        assert [t.fused_positions for t in g.layers] == [t.fused_positions for t in r.layers], b
        np.testing.assert_allclose([t.entropy for t in g.layers], r.entropies, atol=1e-4)
        n = int(mask[b].sum())
        cap = gen._capture_one(model, batch["input_ids"][b, :n], batch["token_type_ids"][b, :n], threshold)
        for l, (t, h) in enumerate(zip(g.layers, cap["hidden"]), start=1):
            np.testing.assert_allclose(t.hidden, h.numpy(), atol=HIDDEN_ATOL, rtol=0, err_msg=f"sample {b} layer {l}")


def test_port_defaults_are_mpeeconfig_defaults_and_unported_switches_are_refused():
    from mpee_ref.mpee import MPEEConfig
    from mpee_ref.numpy_ref.model import MPEE_DEFAULTS, NOT_PORTED, MPEENumpy
    assert MPEE_DEFAULTS == MPEEConfig().to_dict()
    assert set(NOT_PORTED) == {"head_norm"}                  # the authors' three switches are ported
    with pytest.raises(ValueError, match="head_norm=True is not ported"):
        MPEENumpy({}, {"head_norm": True}, {})


@pytest.mark.parametrize("ce_weighting", ["uniform", "depth"])
def test_port_loss_matches_torch_under_the_authors_preset(ce_weighting):
    """The training forward under MPEEConfig.authors (padded counts, truncated memory, final classifier in the
    loss): e2e_authors covers inference only, so the loss is checked against the torch model here; also
    with Eq. 11's exits weighted by depth (L12)."""
    import torch
    from mpee_ref.config import BertConfig
    from mpee_ref.mpee import MPEEConfig, MPEEModel
    gold = GoldenVectors(VEC)
    a = MANIFEST["entries"]["e2e_authors"]["attributes"]
    t = {n: gold.tensor("e2e_authors", n) for n, s in MANIFEST["entries"]["e2e_authors"]["tensors"].items()
         if s["role"] in ("input", "param")}
    state = {k[len("param/"):]: v for k, v in t.items() if k.startswith("param/")}
    labels = np.array([(3 * b + 2) % 5 for b in range(t["input_ids"].shape[0])])
    mpee_config = {**a["mpee_config"], "ce_weighting": ce_weighting}
    model = MPEEModel(BertConfig(**a["bert_config"]), MPEEConfig.from_dict(mpee_config)).double().eval()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    batch = [torch.from_numpy(np.array(t[k])) for k in ("input_ids", "attention_mask", "token_type_ids")]
    o = model(*batch, labels=torch.from_numpy(labels))
    port = npr.MPEENumpy(a["bert_config"], mpee_config, state).loss(
        t["input_ids"], t["attention_mask"], t["token_type_ids"], labels)
    np.testing.assert_allclose(port.final_logits, o.final_logits.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(port.tokens, o.tokens.numpy())
    np.testing.assert_allclose(port.ce, o.loss.ce.detach().numpy(), rtol=1e-9)
    np.testing.assert_allclose(port.kd, o.loss.kd.detach().numpy(), rtol=1e-9)
    np.testing.assert_allclose(port.total, float(o.loss.total.detach()), rtol=1e-9)
    # the final classifier really replaces exit L: with exit L's memory the total changes
    assert not np.isclose(port.ce[-1], npr.eq11_cross_entropy(port.memories[-1:], labels)[0])
