"""The NumPy port's adapter for the golden-vector runner: each manifest entry -> calls into the port.

``python -m mpee_ref.vectors check --adapter mpee_ref.numpy_ref.adapter [--precision float32]``.
A port in another framework writes the same file: ``ENTRIES[entry](inputs, attributes) -> {name: array}``
(docs/PORTING.md has the entry -> call table). :func:`build` takes the port as a namespace so the
mutation tests (tests/test_mutations.py) can run it on deliberately broken copies.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import numpy as np

LAYER_KEYS = ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o", "ln1_w", "ln1_b",
              "w_1", "b_1", "w_2", "b_2", "ln2_w", "ln2_b")


def _layer(npr, t, a):
    p = {k: t[k] for k in LAYER_KEYS}
    bias = npr.attention_mask_bias(t["attention_mask"], t["h"].dtype)
    z, probs = npr.eq01_attention_sublayer(t["h"], p, a["num_heads"], a["eps"], bias)
    mhsa, _ = npr.eq02_mhsa(t["h"], *(p[k] for k in LAYER_KEYS[:8]), a["num_heads"], bias)
    h_out, _ = npr.eq01_transformer_layer(t["h"], p, a["num_heads"], a["eps"], bias)
    return {"h_out": h_out, "z_tilde": z, "probs": probs, "mask_bias": bias, "mhsa_out": mhsa,
            "ffn_out": npr.eq04_ffn(z, p["w_1"], p["b_1"], p["w_2"], p["b_2"])}


def _mhsa(npr, t, a):
    bias = npr.attention_mask_bias(t["attention_mask"], t["z"].dtype)
    out, probs = npr.eq02_mhsa(t["z"], *(t[k] for k in LAYER_KEYS[:8]), a["num_heads"], bias)
    B, T, D = t["z"].shape
    H = a["num_heads"]
    q, k, v = (npr.linear(t["z"], t[w], t[b]).reshape(B, T, H, D // H).transpose(0, 2, 1, 3)
               for w, b in (("w_q", "b_q"), ("w_k", "b_k"), ("w_v", "b_v")))
    return {"out": out, "probs": probs, "q": q, "k": k, "v": v, "context": npr.eq03_attention(q, k, v, bias)[0]}


def _attention(npr, t, a):
    bias = npr.attention_mask_bias(t["attention_mask"], t["q"].dtype)
    context, probs = npr.eq03_attention(t["q"], t["k"], t["v"], bias)
    scores = t["q"] @ np.swapaxes(t["k"], -1, -2) / np.sqrt(t["q"].shape[-1]) + bias
    return {"context": context, "probs": probs, "scores": scores}


def _ffn(npr, t, a):
    pre = npr.linear(t["z_tilde"], t["w_1"], t["b_1"])
    return {"out": npr.eq04_ffn(t["z_tilde"], t["w_1"], t["b_1"], t["w_2"], t["b_2"]), "pre_act": pre,
            "act": npr.gelu(pre)}


def _prune(npr, t, a):
    r = npr.prune_tokens(t["hidden"], t["attention_mask"], t["memory"], a["r_ee"], r_ee_means=a["r_ee_means"],
                         fusion=a["fusion"], fused_memory=a["fused_memory"])
    return {"out_hidden": r.hidden, "out_attention_mask": r.attention_mask, "out_memory": r.memory,
            "source_index": r.source_index, "kept": r.kept, "fused": r.fused, "alpha": r.alpha,
            "num_kept": r.num_kept}


def _exit_logits(npr, t, a):
    return {"logits_pooler": npr.eq09_pooled_exit_logits(t["h_cls"], t["w_pool"], t["b_pool"], t["w_cls"],
                                                         t["b_cls"]),
            "pooled": np.tanh(npr.linear(t["h_cls"], t["w_pool"], t["b_pool"])),
            "logits_tanh": npr.eq09_exit_logits(t["h_cls"], t["w_tanh"], t["b_tanh"])}


def _cls_memory(npr, t, a):
    mem = npr.eq10_classifier_memory(t["prev"], t["logits"], a["lam"])
    ent = npr.exit_entropy(mem)
    return {"memory": mem, "memory_first": npr.eq10_classifier_memory(None, t["logits"], a["lam"]),
            "probabilities": npr.eq10_probabilities(mem), "entropy": ent,
            "exit": npr.should_exit(ent, a["threshold"]), "entropy_large": npr.exit_entropy(t["logits_large"]),
            "probabilities_large": npr.eq10_probabilities(t["logits_large"])}


def _teacher(npr, t, a):
    tch, eta = npr.eq12_teacher(t["memories"], t["w_eta"], t["b_eta"], t["v"])
    return {"teacher": tch, "eta": eta, "scores": np.tanh(npr.linear(t["memories"], t["w_eta"], t["b_eta"])) @ t["v"]}


def _total(npr, t, a):
    tce = npr.eq11_cross_entropy(t["teacher"][None], t["labels"])[0]
    w = npr.ce_exit_weights(len(t["l_ce"]), "depth")                       # (L,)
    return {"total_paper": npr.eq14_total_loss(t["l_ce"], t["l_kd"]),
            "total_ce_only": npr.eq14_total_loss(t["l_ce"], None), "teacher_ce": tce,
            "total_gamma": npr.eq14_total_loss(t["l_ce"], t["l_kd"], gamma=a["gamma"], teacher_ce=tce),
            "ce_weights_depth": w, "total_depth": npr.eq14_total_loss(t["l_ce"], t["l_kd"], ce_weights=w)}


def _flops(npr, t, a):
    D, I, C, L = a["hidden"], a["intermediate"], a["num_labels"], a["num_layers"]
    ex, full, per = npr.sample_flops(t["n_att"].tolist(), t["n_ffn"].tolist(), t["num_fused"].tolist(),
                                     int(t["n_att"][0]), L, D, I, C, "pooler")
    return {"layer_flops": [npr.eq15_layer_flops(x, y, D, I) for x, y in t["layer_cases"].tolist()],
            "head_flops_pooler": npr.head_flops(D, C, "pooler"), "head_flops_tanh": npr.head_flops(D, C, "tanh"),
            "fusion_flops": npr.fusion_flops(int(t["num_fused"].max()), D), "sample_per_layer": per,
            "sample_executed": ex, "sample_full": full, "speedup": npr.eq15_speedup([full, full], [ex, full])}


# ----------------------------------------------------------------------------- end to end
def _model(npr, t, a):
    state = {k[len("param/"):]: v for k, v in t.items() if k.startswith("param/")}
    return npr.MPEENumpy(a["bert_config"], a["mpee_config"], state, dtype=t["param/bert.embeddings.word_embeddings.weight"].dtype)


def _infer(npr, t, a, with_results: bool = False):
    results = _model(npr, t, a).infer(t["input_ids"], t["attention_mask"], t["token_type_ids"])
    out: dict[str, Any] = {}
    for b, r in enumerate(results):
        s = f"s{b}"
        out.update({f"{s}/exit_layer": r.exit_layer, f"{s}/prediction": r.prediction,
                    f"{s}/probabilities": r.probabilities, f"{s}/entropy": [x.entropy for x in r.layers],
                    f"{s}/cls_memory": [x.memory for x in r.layers],
                    f"{s}/exit_logits": [x.logits for x in r.layers],
                    f"{s}/tokens_per_layer": [x.n_ffn for x in r.layers],
                    f"{s}/flops_executed": r.flops_executed, f"{s}/flops_full": r.flops_full})
        for x in r.layers:
            out[f"{s}/l{x.layer}/hidden"] = x.hidden
            out[f"{s}/l{x.layer}/positions"] = x.positions
            out[f"{s}/l{x.layer}/attention_memory"] = x.attention_memory
            if x.fused_positions:
                out[f"{s}/l{x.layer}/fused_positions"] = x.fused_positions
                out[f"{s}/l{x.layer}/fused_weights"] = x.fused_weights
    return (out, results) if with_results else out


def _authors(npr, t, a):
    out, results = _infer(npr, t, a, with_results=True)
    c, L, D = a["mpee_config"], a["bert_config"]["num_hidden_layers"], a["bert_config"]["hidden_size"]
    for b, r in enumerate(results):
        out[f"s{b}/final_classifier"] = r.final_classifier
        out[f"s{b}/macs_authors_code_executed"], out[f"s{b}/macs_authors_code_full"] = npr.authors_code_sample_macs(
            r.exit_layer, c["prune_layers"], c["r_ee"], L, D, max_len=c["pad_to"])
    return out


def _padded(npr, t, a):
    layers = _model(npr, t, a).trace_batch(t["input_ids"], t["attention_mask"], t["token_type_ids"])
    exits = np.array([next(x.layer for x in layers if x.exit[b]) for b in range(t["input_ids"].shape[0])])
    probs = [npr.eq10_probabilities(layers[e - 1].cls_memory[b]) for b, e in enumerate(exits)]
    out: dict[str, Any] = {"exit_layer": exits, "prediction": [int(np.argmax(p)) for p in probs]}
    for x in layers:
        out.update({f"l{x.layer}/attention_mask": x.attention_mask, f"l{x.layer}/attention_memory": x.attention_memory,
                    f"l{x.layer}/hidden": x.hidden, f"l{x.layer}/cls_memory": x.cls_memory,
                    f"l{x.layer}/entropy": x.entropy, f"l{x.layer}/exit": x.exit})
        if x.source_index is not None:
            out[f"l{x.layer}/source_index"] = x.source_index
    return out


def _loss(npr, t, a):
    o = _model(npr, t, a).loss(t["input_ids"], t["attention_mask"], t["token_type_ids"], t["labels"])
    return {"total": o.total, "ce": o.ce, "kd": o.kd, "teacher_logits": o.teacher_logits, "eta": o.eta,
            "memories": o.memories, "exit_logits": o.logits, "tokens": o.tokens}


#: entry -> ``f(npr, inputs, attributes) -> outputs``, ``npr`` the port (the package or a broken copy).
_TABLE: dict[str, Callable[[Any, dict, dict], dict]] = {
    "eq01_layer_norm": lambda npr, t, a: {"out": npr.layer_norm(t["x"], t["weight"], t["bias"], a["eps"])},
    "eq01_layer_norm_offset": lambda npr, t, a: {"out": npr.layer_norm(t["x"], t["weight"], t["bias"], a["eps"])},
    "eq04_gelu": lambda npr, t, a: {"erf": npr.gelu(t["x"]), "tanh": npr.gelu(t["x"], "tanh")},
    "eq01_transformer_layer": _layer, "eq02_mhsa": _mhsa, "eq03_attention": _attention, "eq04_ffn": _ffn,
    "eq05_class_attention": lambda npr, t, a: {"a_class": npr.eq05_class_attention(t["probs"], t["attention_mask"])},
    "eq06_attention_memory": lambda npr, t, a: {
        "memory": npr.eq06_attention_memory(t["prev"], t["a_class"], a["beta"]),
        "memory_first": npr.eq06_attention_memory(None, t["a_class"], a["beta"])},
    "eq07_num_kept": lambda npr, t, a: {f"m_{m}_{r}": npr.eq07_num_kept(t["n"], r, m) for m, r in a["cases"]},
    "eq07_top_m": lambda npr, t, a: {"keep": npr.eq07_top_m(t["scores"], t["valid"], t["m"])},
    "eq08_fuse": lambda npr, t, a: {"h_eef": npr.eq08_fuse(t["tokens"], t["alpha"], t["fuse"])},
    "eq08_prune_tokens": _prune, "eq08_prune_tokens_authors": _prune,
    "eq09_exit_logits": _exit_logits, "eq10_classifier_memory": _cls_memory,
    "eq11_cross_entropy": lambda npr, t, a: {"ce": npr.eq11_cross_entropy(t["memories"], t["labels"])},
    "eq12_teacher": _teacher,
    "eq13_kd_loss": lambda npr, t, a: {f"kd_{d}_{r}": npr.eq13_kd_loss(t["memories"], t["teacher"], a["tau"], d, r)
                                  for d in ("student_teacher", "teacher_student") for r in ("batchmean", "mean")},
    "eq14_total_loss": _total, "eq15_flops": _flops,
    "e2e_infer": _infer, "e2e_infer_ceil": _infer, "e2e_real": _infer, "e2e_padded": _padded, "e2e_loss": _loss,
    "e2e_authors": _authors,
}


def build(npr: Any) -> dict[str, Callable[[dict, dict], dict]]:
    """The entry -> function table for the port ``npr`` (the ``numpy_ref`` package or a copy of it)."""
    return {entry: functools.partial(fn, npr) for entry, fn in _TABLE.items()}


ENTRIES = build(sys.modules[__name__.rpartition(".")[0]])
