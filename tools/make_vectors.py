r"""Write the golden vectors: ``python tools/make_vectors.py [--out tests/vectors] [--weights weights/minilm-l6]``.

Output: ``vectors.safetensors`` (every stored tensor, key ``<entry>/<name>``) and ``manifest.json`` (format 2):
the generator's git revision and, per entry, its equation, the mpee_ref function it exercises, every setting
(``attributes``), tolerances, and per tensor its role, shape, dtype, named axes and a one-line definition
(mpee_ref/vectors/definitions.py). Inputs and parameters come from closed-form formulas over the flattened
(C-order) index i, never from a framework RNG; each one's formula and constants are in the manifest:

    sin       x[i] = offset + scale * sin(phase + freq*i + curv*i*i)             (float64)
    floor_sin x[i] = floor(levels * sin(phase + freq*i)) / levels              (float64, has ties)
    int_mod   x[i] = low + (mult*i + add) % modulus                            (int64)
    literal   the values are in the manifest                                   (small ints / masks)
    from      the same values as another entry's tensor (``source``; stored once)
    external  a tensor of weights/minilm-l6/model.safetensors (not stored)

Equation-level entries are float64 on tiny shapes with pairwise-distinct sizes (B 2, T 7, D 32, H 4,
dh 8, I 37, C 3, L 5). ``e2e_infer`` runs :meth:`MPEEModel.infer` on a tiny float64 MPEE model (V 99,
D 32, H 4, I 37, L 3, C 5, B 6, T 11) whose threshold is chosen so samples exit at different layers and
some prune at two layers; ``e2e_padded`` is the same batch as one padded batch through every layer;
``e2e_infer_ceil`` uses R_ee = 0.7 where a float ceil and the original-length ratio base change the kept
counts; ``e2e_authors`` runs the same batch under ``MPEEConfig.authors`` (kept counts over inputs padded to
12 slots, truncated memory, final classifier; plus the authors' own FLOP count); ``e2e_loss`` evaluates the training loss (Eqs. 11-14) and a few gradients; ``e2e_real`` runs
MiniLM-L6 (needs ``python -m mpee_ref fetch-weights``) on two sentences. The same revision of the code
regenerates the same bytes (tests/test_vectors.py checks it; reductions run on one thread).
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
from mpee_ref.flops import (authors_code_sample_macs, eq15_layer_flops, eq15_speedup, fusion_flops,  # noqa: E402
                            head_flops, sample_flops)
from mpee_ref.layer_exit import (eq09_exit_logits, eq09_pooled_exit_logits, eq10_classifier_memory,  # noqa: E402
                                 eq10_probabilities, exit_entropy, should_exit)
from mpee_ref.losses import (ce_exit_weights, eq11_cross_entropy, eq12_teacher, eq13_kd_loss,  # noqa: E402
                             eq14_total_loss)
from mpee_ref.token_exit import (eq05_class_attention, eq06_attention_memory, eq07_num_kept,  # noqa: E402
                                 eq07_top_m, eq08_fuse, padded_widths, prune_tokens)
from mpee_ref.vectors.definitions import describe  # noqa: E402

FORMAT_VERSION = 2                                        # 2: definitions, axes, from/external, settings
# rtol/atol per port precision; "exact" for integer/bool tensors and FLOP counts.
TOLERANCES = {
    "eq": {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 1e-4, "atol": 1e-5}},
    "e2e": {"float64": {"rtol": 1e-9, "atol": 1e-10}, "float32": {"rtol": 1e-3, "atol": 2e-4}},
    "exact": {"float64": {"rtol": 0.0, "atol": 0.0}, "float32": {"rtol": 0.0, "atol": 0.0}},
    # mean-100 LayerNorm: casting the input to float32 alone moves outputs by ~1e-5; a correct two-pass
    # LayerNorm with a sequential sum (XLA) reaches 1.3x the "eq" pair, 0.37x this one; one-pass fails by ~20x
    "ln": {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 1e-4, "atol": 5e-5}},
    # mean-1e4 LayerNorm: float32 keeps only ~3 digits of the input's spread (ulp 1e-3 at 1e4), so fp64 only
    "fp64_only": {"float64": {"rtol": 1e-10, "atol": 1e-10}, "float32": None,
                  "note": "inputs of magnitude 1e4 keep only ~3 digits of their spread in float32"},
    # real weights: goldens computed in float64 and stored as float32 (rounding 6e-8 relative)
    "real": {"float64": {"rtol": 1e-5, "atol": 1e-5}, "float32": {"rtol": 1e-4, "atol": 5e-5}},
}
LAYER_KEYS = ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o", "ln1_w", "ln1_b",
              "w_1", "b_1", "w_2", "b_2", "ln2_w", "ln2_b")
B, T, D, H, I, C, L = 2, 7, 32, 4, 37, 3, 5              # equation-level sizes (dh = 8)
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
        self.tensors: dict[str, np.ndarray] = {}           # every tensor, as the compute functions see it
        self.unstored: set[str] = set()                      # ``from`` / ``external`` keys: not written
        self.entries: dict[str, dict[str, Any]] = {}
        self._seed = 0

    def entry(self, name: str, equation: str, function: str, tol: str = "eq", **attrs: Any) -> dict[str, Any]:
        e = {"equation": equation, "function": function, "tolerance": TOLERANCES[tol],
             "attributes": attrs, "tensors": {}}
        self.entries[name] = e
        return e

    def _put(self, entry: str, name: str, role: str, value: Any, spec: dict[str, Any],
             float_dtype: str = "float64") -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        arr = np.array(value, order="C")                                     # keeps 0-d scalars 0-d
        if arr.dtype.kind == "f":
            arr = arr.astype(float_dtype)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        key = f"{entry}/{name}"
        assert key not in self.tensors, key
        self.tensors[key] = arr
        axes, definition = describe(entry, name)
        if name.startswith(("param/", "grad/")):
            axes = (["index", "D"] if "embeddings" in name and arr.ndim == 2 else ["out", "in"])[:arr.ndim]
        assert len(axes) == arr.ndim or "L_b" in axes, (key, axes, arr.shape)
        self.entries[entry]["tensors"][name] = {"role": role, "shape": list(arr.shape), "dtype": str(arr.dtype),
                                                "axes": axes, "definition": definition, **spec}
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
        """A ``from`` tensor: the same values as ``source`` (another entry's tensor); not stored twice."""
        while self.entries[source.split("/")[0]]["tensors"][source.split("/", 1)[1]].get("formula") == "from":
            source = self.entries[source.split("/")[0]]["tensors"][source.split("/", 1)[1]]["source"]
        t = self._put(entry, name, role, self.tensors[source], {"formula": "from", "source": source})
        self.unstored.add(f"{entry}/{name}")
        return t

    def external(self, entry: str, name: str, value: np.ndarray, source: str) -> torch.Tensor:
        """A param read from the real checkpoint (``weights/minilm-l6/model.safetensors``); not stored."""
        t = self._put(entry, name, "param", value, {"formula": "external", "source": source},
                      float_dtype=str(value.dtype))
        self.unstored.add(f"{entry}/{name}")
        return t

    def out(self, entry: str, values: dict[str, Any], role: str = "output", float_dtype: str = "float64") -> None:
        for name, v in values.items():
            self._put(entry, name, role, v, {"formula": None}, float_dtype)


def mask_values() -> list[list[int]]:
    return [[1 if j < n else 0 for j in range(T)] for n in LENGTHS]


def layer_params(v: Vectors, entry: str) -> dict[str, torch.Tensor]:
    shapes = {"w_q": (D, D), "w_k": (D, D), "w_v": (D, D), "w_o": (D, D), "w_1": (I, D), "w_2": (D, I)}
    p = {}
    for k in LAYER_KEYS:
        if k in shapes:
            p[k] = v.sin(entry, k, shapes[k], scale=0.25, role="param")
        elif k.startswith("ln"):
            p[k] = v.sin(entry, k, (D,), scale=0.1, offset=1.0 if k.endswith("_w") else 0.0, role="param")
        else:
            p[k] = v.sin(entry, k, (I,) if k == "b_1" else (D,), scale=0.05, role="param")
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
    bias = enc.attention_mask_bias(t["attention_mask"], t["h"].dtype)
    z_tilde, probs = enc.eq01_attention_sublayer(t["h"], p, a["num_heads"], a["eps"], bias)
    attn, _ = enc.eq02_mhsa(t["h"], *(p[k] for k in LAYER_KEYS[:8]), a["num_heads"], bias)
    ffn = enc.eq04_ffn(z_tilde, p["w_1"], p["b_1"], p["w_2"], p["b_2"])
    h_out, _ = enc.eq01_transformer_layer(t["h"], p, a["num_heads"], a["eps"], bias)
    return {"h_out": h_out, "z_tilde": z_tilde, "probs": probs, "mask_bias": bias, "mhsa_out": attn, "ffn_out": ffn}


def c_eq02(t, a):
    names = LAYER_KEYS[:8]
    bias = enc.attention_mask_bias(t["attention_mask"], t["z"].dtype)
    out, probs = enc.eq02_mhsa(t["z"], *(t[k] for k in names), a["num_heads"], bias)
    Bz, Tz, Dz = t["z"].shape
    heads = lambda x: x.view(Bz, Tz, a["num_heads"], Dz // a["num_heads"]).transpose(1, 2)  # noqa: E731
    q, k, v = (heads(enc.linear(t["z"], t[w], t[b])) for w, b in (("w_q", "b_q"), ("w_k", "b_k"), ("w_v", "b_v")))
    context, _ = enc.eq03_attention(q, k, v, bias)
    return {"out": out, "probs": probs, "q": q, "k": k, "v": v, "context": context}


def c_eq03(t, a):
    bias = enc.attention_mask_bias(t["attention_mask"], t["q"].dtype)
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
            "entropy_large": exit_entropy(t["logits_large"]), "probabilities_large": eq10_probabilities(t["logits_large"])}


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
    w = ce_exit_weights(len(t["l_ce"]), "depth")                            # (L,)
    return {"total_paper": eq14_total_loss(t["l_ce"], t["l_kd"]), "total_ce_only": eq14_total_loss(t["l_ce"], None),
            "teacher_ce": teacher_ce,
            "total_gamma": eq14_total_loss(t["l_ce"], t["l_kd"], gamma=a["gamma"], teacher_ce=teacher_ce),
            "ce_weights_depth": w, "total_depth": eq14_total_loss(t["l_ce"], t["l_kd"], ce_weights=w)}


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
                hidden_act="gelu", layer_norm_eps=EPS, max_position_embeddings=13, type_vocab_size=2,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
E2E_LENGTHS = [11, 8, 5, 10, 3, 7]
E2E_T = 11
CEIL_LENGTHS = [11, 13, 7]          # N = 10: ceil(10 * (1 - 0.7)) = 3, but a float ceil gives 4
AUTHORS_PAD_TO = 12                 # e2e_authors: widths 12, 10, 9 at layers 1-3; N = 9, 10 keep 8 at layer 1, not 7
REAL_SENTENCES = ["a gripping , funny and thoroughly entertaining film .", "bad , but the cast is charming ."]


def full_mpee_config(**overrides: Any) -> dict[str, Any]:
    """Every MPEEConfig field the NumPy port knows, as JSON values: no setting is left to defaults."""
    from mpee_ref.mpee import MPEEConfig
    from mpee_ref.numpy_ref.model import MPEE_DEFAULTS
    cfg = MPEEConfig.from_dict(overrides)
    return {k: (list(getattr(cfg, k)) if isinstance(getattr(cfg, k), tuple) else getattr(cfg, k))
            for k in MPEE_DEFAULTS}


def e2e_model(t: dict[str, torch.Tensor], a: dict[str, Any]):
    """The MPEE model of an e2e entry: ``attributes.bert_config``, ``mpee_config``, ``param/*``."""
    from mpee_ref.config import BertConfig
    from mpee_ref.mpee import MPEEConfig, MPEEModel
    params = {k[len("param/"):]: v for k, v in t.items() if k.startswith("param/")}
    # float64 unless every parameter is float32 (e2e_real mixes float32 weights and float64 heads: float64)
    dtype = torch.float32 if all(p.dtype == torch.float32 for p in params.values()) else torch.float64
    model = MPEEModel(BertConfig(**a["bert_config"]), MPEEConfig.from_dict(a["mpee_config"])).to(dtype).eval()
    state = {k: p.to(dtype) for k, p in params.items()}
    model.load_state_dict(state, strict=True)
    return model


def _capture_one(model, ids, tt, threshold: float | None = None) -> dict[str, Any]:
    """Run ``infer`` on one unpadded sample, recording every layer's hidden state and memories."""
    cap: dict[str, list] = {"hidden": [], "att_mem": [], "logits": []}
    orig_step = model._attention_step

    def step(*args, **kw):
        out = orig_step(*args, **kw)
        cap["att_mem"].append(None if out.a_m is None else out.a_m[0].clone())
        return out

    model._attention_step = step
    hooks = [layer.register_forward_hook(lambda m, i, o: cap["logits"].append(o[0].clone())) for layer in model.exits]
    origs = []
    for layer in model.bert.layers:
        f = layer.ffn_sublayer
        origs.append((layer, f))
        layer.ffn_sublayer = (lambda f: lambda z: (lambda h: (cap["hidden"].append(h[0].clone()), h)[1])(f(z)))(f)
    try:
        res = model.infer({"input_ids": ids[None], "attention_mask": torch.ones_like(ids)[None],
                           "token_type_ids": tt[None]}, threshold=threshold, trace=True).samples[0]
    finally:
        del model._attention_step
        for layer, _ in origs:
            del layer.ffn_sublayer
        for hk in hooks:
            hk.remove()
    return {"result": res, **cap}


def c_e2e_infer(t, a):
    """Per sample (run alone, checked against the batched run): exit, prediction, per-layer trace."""
    model = e2e_model(t, a)
    ids, mask, tt = t["input_ids"], t["attention_mask"], t["token_type_ids"]
    out: dict[str, Any] = {}
    batched = model.infer({"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}, trace=True).samples
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        one = _capture_one(model, ids[b, :n], tt[b, :n])
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


def c_e2e_authors(t, a):
    """``c_e2e_infer`` under the authors' preset, plus per sample whether the final classifier predicts it and
    the MACs the authors' evaluation loop counts (inputs padded to ``pad_to``)."""
    from mpee_ref.mpee import MPEEConfig
    out = c_e2e_infer(t, a)
    cfg, L, D = MPEEConfig.from_dict(a["mpee_config"]), a["bert_config"]["num_hidden_layers"], a["bert_config"]["hidden_size"]
    assert cfg.r_ee_means == "keep" and cfg.final_classifier and cfg.pad_to is not None, cfg
    for b in range(t["input_ids"].shape[0]):
        e = int(out[f"s{b}/exit_layer"])
        out[f"s{b}/final_classifier"] = torch.tensor(e == L and not float(out[f"s{b}/entropy"][-1]) < cfg.threshold)
        macs = authors_code_sample_macs(e, cfg.prune_layer_set(L), cfg.r_ee, L, D, max_len=cfg.pad_to)
        ex, full = macs.executed, macs.full
        out[f"s{b}/macs_authors_code_executed"], out[f"s{b}/macs_authors_code_full"] = torch.tensor(ex), torch.tensor(full)
    return out


@torch.no_grad()
def c_e2e_padded(t, a):
    """The padded batch through all L layers at once (the training path), with each layer's exit test."""
    model = e2e_model(t, a)
    cfg, L = model.mpee_config, model.bert_config.num_hidden_layers
    ids, mask, tt = t["input_ids"], t["attention_mask"], t["token_type_ids"]
    prune_at = cfg.prune_layer_set(L)
    n_base = mask.sum(1) - 1                                                       # (B,)
    h = model.bert.embeddings(ids, tt)                                             # (B, T, D)
    att_mem, cls_mem, out = None, None, {}
    exit_layer = torch.zeros(ids.shape[0], dtype=torch.int64)                      # 0 = still running
    prediction = torch.zeros(ids.shape[0], dtype=torch.int64)
    for l in range(1, L + 1):
        step = model._attention_step(l, cfg, h, mask, att_mem, n_base, prune_at)
        mask, att_mem, res = step.mask, step.a_m, step.pruned
        h = model.bert.layers[l - 1].ffn_sublayer(step.z_tilde)                    # (B, T_l, D)
        cls_mem = eq10_classifier_memory(cls_mem, model.exits[l - 1](h[:, 0]), cfg.effective_lam)   # (B, C)
        ent = exit_entropy(cls_mem)                                                # (B,)
        leave = should_exit(ent, cfg.threshold) | (l == L)                         # (B,)
        new = leave & (exit_layer == 0)
        exit_layer[new] = l
        prediction[new] = eq10_probabilities(cls_mem).argmax(-1)[new]
        out.update({f"l{l}/attention_mask": mask, f"l{l}/attention_memory": att_mem, f"l{l}/hidden": h,
                    f"l{l}/cls_memory": cls_mem, f"l{l}/entropy": ent, f"l{l}/exit": leave})
        if res is not None:
            out[f"l{l}/source_index"] = res.source_index
    ref = model.infer({"input_ids": ids, "attention_mask": t["attention_mask"], "token_type_ids": tt}).samples
    assert exit_layer.tolist() == [s.exit_layer for s in ref], (exit_layer, [s.exit_layer for s in ref])
    assert prediction.tolist() == [s.prediction for s in ref]
    return {"exit_layer": exit_layer, "prediction": prediction, **out}


def c_e2e_loss(t, a):
    model = e2e_model(t, a)
    o = model(t["input_ids"], t["attention_mask"], t["token_type_ids"], labels=t["labels"])
    o.loss.total.backward()
    params = dict(model.named_parameters())
    out = {"total": o.loss.total, "ce": o.loss.ce, "kd": o.loss.kd, "teacher_logits": o.loss.teacher_logits,
           "eta": o.loss.eta, "memories": o.memories, "exit_logits": o.logits, "tokens": o.tokens}
    out.update({f"grad/{k}": params[k].grad for k in a["grad_params"]})
    return out


COMPUTE: dict[str, Callable] = {
    "eq01_layer_norm": c_layer_norm, "eq01_layer_norm_offset": c_layer_norm, "eq04_gelu": c_gelu, "eq01_transformer_layer": c_eq01,
    "eq02_mhsa": c_eq02, "eq03_attention": c_eq03, "eq04_ffn": c_eq04, "eq05_class_attention": c_eq05,
    "eq06_attention_memory": c_eq06, "eq07_num_kept": c_eq07_num_kept, "eq07_top_m": c_eq07_top_m,
    "eq08_fuse": c_eq08, "eq08_prune_tokens": c_prune, "eq08_prune_tokens_authors": c_prune,
    "eq09_exit_logits": c_eq09, "eq10_classifier_memory": c_eq10, "eq11_cross_entropy": c_eq11,
    "eq12_teacher": c_eq12, "eq13_kd_loss": c_eq13, "eq14_total_loss": c_eq14, "eq15_flops": c_eq15,
    "e2e_infer": c_e2e_infer, "e2e_infer_ceil": c_e2e_infer, "e2e_real": c_e2e_infer, "e2e_padded": c_e2e_padded,
    "e2e_loss": c_e2e_loss, "e2e_authors": c_e2e_authors,
}

EXACT_DTYPES = ("int64", "bool")


def inputs_of(v_tensors: dict[str, np.ndarray], manifest_entry: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    """The entry's input and param tensors as torch tensors, keyed by their names."""
    return {k: torch.from_numpy(np.array(v_tensors[f"{name}/{k}"]))
            for k, s in manifest_entry["tensors"].items() if s["role"] in ("input", "param")}


INTERMEDIATES = {"mask_bias", "mhsa_out", "ffn_out", "q", "k", "v", "context", "scores", "pre_act", "act",
                 "pooled", "kept", "fused", "alpha", "teacher_ce", "exit_logits", "cls_memory", "memories"}


def is_intermediate(name: str) -> bool:
    """Named intermediates: sub-results a port can compare to find the first step that diverges (per-layer
    traces and gradients included); a port need not return them."""
    return (name in INTERMEDIATES or name.split("/")[-1] in INTERMEDIATES or "/l" in name or name.startswith("l")
            and "/" in name or name.startswith("grad/"))


def run_entry(v: Vectors, name: str, float_dtype: str = "float64") -> None:
    outs = COMPUTE[name](inputs_of(v.tensors, v.entries[name], name), v.entries[name]["attributes"])
    for k, x in outs.items():
        v.out(name, {k: x}, role="intermediate" if is_intermediate(k) else "output", float_dtype=float_dtype)


# ============================================================================ the entries
def build_equations(v: Vectors) -> None:
    e = "eq01_layer_norm"
    v.entry(e, "1", "mpee_ref.encoder.equations.layer_norm", tol="ln", eps=EPS)
    v.sin(e, "x", (B, T, D), scale=1.0, offset=100.0)        # large mean: a one-pass variance loses digits
    v.sin(e, "weight", (D,), scale=0.1, offset=1.0, role="param")
    v.sin(e, "bias", (D,), scale=0.1, role="param")
    run_entry(v, e)

    e = "eq01_layer_norm_offset"
    v.entry(e, "1", "mpee_ref.encoder.equations.layer_norm", tol="fp64_only", eps=EPS)
    v.sin(e, "x", (B, T, D), scale=1.0, offset=1e4)         # one-pass variance: ~1e-8 error even in fp64
    v.copy(e, "weight", "eq01_layer_norm/weight", role="param")
    v.copy(e, "bias", "eq01_layer_norm/bias", role="param")
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
    for k, shape in (("w_1", (I, D)), ("b_1", (I,)), ("w_2", (D, I)), ("b_2", (D,))):
        v.sin(e, k, shape, scale=0.25 if k.startswith("w") else 0.05, role="param")
    run_entry(v, e)

    e = "eq05_class_attention"
    v.entry(e, "5", "mpee_ref.token_exit.eq05_class_attention")
    v.copy(e, "probs", "eq01_transformer_layer/probs")
    v.literal(e, "attention_mask", mask_values())
    run_entry(v, e)

    e = "eq06_attention_memory"
    v.entry(e, "6", "mpee_ref.token_exit.eq06_attention_memory", beta=0.25)   # not 0.5: a swapped beta shows
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
    v.sin(e, "logits_large", (4, C), scale=1000.0)          # exp() overflows in fp32 and fp64
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
    v.entry(e, "14", "mpee_ref.losses.eq14_total_loss / ce_exit_weights", gamma=0.1)
    v.copy(e, "l_ce", "eq11_cross_entropy/ce")
    v.copy(e, "l_kd", "eq13_kd_loss/kd_student_teacher_batchmean")
    v.copy(e, "teacher", "eq12_teacher/teacher")
    v.copy(e, "labels", "eq11_cross_entropy/labels")
    run_entry(v, e)

    e = "eq15_flops"
    v.entry(e, "15", "mpee_ref.flops.eq15_layer_flops / head_flops / fusion_flops / sample_flops / eq15_speedup",
            tol="exact", hidden=D, intermediate=I, num_labels=C, num_layers=L)
    v.literal(e, "layer_cases", [[1, 1], [7, 7], [7, 5], [11, 4], [128, 90]])
    v.literal(e, "n_att", [11, 11, 8, 8])                   # a run: prune 4 -> fused at layer 2, exit at 4
    v.literal(e, "n_ffn", [11, 8, 8, 8])
    v.literal(e, "num_fused", [0, 4, 0, 0])
    run_entry(v, e)


def _e2e_params(v: Vectors, e: str, bert: dict[str, Any], mpee_config: dict[str, Any]) -> None:
    """Every ``MPEEModel.state_dict()`` tensor of the tiny model as a ``sin`` param."""
    from mpee_ref.config import BertConfig
    from mpee_ref.mpee import MPEEConfig, MPEEModel
    model = MPEEModel(BertConfig(**bert), MPEEConfig.from_dict(mpee_config))
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


def _pick_threshold(ents: list[list[float]], num_layers: int, ok: Callable[[list[int]], bool]) -> tuple[float, float]:
    """F between the entropies (all but the last layer's), as far from all of them as possible, for which
    ``ok(exit layers)`` holds; returns (F, margin)."""
    best = None
    flat = sorted({x for row in ents for x in row[:-1]})
    for thr in sorted({round((x + y) / 2, 4) for x, y in zip(flat, flat[1:])}):
        exits = [next((l for l in range(1, num_layers) if row[l - 1] < thr), num_layers) for row in ents]
        if ok(exits):
            margin = min(abs(x - thr) for x in flat)
            if best is None or margin > best[0]:
                best = (margin, thr)
    assert best is not None and best[0] > 1e-3, f"no threshold with a safe margin: entropies {ents}"
    return best[1], round(best[0], 6)


def _batch_inputs(v: Vectors, e: str, lengths: list[int], T: int, add: int) -> None:
    mask = [[1 if j < n else 0 for j in range(T)] for n in lengths]
    v.formula(e, "input_ids", (len(lengths), T), "int64", "int_mod", low=1, mult=37, add=add, modulus=98)
    v.tensors[f"{e}/input_ids"] *= np.asarray(mask, np.int64)          # padding -> id 0
    v.entries[e]["tensors"]["input_ids"]["then"] = "multiplied by attention_mask (padding id 0)"
    v.literal(e, "attention_mask", mask)
    v.literal(e, "token_type_ids", [[1 if (n // 2 + 1 <= j < n) else 0 for j in range(T)] for n in lengths])


def _from_entry(v: Vectors, e: str, source: str, names: list[str]) -> None:
    for n in names:
        v.copy(e, n, f"{source}/{n}", role=v.entries[source]["tensors"][n]["role"])


def build_e2e(v: Vectors) -> None:
    from mpee_ref.mpee import MPEEConfig
    Bn, Ln = len(E2E_LENGTHS), E2E_BERT["num_hidden_layers"]
    base = dict(num_labels=5, r_ee=0.3, prune_layers=[1, 2], beta=0.5, lam=0.9, head="pooler")

    # ---- inference: pick F so that one sample exits early and one prunes at layers 1 and 2
    e = "e2e_infer"
    v.entry(e, "1-10, 15", "mpee_ref.mpee.MPEEModel.infer", tol="e2e", bert_config=E2E_BERT,
            mpee_config=full_mpee_config(**base, threshold=0.0))
    _batch_inputs(v, e, E2E_LENGTHS, E2E_T, add=5)
    _e2e_params(v, e, E2E_BERT, base)
    t = inputs_of(v.tensors, v.entries[e], e)
    probe = e2e_model(t, v.entries[e]["attributes"]).infer(
        {k: t[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, layer_exit=False).samples
    threshold, margin = _pick_threshold(
        [s.entropies for s in probe], Ln,
        lambda ex: 0 < sum(x < Ln for x in ex) < Bn and any(x >= 2 and n >= 5 for x, n in zip(ex, E2E_LENGTHS)))
    cfg = full_mpee_config(**base, threshold=threshold)
    v.entries[e]["attributes"].update(mpee_config=cfg, entropy_margin=margin)
    run_entry(v, e)
    exits = [int(v.tensors[f"{e}/s{b}/exit_layer"]) for b in range(Bn)]
    pruned = [sum(f"{e}/s{b}/l{l}/fused_positions" in v.tensors for l in range(1, Ln + 1)) for b in range(Bn)]
    assert any(x < Ln for x in exits), f"no sample exits early: {exits}"
    assert any(p >= 2 for p in pruned), f"no sample prunes at two layers: {pruned}"
    v.entries[e]["attributes"]["exit_layers"] = exits
    v.entries[e]["attributes"]["pruning_layers_count_per_sample"] = pruned
    shared = ["input_ids", "attention_mask", "token_type_ids"] + [n for n in v.entries[e]["tensors"]
                                                                  if n.startswith("param/")]

    # ---- the same batch as one padded batch through every layer (static-shape ports)
    e = "e2e_padded"
    v.entry(e, "1-10", "MPEEModel._attention_step / ffn_sublayer / exits over the padded batch", tol="e2e",
            bert_config=E2E_BERT, mpee_config=cfg)
    _from_entry(v, e, "e2e_infer", shared)
    run_entry(v, e)
    for name, spec in v.entries[e]["tensors"].items():
        if name.endswith(("/hidden", "/attention_memory")):
            spec["valid"] = name.split("/")[0] + "/attention_mask"
            spec["valid_offset"] = 0 if name.endswith("/hidden") else 1

    # ---- R_ee = 0.7 exiting: a float ceil (N = 10) and the original-length ratio base change the kept counts
    e = "e2e_infer_ceil"
    v.entry(e, "5-8", "mpee_ref.mpee.MPEEModel.infer", tol="e2e", bert_config=E2E_BERT,
            mpee_config=full_mpee_config(**{**base, "r_ee": 0.7}, threshold=0.0))
    _batch_inputs(v, e, CEIL_LENGTHS, max(CEIL_LENGTHS), add=11)
    _from_entry(v, e, "e2e_infer", [n for n in shared if n.startswith("param/")])
    run_entry(v, e)
    t = inputs_of(v.tensors, v.entries[e], e)
    other = e2e_model(t, {**v.entries[e]["attributes"], "mpee_config": {**v.entries[e]["attributes"]["mpee_config"],
                                                                         "ratio_base": "original"}})
    tokens = [s.tokens_per_layer for s in other.infer({k: t[k] for k in ("input_ids", "attention_mask",
                                                                          "token_type_ids")}).samples]
    assert tokens != [v.tensors[f"{e}/s{b}/tokens_per_layer"].tolist() for b in range(len(CEIL_LENGTHS))], tokens

    # ---- the authors' preset: Eq. 7 over 12 padded slots, truncated memory, final classifier
    e = "e2e_authors"
    authors = lambda thr: full_mpee_config(**MPEEConfig.authors(num_labels=5, num_layers=Ln, pad_to=AUTHORS_PAD_TO,  # noqa: E731
                                                                threshold=thr).to_dict())
    v.entry(e, "1-10, 15", "mpee_ref.mpee.MPEEModel.infer under MPEEConfig.authors", tol="e2e", bert_config=E2E_BERT,
            mpee_config=authors(0.0))
    _from_entry(v, e, "e2e_infer", shared)
    v.sin(e, "param/classifier.weight", (5, E2E_BERT["hidden_size"]), scale=2.0, role="param")
    v.sin(e, "param/classifier.bias", (5,), scale=0.05, role="param")
    t = inputs_of(v.tensors, v.entries[e], e)
    batch = {k: t[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    probe = e2e_model(t, v.entries[e]["attributes"]).infer(batch, layer_exit=False).samples
    # exit "L + 1" = failed the test at L: the final classifier predicts; want early exits, L and L + 1
    threshold, margin = _pick_threshold([list(s.entropies) + [0.0] for s in probe], Ln + 1,
                                        lambda ex: min(ex) < Ln and Ln in ex and Ln + 1 in ex)
    v.entries[e]["attributes"].update(mpee_config=authors(threshold), entropy_margin=margin,
                                      padded_widths=list(padded_widths(AUTHORS_PAD_TO, authors(0.0)["prune_layers"],
                                                                       Ln, 0.7, "keep")))
    run_entry(v, e)
    exits = [int(v.tensors[f"{e}/s{b}/exit_layer"]) for b in range(Bn)]
    finals = [bool(v.tensors[f"{e}/s{b}/final_classifier"]) for b in range(Bn)]
    assert min(exits) < Ln and any(finals) and not all(finals[b] for b in range(Bn) if exits[b] == Ln), (exits, finals)
    # the padded count bites: Eq. 7 over real lengths keeps fewer tokens for some sample
    real = e2e_model(t, {**v.entries[e]["attributes"], "mpee_config": {**authors(threshold), "pad_to": None}})
    real_tokens = [s.tokens_per_layer for s in real.infer(batch).samples]
    tokens = [tuple(v.tensors[f"{e}/s{b}/tokens_per_layer"].tolist()) for b in range(Bn)]
    assert real_tokens != tokens, tokens
    v.entries[e]["attributes"].update(exit_layers=exits, final_classifier_samples=[b for b in range(Bn) if finals[b]],
                                      tokens_per_layer_if_real_lengths=[list(x) for x in real_tokens])

    # ---- training loss with gradients
    e = "e2e_loss"
    grads = ["exits.0.classifier.weight", "teacher.dense.weight", "teacher.context.weight",
             "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.2.output.dense.bias"]
    v.entry(e, "1-14", "mpee_ref.mpee.MPEEModel.forward (labels) -> mpee_ref.losses.mpee_loss", tol="e2e",
            bert_config=E2E_BERT, mpee_config=cfg, grad_params=grads)
    _from_entry(v, e, "e2e_infer", shared)
    v.literal(e, "labels", [(3 * b + 1) % 5 for b in range(Bn)])
    run_entry(v, e)


def build_real(v: Vectors, weights: Path) -> None:
    """MiniLM-L6 (external weights), literal tanh heads, two sentences: a trace on real activations."""
    from mpee_ref.config import BertConfig
    from mpee_ref.io import load_tokenizer
    from mpee_ref.mpee import MPEEConfig, MPEEModel
    from safetensors.numpy import load_file
    import dataclasses
    folder = Path(weights)
    if not (folder / "model.safetensors").exists():
        raise SystemExit(f"{folder}/model.safetensors not found: run `python -m mpee_ref fetch-weights` (e2e_real "
                         "needs the converted MiniLM-L6) or pass --weights")
    hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    bert = {f.name: hf[f.name] for f in dataclasses.fields(BertConfig) if f.name in hf and f.name != "pad_token_id"}
    bert.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    enc = load_tokenizer(folder)(REAL_SENTENCES)
    base = dict(num_labels=3, r_ee=0.4, prune_layers=[2, 4, 5], head="tanh")
    e = "e2e_real"
    v.entry(e, "1-10, 15", "mpee_ref.mpee.MPEEModel.infer on MiniLM-L6 (weights/minilm-l6)", tol="real",
            bert_config=bert, mpee_config=full_mpee_config(**base, threshold=0.0), sentences=REAL_SENTENCES,
            weights="weights/minilm-l6/model.safetensors (python -m mpee_ref fetch-weights); param/bert.<key> = <key>")
    v.literal(e, "input_ids", enc.input_ids.tolist())
    v.literal(e, "attention_mask", enc.attention_mask.tolist())
    v.literal(e, "token_type_ids", enc.token_type_ids.tolist())
    stored = load_file(str(folder / "model.safetensors"))
    for k, p in MPEEModel(BertConfig(**bert), MPEEConfig.from_dict(base)).state_dict().items():
        if k.startswith("bert."):
            v.external(e, f"param/{k}", stored[k[len("bert."):]], source=k[len("bert."):])
        elif k.endswith("bias"):
            v.sin(e, f"param/{k}", tuple(p.shape), scale=0.2, role="param")
        else:
            v.sin(e, f"param/{k}", tuple(p.shape), scale=0.3, role="param")
    t = inputs_of(v.tensors, v.entries[e], e)
    Ln = bert["num_hidden_layers"]
    probe = e2e_model(t, v.entries[e]["attributes"]).infer(
        {k: t[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, layer_exit=False).samples
    threshold, margin = _pick_threshold([s.entropies for s in probe], Ln,
                                        lambda ex: 2 < min(ex) < Ln)
    v.entries[e]["attributes"].update(mpee_config=full_mpee_config(**base, threshold=threshold),
                                      entropy_margin=margin)
    run_entry(v, e, float_dtype="float32")
    v.entries[e]["attributes"]["exit_layers"] = [int(v.tensors[f"{e}/s{b}/exit_layer"])
                                                 for b in range(len(REAL_SENTENCES))]


# ============================================================================ main
def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def generate(out_dir: str | Path, revision: str | None = None,
             weights: str | Path = ROOT / "weights" / "minilm-l6") -> tuple[Path, Path]:
    """Build every entry and write ``vectors.safetensors`` and ``manifest.json`` into ``out_dir``."""
    v = Vectors()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # reductions split by thread count differ in the last bit
    try:
        build_equations(v)
        build_e2e(v)
        build_real(v, Path(weights))
    finally:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st = out_dir / "vectors.safetensors"
    save_file({k: x for k, x in v.tensors.items() if k not in v.unstored}, str(st),
              metadata={"format_version": str(FORMAT_VERSION)})
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "tools/make_vectors.py",
        "generator_revision": revision if revision is not None else git_revision(),
        "torch_version": torch.__version__.split("+")[0],
        "tensor_file": st.name,
        "key_format": "<entry>/<tensor name>",
        "roles": {"input": "generated from its formula", "param": "generated from its formula, or external",
                  "output": "computed by the named function: a port must return it",
                  "intermediate": "a sub-result: compared when the port returns it (finds the first divergence)"},
        "formulas": {
            "sin": "x[i] = offset + scale * sin(phase + freq*i + curv*i*i), i = flat C-order index (float64)",
            "floor_sin": "x[i] = floor(levels * sin(phase + freq*i)) / levels (float64; produces ties)",
            "int_mod": "x[i] = low + (mult*i + add) % modulus (int64); then: a step applied afterwards",
            "literal": "values listed in params.values",
            "from": "the same values as the tensor named in source (<entry>/<name>); not stored again",
            "external": "the tensor named in source inside weights/minilm-l6/model.safetensors; not stored",
        },
        "tolerance_rule": "|port - golden| <= atol + rtol * |golden| elementwise, with the entry's (rtol, atol) "
                          "for the port's precision (null: not checked in that precision); int64 and bool "
                          "tensors must be equal; where a float golden is finfo(float64).min (padding in "
                          "mask_bias / scores) the port may hold any value <= -1000 and the slot is not compared; "
                          "a tensor with 'valid' is compared only where that mask (minus its first valid_offset "
                          "columns) is 1",
        "conventions": {
            "axes": "B batch, T tokens incl. [CLS], N = T-1, D hidden, H heads, dh head size, F FFN size, C classes, "
                    "L layers, V vocabulary, K cases, L_b layers executed by sample b, T_l tokens after layer l, "
                    "p fused tokens; 'out', 'in' for PyTorch Linear weights (y = x W^T + b)",
            "layers": "l in key names (l{l}/), prune_layers and exit layers are 1-based (layer l produces h^l); "
                      "state-dict names count from 0: bert.encoder.layer.{l-1}, exits.{l-1}",
            "samples": "s{b}/ is sample b (0-based) of the batch, run alone on its unpadded tokens",
            "positions": "0 = [CLS], i = input position i, -k = the EE-fusion token made at layer k",
            "source_index": "0-based over the previous non-[CLS] rows; -1 = fused token, -2 = padding",
            "mpee_config": "every MPEEConfig field (docs/PORTING.md and mpee_ref/mpee/config.py); "
                           "mpee_config.threshold is F",
        },
        "entries": v.entries,
    }
    mf = out_dir / "manifest.json"
    mf.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return st, mf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "vectors"), help="output folder")
    ap.add_argument("--revision", default=None, help="record this revision instead of `git rev-parse HEAD`")
    ap.add_argument("--weights", default=str(ROOT / "weights" / "minilm-l6"), help="converted MiniLM-L6 folder")
    args = ap.parse_args(argv)
    st, mf = generate(args.out, args.revision, args.weights)
    print(f"wrote {st} ({st.stat().st_size} bytes) and {mf} ({mf.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
