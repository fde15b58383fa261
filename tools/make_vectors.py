r"""Write the golden vectors: ``python tools/make_vectors.py [--out tests/vectors]``.

Output: ``vectors.safetensors`` (every tensor, key ``<entry>/<name>``) and ``manifest.json``: the format
version, the generator's git revision, and per entry its equation, the mpee_ref function it exercises,
scalar arguments, tolerances and the role of each tensor (input / param / output / intermediate).
Inputs and parameters come from closed-form formulas over the flattened (C-order) index i, never from a
framework RNG; each one's formula and constants are in the manifest so another framework can rebuild it:

    sin       x[i] = offset + scale * sin(phase + freq*i + curv*i*i)             (float64)
    floor_sin x[i] = floor(levels * sin(phase + freq*i)) / levels              (float64, has ties)
    int_mod   x[i] = low + (mult*i + add) % modulus                            (int64)
    literal   the values are in the manifest                                   (small ints / masks)
    from      a copy of another entry's tensor (``source``)

Equation-level entries are float64 on tiny shapes with pairwise-distinct sizes (B 2, T 7, D 32, H 4,
dh 8, F 37, C 3, L 5). ``e2e_infer`` runs :meth:`MPEEModel.infer` on a tiny float64 MPEE model (V 99,
D 32, H 4, F 37, L 3, C 5, B 6, T 11) whose threshold is chosen so one sample exits early and one prunes
at two layers; ``e2e_loss`` evaluates the training loss (Eqs. 11-14) and a few gradients.
The same revision of the code regenerates the same bytes (tests/test_vectors.py checks it).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from mpee_ref.encoder import equations as enc  # noqa: E402
from mpee_ref.flops import eq15_layer_flops, eq15_speedup, fusion_flops, head_flops, sample_flops  # noqa: E402
from mpee_ref.layer_exit import (eq09_exit_logits, eq09_pooled_exit_logits, eq10_classifier_memory,  # noqa: E402
                                 eq10_probabilities, exit_entropy, should_exit)
from mpee_ref.losses import eq11_cross_entropy, eq12_teacher, eq13_kd_loss, eq14_total_loss  # noqa: E402
from mpee_ref.token_exit import (eq05_class_attention, eq06_attention_memory, eq07_num_kept,  # noqa: E402
                                 eq07_top_m, eq08_fuse, prune_tokens)

FORMAT_VERSION = 1
# rtol/atol per port precision; "exact" for integer/bool tensors and FLOP counts.
TOLERANCES = {
    "eq": {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 1e-4, "atol": 1e-5}},
    "e2e": {"float64": {"rtol": 1e-9, "atol": 1e-10}, "float32": {"rtol": 1e-3, "atol": 2e-4}},
    "exact": {"float64": {"rtol": 0.0, "atol": 0.0}, "float32": {"rtol": 0.0, "atol": 0.0}},
}
LAYER_KEYS = ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o", "ln1_w", "ln1_b",
              "w_1", "b_1", "w_2", "b_2", "ln2_w", "ln2_b")
B, T, D, H, F, C, L = 2, 7, 32, 4, 37, 3, 5              # equation-level sizes (dh = 8)
EPS = 1e-12
LENGTHS = [7, 5]                                          # real tokens per sample (row 1 is padded)


# ============================================================================ formulas
def formula_tensor(spec: dict[str, Any]) -> np.ndarray:
    """Rebuild a tensor from its manifest formula (the one implementation the manifest documents)."""
    shape, kind, p = tuple(spec["shape"]), spec["formula"], spec.get("params", {})
    i = np.arange(int(np.prod(shape)), dtype=np.float64)
    if kind == "sin":
        x = p["offset"] + p["scale"] * np.sin(p["phase"] + p["freq"] * i + p["curv"] * i * i)
    elif kind == "floor_sin":
        x = np.floor(p["levels"] * np.sin(p["phase"] + p["freq"] * i)) / p["levels"]
    elif kind == "int_mod":
        j = np.arange(int(np.prod(shape)), dtype=np.int64)
        x = p["low"] + (p["mult"] * j + p["add"]) % p["modulus"]
    elif kind == "literal":
        x = np.asarray(p["values"])
    else:
        raise ValueError(f"formula {kind!r} has no closed form here")
    return x.reshape(shape).astype(spec["dtype"])


class Vectors:
    """Collects tensors (``<entry>/<name>``) and the manifest while the entries are built."""

    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        self._seed = 0

    def entry(self, name: str, equation: str, function: str, tol: str = "eq", **attrs: Any) -> dict[str, Any]:
        e = {"equation": equation, "function": function, "tolerance": TOLERANCES[tol],
             "attributes": attrs, "tensors": {}}
        self.entries[name] = e
        return e

    def _put(self, entry: str, name: str, role: str, value: Any, spec: dict[str, Any]) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        arr = np.array(value, order="C")                                     # keeps 0-d scalars 0-d
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float64)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        key = f"{entry}/{name}"
        assert key not in self.tensors, key
        self.tensors[key] = arr
        self.entries[entry]["tensors"][name] = {"role": role, "shape": list(arr.shape), "dtype": str(arr.dtype),
                                                **spec}
        return torch.from_numpy(arr.copy())

    def sin(self, entry: str, name: str, shape: tuple[int, ...], scale: float = 1.0, offset: float = 0.0,
            role: str = "input") -> torch.Tensor:
        """A float64 input/param from the ``sin`` formula; each call gets a fresh phase."""
        self._seed += 1
        spec = {"shape": list(shape), "dtype": "float64", "formula": "sin",
                "params": {"offset": offset, "scale": scale, "phase": float(self._seed), "freq": 0.7,
                           "curv": 0.013}}
        return self._put(entry, name, role, formula_tensor(spec), {k: spec[k] for k in ("formula", "params")})

    def formula(self, entry: str, name: str, shape: tuple[int, ...], dtype: str, kind: str,
                role: str = "input", **params: Any) -> torch.Tensor:
        spec = {"shape": list(shape), "dtype": dtype, "formula": kind, "params": params}
        return self._put(entry, name, role, formula_tensor(spec), {"formula": kind, "params": params})

    def literal(self, entry: str, name: str, values: Any, dtype: str = "int64", role: str = "input") -> torch.Tensor:
        arr = np.asarray(values, dtype=dtype)
        return self._put(entry, name, role, arr, {"formula": "literal", "params": {"values": arr.tolist()}})

    def copy(self, entry: str, name: str, source: str, role: str = "input") -> torch.Tensor:
        return self._put(entry, name, role, self.tensors[source], {"formula": "from", "source": source})

    def out(self, entry: str, values: dict[str, Any], role: str = "output") -> None:
        for name, v in values.items():
            self._put(entry, name, role, v, {"formula": None})


def mask_values() -> list[list[int]]:
    return [[1 if j < n else 0 for j in range(T)] for n in LENGTHS]


def layer_params(v: Vectors, entry: str) -> dict[str, torch.Tensor]:
    shapes = {"w_q": (D, D), "w_k": (D, D), "w_v": (D, D), "w_o": (D, D), "w_1": (F, D), "w_2": (D, F)}
    p = {}
    for k in LAYER_KEYS:
        if k in shapes:
            p[k] = v.sin(entry, k, shapes[k], scale=0.25, role="param")
        elif k.startswith("ln"):
            p[k] = v.sin(entry, k, (D,), scale=0.1, offset=1.0 if k.endswith("_w") else 0.0, role="param")
        else:
            p[k] = v.sin(entry, k, (F,) if k == "b_1" else (D,), scale=0.05, role="param")
    return p


# ============================================================================ compute functions
# COMPUTE[entry](t, attrs) -> {name: tensor}: the torch calls each entry's outputs come from. The
# test recomputes every entry with these and compares with the stored file.
def c_layer_norm(t, a):
    return {"out": enc.layer_norm(t["x"], t["weight"], t["bias"], a["eps"])}


def c_gelu(t, a):
    return {"erf": enc.gelu(t["x"]), "tanh": enc.gelu(t["x"], approximate="tanh")}


def c_eq01(t, a):
    p = {k: t[k] for k in LAYER_KEYS}
    bias = enc.attention_mask_bias(t["attention_mask"], torch.float64)
    z_tilde, probs = enc.eq01_attention_sublayer(t["h"], p, a["num_heads"], a["eps"], bias)
    attn, _ = enc.eq02_mhsa(t["h"], *(p[k] for k in LAYER_KEYS[:8]), a["num_heads"], bias)
    ffn = enc.eq04_ffn(z_tilde, p["w_1"], p["b_1"], p["w_2"], p["b_2"])
    h_out, _ = enc.eq01_transformer_layer(t["h"], p, a["num_heads"], a["eps"], bias)
    return {"h_out": h_out, "z_tilde": z_tilde, "probs": probs, "mask_bias": bias, "mhsa_out": attn, "ffn_out": ffn}


def c_eq02(t, a):
    names = LAYER_KEYS[:8]
    bias = enc.attention_mask_bias(t["attention_mask"], torch.float64)
    out, probs = enc.eq02_mhsa(t["z"], *(t[k] for k in names), a["num_heads"], bias)
    Bz, Tz, Dz = t["z"].shape
    heads = lambda x: x.view(Bz, Tz, a["num_heads"], Dz // a["num_heads"]).transpose(1, 2)  # noqa: E731
    q, k, v = (heads(enc.linear(t["z"], t[w], t[b])) for w, b in (("w_q", "b_q"), ("w_k", "b_k"), ("w_v", "b_v")))
    context, _ = enc.eq03_attention(q, k, v, bias)
    return {"out": out, "probs": probs, "q": q, "k": k, "v": v, "context": context}


def c_eq03(t, a):
    bias = enc.attention_mask_bias(t["attention_mask"], torch.float64)
    context, probs = enc.eq03_attention(t["q"], t["k"], t["v"], bias)
    scores = t["q"] @ t["k"].transpose(-2, -1) / math.sqrt(t["q"].shape[-1]) + bias
    return {"context": context, "probs": probs, "scores": scores}


def c_eq04(t, a):
    pre = enc.linear(t["z_tilde"], t["w_1"], t["b_1"])
    return {"out": enc.eq04_ffn(t["z_tilde"], t["w_1"], t["b_1"], t["w_2"], t["b_2"]), "pre_act": pre,
            "act": enc.gelu(pre)}


def c_eq05(t, a):
    return {"a_class": eq05_class_attention(t["probs"], t["attention_mask"])}


def c_eq06(t, a):
    return {"memory": eq06_attention_memory(t["prev"], t["a_class"], a["beta"]),
            "memory_first": eq06_attention_memory(None, t["a_class"], a["beta"])}


def c_eq07_num_kept(t, a):
    return {f"m_{means}_{r}": eq07_num_kept(t["n"], r, means) for means, r in a["cases"]}


def c_eq07_top_m(t, a):
    return {"keep": eq07_top_m(t["scores"], t["valid"], t["m"])}


def c_eq08(t, a):
    return {"h_eef": eq08_fuse(t["tokens"], t["alpha"], t["fuse"])}


def c_prune(t, a):
    r = prune_tokens(t["hidden"], t["attention_mask"], t["memory"], a["r_ee"], r_ee_means=a["r_ee_means"],
                     fusion=a["fusion"], fused_memory=a["fused_memory"])
    return {k if k in ("source_index", "kept", "fused", "alpha", "num_kept") else f"out_{k}": getattr(r, k)
            for k in ("hidden", "attention_mask", "memory", "source_index", "kept", "fused", "alpha", "num_kept")}


def c_eq09(t, a):
    pooled = torch.tanh(enc.linear(t["h_cls"], t["w_pool"], t["b_pool"]))
    return {"logits_pooler": eq09_pooled_exit_logits(t["h_cls"], t["w_pool"], t["b_pool"], t["w_cls"], t["b_cls"]),
            "pooled": pooled, "logits_tanh": eq09_exit_logits(t["h_cls"], t["w_tanh"], t["b_tanh"])}


def c_eq10(t, a):
    mem = eq10_classifier_memory(t["prev"], t["logits"], a["lam"])
    ent = exit_entropy(mem)
    return {"memory": mem, "memory_first": eq10_classifier_memory(None, t["logits"], a["lam"]),
            "probabilities": eq10_probabilities(mem), "entropy": ent, "exit": should_exit(ent, a["threshold"]),
            "entropy_large": exit_entropy(t["logits_large"])}


def c_eq11(t, a):
    return {"ce": eq11_cross_entropy(t["memories"], t["labels"])}


def c_eq12(t, a):
    teacher, eta = eq12_teacher(t["memories"], t["w_eta"], t["b_eta"], t["v"])
    scores = torch.tanh(enc.linear(t["memories"], t["w_eta"], t["b_eta"])) @ t["v"]
    return {"teacher": teacher, "eta": eta, "scores": scores}


def c_eq13(t, a):
    return {f"kd_{d}_{r}": eq13_kd_loss(t["memories"], t["teacher"], a["tau"], d, r)
            for d in ("student_teacher", "teacher_student") for r in ("batchmean", "mean")}


def c_eq14(t, a):
    teacher_ce = eq11_cross_entropy(t["teacher"][None], t["labels"])[0]
    return {"total_paper": eq14_total_loss(t["l_ce"], t["l_kd"]), "total_ce_only": eq14_total_loss(t["l_ce"], None),
            "teacher_ce": teacher_ce,
            "total_gamma": eq14_total_loss(t["l_ce"], t["l_kd"], gamma=a["gamma"], teacher_ce=teacher_ce)}


def c_eq15(t, a):
    Dm, Fm, Cm, Lm = a["hidden"], a["intermediate"], a["num_labels"], a["num_layers"]
    layer = [eq15_layer_flops(int(x), int(y), Dm, Fm) for x, y in t["layer_cases"].tolist()]
    s = sample_flops(t["n_att"].tolist(), t["n_ffn"].tolist(), t["num_fused"].tolist(), int(t["n_att"][0]),
                     Lm, Dm, Fm, Cm, "pooler")
    return {"layer_flops": torch.tensor(layer), "head_flops_pooler": torch.tensor(head_flops(Dm, Cm, "pooler")),
            "head_flops_tanh": torch.tensor(head_flops(Dm, Cm, "tanh")),
            "fusion_flops": torch.tensor(fusion_flops(int(t["num_fused"].max()), Dm)),
            "sample_per_layer": torch.tensor(s.per_layer), "sample_executed": torch.tensor(s.executed),
            "sample_full": torch.tensor(s.full),
            "speedup": torch.tensor(eq15_speedup([s.full, s.full], [s.executed, s.full]), dtype=torch.float64)}


# ---------------------------------------------------------------------------- end-to-end
E2E_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=13, type_vocab_size=2, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
E2E_LENGTHS = [11, 8, 5, 10, 3, 7]
E2E_T = 11


def e2e_model(t: dict[str, torch.Tensor], mpee_config: dict[str, Any]):
    """The tiny float64 MPEE model holding the stored parameters (``param/<state-dict key>``)."""
    from mpee_ref.config import BertConfig
    from mpee_ref.mpee import MPEEConfig, MPEEModel
    model = MPEEModel(BertConfig(**E2E_BERT), MPEEConfig.from_dict(mpee_config)).double().eval()
    state = {k[len("param/"):]: v for k, v in t.items() if k.startswith("param/")}
    model.load_state_dict(state, strict=True)
    return model


def _capture_one(model, ids, tt, threshold: float) -> dict[str, Any]:
    """Run ``infer`` on one unpadded sample, recording every layer's hidden state and memories."""
    cap: dict[str, list] = {"hidden": [], "att_mem": [], "logits": []}
    orig_step = model._attention_step

    def step(*args, **kw):
        z, mask, att_mem, res = orig_step(*args, **kw)
        cap["att_mem"].append(None if att_mem is None else att_mem[0].clone())
        return z, mask, att_mem, res

    model._attention_step = step
    hooks = [layer.register_forward_hook(lambda m, i, o: cap["logits"].append(o[0].clone())) for layer in model.exits]
    origs = []
    for layer in model.bert.layers:
        f = layer.ffn_sublayer
        origs.append((layer, f))
        layer.ffn_sublayer = (lambda f: lambda z: (lambda h: (cap["hidden"].append(h[0].clone()), h)[1])(f(z)))(f)
    try:
        res = model.infer({"input_ids": ids[None], "attention_mask": torch.ones_like(ids)[None],
                           "token_type_ids": tt[None]}, threshold=threshold).samples[0]
    finally:
        del model._attention_step
        for layer, _ in origs:
            del layer.ffn_sublayer
        for hk in hooks:
            hk.remove()
    return {"result": res, **cap}


def c_e2e_infer(t, a):
    model = e2e_model(t, a["mpee_config"])
    ids, mask, tt = t["input_ids"], t["attention_mask"], t["token_type_ids"]
    out: dict[str, Any] = {}
    batched = model.infer({"input_ids": ids, "attention_mask": mask, "token_type_ids": tt},
                          threshold=a["threshold"]).samples
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        one = _capture_one(model, ids[b, :n], tt[b, :n], a["threshold"])
        r = one["result"]
        assert (r.exit_layer, r.prediction) == (batched[b].exit_layer, batched[b].prediction), b
        assert [x.positions for x in r.layers] == [x.positions for x in batched[b].layers], b
        s = f"s{b}"
        out[f"{s}/exit_layer"] = torch.tensor(r.exit_layer)
        out[f"{s}/prediction"] = torch.tensor(r.prediction)
        out[f"{s}/probabilities"] = torch.tensor(r.probabilities, dtype=torch.float64)
        out[f"{s}/entropy"] = torch.tensor(r.entropies, dtype=torch.float64)
        out[f"{s}/exit_logits"] = torch.stack(one["logits"])
        mem, m = [], None
        for z in one["logits"]:
            m = eq10_classifier_memory(m, z[None], model.mpee_config.effective_lam)   # (1, C)
            mem.append(m[0])
        out[f"{s}/cls_memory"] = torch.stack(mem)
        out[f"{s}/tokens_per_layer"] = torch.tensor(r.tokens_per_layer)
        out[f"{s}/flops_executed"] = torch.tensor(r.flops.executed)
        out[f"{s}/flops_full"] = torch.tensor(r.flops.full)
        for l, tr in enumerate(r.layers, start=1):
            out[f"{s}/l{l}/hidden"] = one["hidden"][l - 1]
            out[f"{s}/l{l}/positions"] = torch.tensor(tr.positions)
            if one["att_mem"][l - 1] is not None:
                out[f"{s}/l{l}/attention_memory"] = one["att_mem"][l - 1]
            if tr.fused_positions:
                out[f"{s}/l{l}/fused_positions"] = torch.tensor(tr.fused_positions)
                out[f"{s}/l{l}/fused_weights"] = torch.tensor(tr.fused_weights, dtype=torch.float64)
    return out


def c_e2e_loss(t, a):
    model = e2e_model(t, a["mpee_config"])
    o = model(t["input_ids"], t["attention_mask"], t["token_type_ids"], labels=t["labels"])
    o.loss.total.backward()
    params = dict(model.named_parameters())
    out = {"total": o.loss.total, "ce": o.loss.ce, "kd": o.loss.kd, "teacher_logits": o.loss.teacher_logits,
           "eta": o.loss.eta, "memories": o.memories, "exit_logits": o.logits, "tokens": o.tokens}
    out.update({f"grad/{k}": params[k].grad for k in a["grad_params"]})
    return out


COMPUTE: dict[str, Callable] = {
    "eq01_layer_norm": c_layer_norm, "eq04_gelu": c_gelu, "eq01_transformer_layer": c_eq01,
    "eq02_mhsa": c_eq02, "eq03_attention": c_eq03, "eq04_ffn": c_eq04, "eq05_class_attention": c_eq05,
    "eq06_attention_memory": c_eq06, "eq07_num_kept": c_eq07_num_kept, "eq07_top_m": c_eq07_top_m,
    "eq08_fuse": c_eq08, "eq08_prune_tokens": c_prune, "eq08_prune_tokens_authors": c_prune,
    "eq09_exit_logits": c_eq09, "eq10_classifier_memory": c_eq10, "eq11_cross_entropy": c_eq11,
    "eq12_teacher": c_eq12, "eq13_kd_loss": c_eq13, "eq14_total_loss": c_eq14, "eq15_flops": c_eq15,
    "e2e_infer": c_e2e_infer, "e2e_loss": c_e2e_loss,
}

EXACT_DTYPES = ("int64", "bool")


def inputs_of(v_tensors: dict[str, np.ndarray], manifest_entry: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    """The entry's input and param tensors as torch tensors, keyed by their names."""
    return {k: torch.from_numpy(np.array(v_tensors[f"{name}/{k}"]))
            for k, s in manifest_entry["tensors"].items() if s["role"] in ("input", "param")}


INTERMEDIATES = {"mask_bias", "mhsa_out", "ffn_out", "q", "k", "v", "context", "scores", "pre_act", "act",
                 "pooled", "kept", "fused", "alpha", "teacher_ce", "exit_logits", "cls_memory", "memories"}


def is_intermediate(name: str) -> bool:
    """Named intermediates: sub-results a port can compare to find the first step that diverges."""
    return name in INTERMEDIATES or name.split("/")[-1] in INTERMEDIATES or "/l" in name


def run_entry(v: Vectors, name: str) -> None:
    outs = COMPUTE[name](inputs_of(v.tensors, v.entries[name], name), v.entries[name]["attributes"])
    for k, x in outs.items():
        v.out(name, {k: x}, role="intermediate" if is_intermediate(k) else "output")


# ============================================================================ the entries
def build_equations(v: Vectors) -> None:
    e = "eq01_layer_norm"
    v.entry(e, "1", "mpee_ref.encoder.equations.layer_norm", eps=EPS)
    v.sin(e, "x", (B, T, D), scale=1.0, offset=100.0)        # large mean: a one-pass variance loses digits
    v.sin(e, "weight", (D,), scale=0.1, offset=1.0, role="param")
    v.sin(e, "bias", (D,), scale=0.1, role="param")
    run_entry(v, e)

    e = "eq04_gelu"
    v.entry(e, "4", "mpee_ref.encoder.equations.gelu")
    v.sin(e, "x", (5, 13), scale=4.0)
    run_entry(v, e)

    e = "eq01_transformer_layer"
    v.entry(e, "1", "mpee_ref.encoder.equations.eq01_transformer_layer", num_heads=H, eps=EPS)
    v.sin(e, "h", (B, T, D))
    v.literal(e, "attention_mask", mask_values())
    layer_params(v, e)
    run_entry(v, e)

    e = "eq02_mhsa"
    v.entry(e, "2", "mpee_ref.encoder.equations.eq02_mhsa", num_heads=H)
    v.sin(e, "z", (B, T, D))
    v.literal(e, "attention_mask", mask_values())
    for k in LAYER_KEYS[:8]:
        v.sin(e, k, (D, D) if k.startswith("w") else (D,), scale=0.25 if k.startswith("w") else 0.05, role="param")
    run_entry(v, e)

    e = "eq03_attention"
    v.entry(e, "3", "mpee_ref.encoder.equations.eq03_attention")
    for k in ("q", "k", "v"):
        v.sin(e, k, (B, H, T, D // H), scale=1.5)
    v.literal(e, "attention_mask", mask_values())
    run_entry(v, e)

    e = "eq04_ffn"
    v.entry(e, "4", "mpee_ref.encoder.equations.eq04_ffn")
    v.sin(e, "z_tilde", (B, T, D))
    for k, shape in (("w_1", (F, D)), ("b_1", (F,)), ("w_2", (D, F)), ("b_2", (D,))):
        v.sin(e, k, shape, scale=0.25 if k.startswith("w") else 0.05, role="param")
    run_entry(v, e)

    e = "eq05_class_attention"
    v.entry(e, "5", "mpee_ref.token_exit.eq05_class_attention")
    v.copy(e, "probs", "eq01_transformer_layer/probs")
    v.literal(e, "attention_mask", mask_values())
    run_entry(v, e)

    e = "eq06_attention_memory"
    v.entry(e, "6", "mpee_ref.token_exit.eq06_attention_memory", beta=0.5)
    v.sin(e, "prev", (B, T - 1), scale=0.1, offset=0.15)
    v.copy(e, "a_class", "eq05_class_attention/a_class")
    run_entry(v, e)

    e = "eq07_num_kept"
    v.entry(e, "7", "mpee_ref.token_exit.eq07_num_kept", cases=[["exit", 0.3], ["exit", 0.7], ["keep", 0.7]])
    v.literal(e, "n", [0, 1, 2, 3, 5, 7, 10, 13, 20, 127])
    run_entry(v, e)

    e = "eq07_top_m"
    v.entry(e, "7", "mpee_ref.token_exit.eq07_top_m")
    v.formula(e, "scores", (3, 9), "float64", "floor_sin", levels=2.0, phase=0.5, freq=0.9)   # many ties
    v.literal(e, "valid", [[True] * 9, [True] * 6 + [False] * 3, [True] * 4 + [False] * 5], dtype="bool")
    v.literal(e, "m", [4, 3, 2])
    run_entry(v, e)

    e = "eq08_fuse"
    v.entry(e, "8", "mpee_ref.token_exit.eq08_fuse")
    v.sin(e, "tokens", (B, T - 1, D))
    v.sin(e, "alpha", (B, T - 1), scale=0.1, offset=0.15)
    v.literal(e, "fuse", [[True, False, True, False, False, True], [False, True, True, False, False, False]],
              dtype="bool")
    run_entry(v, e)

    for e, attrs in (("eq08_prune_tokens", dict(r_ee=0.5, r_ee_means="exit", fusion="memory", fused_memory="sum")),
                     ("eq08_prune_tokens_authors", dict(r_ee=0.7, r_ee_means="keep", fusion="memory",
                                                        fused_memory="mean"))):
        v.entry(e, "7-8", "mpee_ref.token_exit.prune_tokens", **attrs)
        v.sin(e, "hidden", (B, T, D))
        v.literal(e, "attention_mask", mask_values())
        v.formula(e, "memory", (B, T - 1), "float64", "floor_sin", levels=4.0, phase=1.5, freq=1.3)
        run_entry(v, e)

    e = "eq09_exit_logits"
    v.entry(e, "9", "mpee_ref.layer_exit.eq09_pooled_exit_logits / eq09_exit_logits")
    v.sin(e, "h_cls", (B, D))
    v.sin(e, "w_pool", (D, D), scale=0.25, role="param")
    v.sin(e, "b_pool", (D,), scale=0.05, role="param")
    v.sin(e, "w_cls", (C, D), scale=0.5, role="param")
    v.sin(e, "b_cls", (C,), scale=0.05, role="param")
    v.sin(e, "w_tanh", (C, D), scale=0.25, role="param")
    v.sin(e, "b_tanh", (C,), scale=0.05, role="param")
    run_entry(v, e)

    e = "eq10_classifier_memory"
    v.entry(e, "10", "mpee_ref.layer_exit.eq10_classifier_memory / exit_entropy / should_exit", lam=0.9,
            threshold=0.9)
    v.sin(e, "prev", (4, C), scale=2.0)
    v.sin(e, "logits", (4, C), scale=2.0)
    v.sin(e, "logits_large", (4, C), scale=300.0)           # exp() overflows in fp32 and fp64
    run_entry(v, e)

    e = "eq11_cross_entropy"
    v.entry(e, "11", "mpee_ref.losses.eq11_cross_entropy")
    v.sin(e, "memories", (L, B, C), scale=2.0)
    v.literal(e, "labels", [2, 0])
    run_entry(v, e)

    e = "eq12_teacher"
    v.entry(e, "12", "mpee_ref.losses.eq12_teacher")
    v.copy(e, "memories", "eq11_cross_entropy/memories")
    v.sin(e, "w_eta", (C, C), scale=1.0, role="param")
    v.sin(e, "b_eta", (C,), scale=0.2, role="param")
    v.sin(e, "v", (C,), scale=1.5, role="param")
    run_entry(v, e)

    e = "eq13_kd_loss"
    v.entry(e, "13", "mpee_ref.losses.eq13_kd_loss", tau=3.0)
    v.copy(e, "memories", "eq11_cross_entropy/memories")
    v.copy(e, "teacher", "eq12_teacher/teacher")
    run_entry(v, e)

    e = "eq14_total_loss"
    v.entry(e, "14", "mpee_ref.losses.eq14_total_loss", gamma=0.1)
    v.copy(e, "l_ce", "eq11_cross_entropy/ce")
    v.copy(e, "l_kd", "eq13_kd_loss/kd_student_teacher_batchmean")
    v.copy(e, "teacher", "eq12_teacher/teacher")
    v.copy(e, "labels", "eq11_cross_entropy/labels")
    run_entry(v, e)

    e = "eq15_flops"
    v.entry(e, "15", "mpee_ref.flops.eq15_layer_flops / head_flops / fusion_flops / sample_flops / eq15_speedup",
            tol="exact", hidden=D, intermediate=F, num_labels=C, num_layers=L)
    v.literal(e, "layer_cases", [[1, 1], [7, 7], [7, 5], [11, 4], [128, 90]])
    v.literal(e, "n_att", [11, 11, 8, 8])                   # a run: prune 4 -> fused at layer 2, exit at 4
    v.literal(e, "n_ffn", [11, 8, 8, 8])
    v.literal(e, "num_fused", [0, 4, 0, 0])
    run_entry(v, e)


def build_e2e(v: Vectors) -> None:
    from mpee_ref.config import BertConfig
    from mpee_ref.mpee import MPEEConfig, MPEEModel
    Bn = len(E2E_LENGTHS)
    base_cfg = dict(num_labels=5, r_ee=0.3, prune_layers=[1, 2], beta=0.5, lam=0.9, threshold=0.0)
    mask = [[1 if j < n else 0 for j in range(E2E_T)] for n in E2E_LENGTHS]
    tt = [[1 if (n // 2 + 1 <= j < n) else 0 for j in range(E2E_T)] for n in E2E_LENGTHS]

    def common(e: str) -> None:
        v.formula(e, "input_ids", (Bn, E2E_T), "int64", "int_mod", low=1, mult=37, add=5, modulus=98)
        v.tensors[f"{e}/input_ids"] *= np.asarray(mask, np.int64)          # padding -> id 0
        v.entries[e]["tensors"]["input_ids"]["then"] = "multiplied by attention_mask (padding id 0)"
        v.literal(e, "attention_mask", mask)
        v.literal(e, "token_type_ids", tt)
        model = MPEEModel(BertConfig(**E2E_BERT), MPEEConfig.from_dict(base_cfg))
        for k, p in model.state_dict().items():
            shape = tuple(p.shape)
            if "LayerNorm.weight" in k:
                v.sin(e, f"param/{k}", shape, scale=0.1, offset=1.0, role="param")
            elif k.endswith("bias"):
                v.sin(e, f"param/{k}", shape, scale=0.05, role="param")
            elif "embeddings" in k:
                v.sin(e, f"param/{k}", shape, scale=1.0, role="param")
            elif k.startswith("exits.") and "classifier" in k:
                v.sin(e, f"param/{k}", shape, scale=2.0, role="param")
            elif k.startswith("teacher."):
                v.sin(e, f"param/{k}", shape, scale=1.0, role="param")
            else:
                v.sin(e, f"param/{k}", shape, scale=0.3, role="param")

    # ---- inference: pick F so that one sample exits early and one prunes at layers 1 and 2
    e = "e2e_infer"
    v.entry(e, "1-10, 15", "mpee_ref.mpee.MPEEModel.infer", tol="e2e", mpee_config=base_cfg, threshold=0.0)
    common(e)
    t = inputs_of(v.tensors, v.entries[e], e)
    model = e2e_model(t, base_cfg)
    probe = model.infer({"input_ids": t["input_ids"], "attention_mask": t["attention_mask"],
                         "token_type_ids": t["token_type_ids"]}, layer_exit=False).samples
    ents = [s.entropies for s in probe]                                      # (B, L): nothing exits early
    Ln = E2E_BERT["num_hidden_layers"]
    best = None
    for thr in sorted({round((x + y) / 2, 4) for row in ents for x in row[:-1] for y in row[:-1]}):
        exits = [next((l for l in range(1, Ln) if ents[b][l - 1] < thr), Ln) for b in range(Bn)]
        long_run = [b for b in range(Bn) if exits[b] >= 2 and E2E_LENGTHS[b] >= 5]
        early = [b for b in range(Bn) if exits[b] < Ln]
        if early and long_run and len(early) < Bn:
            margin = min(abs(x - thr) for row in ents for x in row[:-1])
            if best is None or margin > best[0]:
                best = (margin, thr)
    assert best is not None and best[0] > 1e-3, f"no threshold with a safe margin: entropies {ents}"
    threshold = best[1]
    v.entries[e]["attributes"]["threshold"] = threshold
    v.entries[e]["attributes"]["entropy_margin"] = round(best[0], 6)
    run_entry(v, e)
    exits = [int(v.tensors[f"{e}/s{b}/exit_layer"]) for b in range(Bn)]
    pruned = [sum(f"{e}/s{b}/l{l}/fused_positions" in v.tensors for l in range(1, Ln + 1)) for b in range(Bn)]
    assert any(x < Ln for x in exits), f"no sample exits early: {exits}"
    assert any(p >= 2 for p in pruned), f"no sample prunes at two layers: {pruned}"
    v.entries[e]["attributes"]["exit_layers"] = exits
    v.entries[e]["attributes"]["pruning_layers_per_sample"] = pruned

    # ---- training loss with gradients
    e = "e2e_loss"
    grads = ["exits.0.classifier.weight", "teacher.dense.weight", "teacher.context.weight",
             "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.2.output.dense.bias"]
    v.entry(e, "1-14", "mpee_ref.mpee.MPEEModel.forward (labels) -> mpee_ref.losses.mpee_loss", tol="e2e",
            mpee_config=base_cfg, grad_params=grads)
    common(e)
    v.literal(e, "labels", [(3 * b + 1) % 5 for b in range(Bn)])
    run_entry(v, e)


# ============================================================================ main
def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def generate(out_dir: str | Path, revision: str | None = None) -> tuple[Path, Path]:
    """Build every entry and write ``vectors.safetensors`` and ``manifest.json`` into ``out_dir``."""
    v = Vectors()
    build_equations(v)
    build_e2e(v)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st = out_dir / "vectors.safetensors"
    save_file(v.tensors, str(st), metadata={"format_version": str(FORMAT_VERSION)})
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "tools/make_vectors.py",
        "generator_revision": revision if revision is not None else git_revision(),
        "torch_version": torch.__version__.split("+")[0],
        "tensor_file": st.name,
        "key_format": "<entry>/<tensor name>",
        "roles": "input/param: generated (formula given); output/intermediate: computed by the named function",
        "formulas": {
            "sin": "x[i] = offset + scale * sin(phase + freq*i + curv*i*i), i = flat C-order index (float64)",
            "floor_sin": "x[i] = floor(levels * sin(phase + freq*i)) / levels (float64; produces ties)",
            "int_mod": "x[i] = low + (mult*i + add) % modulus (int64)",
            "literal": "values listed in params.values",
            "from": "a copy of the tensor named in source",
        },
        "tolerance_rule": "|port - golden| <= atol + rtol * |golden| elementwise, with the (rtol, atol) of the "
                          "port's precision; int64 and bool tensors must be equal",
        "entries": v.entries,
    }
    mf = out_dir / "manifest.json"
    mf.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return st, mf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "vectors"), help="output folder")
    ap.add_argument("--revision", default=None, help="record this revision instead of `git rev-parse HEAD`")
    args = ap.parse_args(argv)
    st, mf = generate(args.out, args.revision)
    print(f"wrote {st} ({st.stat().st_size} bytes) and {mf} ({mf.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
