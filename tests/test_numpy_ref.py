"""The NumPy port (mpee_ref/numpy_ref) passes the golden vectors and matches the torch model on MiniLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mpee_ref import numpy_ref as npr

REPO = Path(__file__).resolve().parents[1]
VEC = REPO / "tests" / "vectors"
MANIFEST = json.loads((VEC / "manifest.json").read_text(encoding="utf-8"))
TENSORS = load_file(str(VEC / "vectors.safetensors"))
LAYER_KEYS = ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o", "ln1_w", "ln1_b",
              "w_1", "b_1", "w_2", "b_2", "ln2_w", "ln2_b")


# ----------------------------------------------------------------------------- how each entry maps onto the port
def n_layer(t, a):
    p = {k: t[k] for k in LAYER_KEYS}
    bias = npr.attention_mask_bias(t["attention_mask"], t["h"].dtype)
    z, probs = npr.eq01_attention_sublayer(t["h"], p, a["num_heads"], a["eps"], bias)
    mhsa, _ = npr.eq02_mhsa(t["h"], *(p[k] for k in LAYER_KEYS[:8]), a["num_heads"], bias)
    h_out, _ = npr.eq01_transformer_layer(t["h"], p, a["num_heads"], a["eps"], bias)
    return {"h_out": h_out, "z_tilde": z, "probs": probs, "mask_bias": bias, "mhsa_out": mhsa,
            "ffn_out": npr.eq04_ffn(z, p["w_1"], p["b_1"], p["w_2"], p["b_2"])}


def n_mhsa(t, a):
    bias = npr.attention_mask_bias(t["attention_mask"], t["z"].dtype)
    out, probs = npr.eq02_mhsa(t["z"], *(t[k] for k in LAYER_KEYS[:8]), a["num_heads"], bias)
    B, T, D = t["z"].shape
    H = a["num_heads"]
    q, k, v = (npr.linear(t["z"], t[w], t[b]).reshape(B, T, H, D // H).transpose(0, 2, 1, 3)
               for w, b in (("w_q", "b_q"), ("w_k", "b_k"), ("w_v", "b_v")))
    return {"out": out, "probs": probs, "q": q, "k": k, "v": v, "context": npr.eq03_attention(q, k, v, bias)[0]}


def n_attention(t, a):
    bias = npr.attention_mask_bias(t["attention_mask"], t["q"].dtype)
    context, probs = npr.eq03_attention(t["q"], t["k"], t["v"], bias)
    scores = t["q"] @ np.swapaxes(t["k"], -1, -2) / np.sqrt(t["q"].shape[-1]) + bias
    return {"context": context, "probs": probs, "scores": scores}


def n_ffn(t, a):
    pre = npr.linear(t["z_tilde"], t["w_1"], t["b_1"])
    return {"out": npr.eq04_ffn(t["z_tilde"], t["w_1"], t["b_1"], t["w_2"], t["b_2"]), "pre_act": pre,
            "act": npr.gelu(pre)}


def n_prune(t, a):
    r = npr.prune_tokens(t["hidden"], t["attention_mask"], t["memory"], a["r_ee"], r_ee_means=a["r_ee_means"],
                         fusion=a["fusion"], fused_memory=a["fused_memory"])
    return {"out_hidden": r.hidden, "out_attention_mask": r.attention_mask, "out_memory": r.memory,
            "source_index": r.source_index, "kept": r.kept, "fused": r.fused, "alpha": r.alpha,
            "num_kept": r.num_kept}


def n_exit_logits(t, a):
    return {"logits_pooler": npr.eq09_pooled_exit_logits(t["h_cls"], t["w_pool"], t["b_pool"], t["w_cls"], t["b_cls"]),
            "pooled": np.tanh(npr.linear(t["h_cls"], t["w_pool"], t["b_pool"])),
            "logits_tanh": npr.eq09_exit_logits(t["h_cls"], t["w_tanh"], t["b_tanh"])}


def n_cls_memory(t, a):
    mem = npr.eq10_classifier_memory(t["prev"], t["logits"], a["lam"])
    ent = npr.exit_entropy(mem)
    return {"memory": mem, "memory_first": npr.eq10_classifier_memory(None, t["logits"], a["lam"]),
            "probabilities": npr.eq10_probabilities(mem), "entropy": ent, "exit": npr.should_exit(ent, a["threshold"]),
            "entropy_large": npr.exit_entropy(t["logits_large"])}


def n_teacher(t, a):
    teacher, eta = npr.eq12_teacher(t["memories"], t["w_eta"], t["b_eta"], t["v"])
    return {"teacher": teacher, "eta": eta,
            "scores": np.tanh(npr.linear(t["memories"], t["w_eta"], t["b_eta"])) @ t["v"]}


def n_total(t, a):
    tce = npr.eq11_cross_entropy(t["teacher"][None], t["labels"])[0]
    return {"total_paper": npr.eq14_total_loss(t["l_ce"], t["l_kd"]), "total_ce_only": npr.eq14_total_loss(t["l_ce"], None),
            "teacher_ce": tce, "total_gamma": npr.eq14_total_loss(t["l_ce"], t["l_kd"], gamma=a["gamma"], teacher_ce=tce)}


def n_flops(t, a):
    D, F, C, L = a["hidden"], a["intermediate"], a["num_labels"], a["num_layers"]
    ex, full, per = npr.sample_flops(t["n_att"].tolist(), t["n_ffn"].tolist(), t["num_fused"].tolist(),
                                     int(t["n_att"][0]), L, D, F, C, "pooler")
    return {"layer_flops": [npr.eq15_layer_flops(x, y, D, F) for x, y in t["layer_cases"].tolist()],
            "head_flops_pooler": npr.head_flops(D, C, "pooler"), "head_flops_tanh": npr.head_flops(D, C, "tanh"),
            "fusion_flops": npr.fusion_flops(int(t["num_fused"].max()), D), "sample_per_layer": per,
            "sample_executed": ex, "sample_full": full, "speedup": npr.eq15_speedup([full, full], [ex, full])}


PORT = {
    "eq01_layer_norm": lambda t, a: {"out": npr.layer_norm(t["x"], t["weight"], t["bias"], a["eps"])},
    "eq04_gelu": lambda t, a: {"erf": npr.gelu(t["x"]), "tanh": npr.gelu(t["x"], "tanh")},
    "eq01_transformer_layer": n_layer, "eq02_mhsa": n_mhsa, "eq03_attention": n_attention, "eq04_ffn": n_ffn,
    "eq05_class_attention": lambda t, a: {"a_class": npr.eq05_class_attention(t["probs"], t["attention_mask"])},
    "eq06_attention_memory": lambda t, a: {"memory": npr.eq06_attention_memory(t["prev"], t["a_class"], a["beta"]),
                                           "memory_first": npr.eq06_attention_memory(None, t["a_class"], a["beta"])},
    "eq07_num_kept": lambda t, a: {f"m_{m}_{r}": npr.eq07_num_kept(t["n"], r, m) for m, r in a["cases"]},
    "eq07_top_m": lambda t, a: {"keep": npr.eq07_top_m(t["scores"], t["valid"], t["m"])},
    "eq08_fuse": lambda t, a: {"h_eef": npr.eq08_fuse(t["tokens"], t["alpha"], t["fuse"])},
    "eq08_prune_tokens": n_prune, "eq08_prune_tokens_authors": n_prune,
    "eq09_exit_logits": n_exit_logits, "eq10_classifier_memory": n_cls_memory,
    "eq11_cross_entropy": lambda t, a: {"ce": npr.eq11_cross_entropy(t["memories"], t["labels"])},
    "eq12_teacher": n_teacher,
    "eq13_kd_loss": lambda t, a: {f"kd_{d}_{r}": npr.eq13_kd_loss(t["memories"], t["teacher"], a["tau"], d, r)
                                  for d in ("student_teacher", "teacher_student") for r in ("batchmean", "mean")},
    "eq14_total_loss": n_total, "eq15_flops": n_flops,
}


def inputs(entry: str, dtype=np.float64) -> dict[str, np.ndarray]:
    spec = MANIFEST["entries"][entry]["tensors"]
    return {k: TENSORS[f"{entry}/{k}"].astype(dtype) if TENSORS[f"{entry}/{k}"].dtype.kind == "f"
            else TENSORS[f"{entry}/{k}"] for k, s in spec.items() if s["role"] in ("input", "param")}


def check(entry: str, name: str, got, precision: str) -> None:
    want = TENSORS[f"{entry}/{name}"]
    got = np.asarray(got)
    assert got.shape == want.shape, f"{entry}/{name}: shape {got.shape}, golden {want.shape}"
    if want.dtype.kind in "biu":
        assert np.array_equal(got.astype(want.dtype), want), f"{entry}/{name}: {got} != {want}"
    else:
        tol = MANIFEST["entries"][entry]["tolerance"][precision]
        got = got.astype(np.float64)
        masked = want < -1e300                     # finfo(float64).min from the padding mask
        if precision == "float32":                 # ... is finfo(float32).min in a float32 port
            assert (got[masked] < -1e37).all(), f"{entry}/{name}: masked entries not ~finfo(float32).min"
            got, want = np.where(masked, 0.0, got), np.where(masked, 0.0, want)
        np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"],
                                   err_msg=f"{entry}/{name} ({precision})")


def test_every_equation_entry_has_a_port():
    assert set(PORT) == {e for e in MANIFEST["entries"] if not e.startswith("e2e_")}


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("entry", sorted(PORT))
def test_port_reproduces_equation_vectors(entry, precision):
    """float64: the tight tolerances; float32 (inputs cast): the manifest's fp32 tolerances are reachable."""
    got = PORT[entry](inputs(entry, np.dtype(precision)), MANIFEST["entries"][entry]["attributes"])
    spec = MANIFEST["entries"][entry]["tensors"]
    assert set(got) == {k for k, s in spec.items() if s["role"] in ("output", "intermediate")}
    for name, value in got.items():
        if precision == "float32" and name == "entropy_large":
            continue   # logits of +-300 / 3 in float32 still fine, but rounding of 300*sin differs: checked in fp64
        check(entry, name, value, precision)


# ----------------------------------------------------------------------------- end to end
def e2e(entry: str, dtype=np.float64) -> npr.MPEENumpy:
    a = MANIFEST["entries"][entry]["attributes"]
    t = inputs(entry, dtype)
    state = {k[len("param/"):]: v for k, v in t.items() if k.startswith("param/")}
    bert = json.loads(json.dumps(_e2e_bert()))
    return npr.MPEENumpy(bert, a["mpee_config"], state, dtype=dtype)


def _e2e_bert() -> dict:
    spec = MANIFEST["entries"]["e2e_infer"]["tensors"]
    V, D = spec["param/bert.embeddings.word_embeddings.weight"]["shape"]
    L = sum(1 for k in spec if k.endswith("attention.self.query.weight"))
    return dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=4,
                intermediate_size=spec["param/bert.encoder.layer.0.intermediate.dense.weight"]["shape"][0],
                hidden_act="gelu", layer_norm_eps=1e-12)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_port_reproduces_e2e_inference_trace(precision):
    e, a = "e2e_infer", MANIFEST["entries"]["e2e_infer"]["attributes"]
    model = e2e(e, np.dtype(precision))
    results = model.infer(TENSORS[f"{e}/input_ids"], TENSORS[f"{e}/attention_mask"], TENSORS[f"{e}/token_type_ids"],
                          threshold=a["threshold"])
    for b, r in enumerate(results):
        s = f"s{b}"
        check(e, f"{s}/exit_layer", r.exit_layer, precision)
        check(e, f"{s}/prediction", r.prediction, precision)
        check(e, f"{s}/probabilities", r.probabilities, precision)
        check(e, f"{s}/entropy", [x.entropy for x in r.layers], precision)
        check(e, f"{s}/cls_memory", [x.memory for x in r.layers], precision)
        check(e, f"{s}/tokens_per_layer", [x.n_ffn for x in r.layers], precision)
        check(e, f"{s}/flops_executed", r.flops_executed, precision)
        check(e, f"{s}/flops_full", r.flops_full, precision)
        for x in r.layers:
            check(e, f"{s}/l{x.layer}/hidden", x.hidden, precision)
            check(e, f"{s}/l{x.layer}/positions", x.positions, precision)
            check(e, f"{s}/l{x.layer}/attention_memory", x.attention_memory, precision)
            if x.fused_positions:
                check(e, f"{s}/l{x.layer}/fused_positions", x.fused_positions, precision)
                check(e, f"{s}/l{x.layer}/fused_weights", x.fused_weights, precision)
            else:
                assert f"{e}/{s}/l{x.layer}/fused_positions" not in TENSORS


def test_port_reproduces_e2e_loss():
    e = "e2e_loss"
    model = e2e(e)
    out = model.loss(TENSORS[f"{e}/input_ids"], TENSORS[f"{e}/attention_mask"], TENSORS[f"{e}/token_type_ids"],
                     TENSORS[f"{e}/labels"])
    for name, got in (("total", out.total), ("ce", out.ce), ("kd", out.kd), ("teacher_logits", out.teacher_logits),
                      ("eta", out.eta), ("memories", out.memories)):
        check(e, name, got, "float64")


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

    ref = model.infer(batch, threshold=threshold).samples
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
