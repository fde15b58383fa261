r"""MPEE inference and the loss forward in NumPy: a port of ``mpee_ref/mpee/model.py``.

:class:`MPEENumpy` runs one sample at a time (no padding, no batching tricks): per layer l

    Z~, P  = LN(h + MHSA(h))                     Eqs. 1-3
    A_m    = (1-β) A_m + β A_class(P)            Eqs. 5-6 (every layer)
    if l prunes: keep top-m of A_m, fuse rest    Eqs. 7-8
    h      = LN(Z~ + FFN(Z~))                    Eqs. 1, 4
    C_zm   = (1-λ) C_zm + λ head_l(h[CLS])       Eqs. 9-10
    exit if entropy(softmax(C_zm)) < F or l = L

The authors' preset (``MPEEConfig.authors``) adds three switches: ``pad_to`` (Eq. 7's N counted over
the padded slots of :func:`equations.padded_widths`), ``memory_alignment="truncate"`` (A_m left in the old
order after Eq. 8) and ``final_classifier`` (a sample that fails the test at layer L is predicted by
``classifier(tanh(pooler(h[CLS])))``; in the loss those raw logits replace exit L's memory).

:meth:`MPEENumpy.loss` is the training forward (all layers, every sample, pruning active, no
dropout) followed by Eqs. 11-14, on a right-padded batch.

Weights come from ``safetensors.numpy``: an MPEE folder (``config.json``, ``mpee_config.json``,
``model.safetensors`` with ``bert.*``, ``exits.{l-1}.*``, ``teacher.*`` keys) or, for the encoder
alone (:class:`BertNumpy`), a converted encoder folder (HF ``BertModel`` key names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import equations as eq
from .flops import sample_flops

# position code of the EE-fusion token created at layer l in traces: -l (0 is [CLS])

# MPEEConfig defaults (mpee_ref/mpee/config.py); an mpee_config.json overrides them.
MPEE_DEFAULTS: dict[str, Any] = dict(
    num_labels=2, token_exit=True, r_ee=0.3, r_ee_means="exit", prune_layers=None, ratio_base="current",
    beta=0.5, beta_warmup_layers=0, attention_memory=True, token_score="class", fusion="memory",
    fused_memory="sum", token_select="top", layer_exit=True, threshold=0.3, lam=0.9, classifier_memory=True,
    head="pooler", classifier_dropout=0.1, head_norm=False, head_init="pooler", use_kd=True, tau=3.0,
    kd_direction="student_teacher", kd_reduction="batchmean", detach_teacher_inputs=True,
    detach_teacher_in_kd=False, gamma=None, pad_to=None, memory_alignment="gather", final_classifier=False,
    ce_weighting="uniform")
#: Switches of MPEEConfig the port does not implement: only their default value is accepted.
NOT_PORTED = {"head_norm": "fold the standardisation into the heads first (MPEEModel.fold_head_norms) and save"}


def scale_layers(layers_of_12: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """Map 1-based layers of a 12-layer BERT onto ``num_layers`` (round half up, deduplicated)."""
    out: list[int] = []
    for l in layers_of_12:
        s = max(1, min(num_layers, (2 * l * num_layers + 12) // 24))
        if s not in out:
            out.append(s)
    return tuple(out)


def _layer_params(state: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """One layer's tensors under the short names of the equations (HF key names -> w_q, ...)."""
    names = {"w_q": "attention.self.query.weight", "b_q": "attention.self.query.bias",
             "w_k": "attention.self.key.weight", "b_k": "attention.self.key.bias",
             "w_v": "attention.self.value.weight", "b_v": "attention.self.value.bias",
             "w_o": "attention.output.dense.weight", "b_o": "attention.output.dense.bias",
             "ln1_w": "attention.output.LayerNorm.weight", "ln1_b": "attention.output.LayerNorm.bias",
             "w_1": "intermediate.dense.weight", "b_1": "intermediate.dense.bias",
             "w_2": "output.dense.weight", "b_2": "output.dense.bias",
             "ln2_w": "output.LayerNorm.weight", "ln2_b": "output.LayerNorm.bias"}
    return {short: state[prefix + key] for short, key in names.items()}


class BertNumpy:
    """The BERT encoder (embeddings + L post-LN layers) from a state dict with HF ``BertModel`` names."""

    def __init__(self, config: Mapping[str, Any], state: Mapping[str, np.ndarray], prefix: str = "",
                 dtype: Any = np.float64):
        self.config = dict(config)
        self.dtype = np.dtype(dtype)
        self.num_heads = int(config["num_attention_heads"])
        self.num_layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.approximate = "tanh" if config.get("hidden_act", "gelu") == "gelu_new" else "none"
        s = {k[len(prefix):]: np.asarray(v, dtype=self.dtype) for k, v in state.items() if k.startswith(prefix)}
        e = "embeddings."
        self.word, self.position = s[e + "word_embeddings.weight"], s[e + "position_embeddings.weight"]
        self.token_type = s[e + "token_type_embeddings.weight"]
        self.emb_ln = (s[e + "LayerNorm.weight"], s[e + "LayerNorm.bias"])
        self.layers = [_layer_params(s, f"encoder.layer.{i}.") for i in range(self.num_layers)]
        self.pooler = (s.get("pooler.dense.weight"), s.get("pooler.dense.bias"))

    @classmethod
    def from_folder(cls, folder: str | Path, dtype: Any = np.float64) -> "BertNumpy":
        """A converted encoder folder (``config.json`` + ``model.safetensors``)."""
        from safetensors.numpy import load_file
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return cls(config, load_file(str(folder / "model.safetensors")), dtype=dtype)

    def embed(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        """ids ``(B, T)`` -> h^0 ``(B, T, D)``."""
        B, T = input_ids.shape
        position_ids = np.broadcast_to(np.arange(T), (B, T))
        return eq.embeddings(input_ids, token_type_ids, position_ids, self.word, self.position,
                             self.token_type, *self.emb_ln, self.eps)

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                token_type_ids: np.ndarray | None = None) -> list[np.ndarray]:
        """Plain BERT (no MPEE): the L + 1 hidden states ``(B, T, D)`` (embeddings, then every layer)."""
        input_ids = np.asarray(input_ids)
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
        tt = np.zeros_like(input_ids) if token_type_ids is None else np.asarray(token_type_ids)
        h = self.embed(input_ids, tt)
        bias = eq.attention_mask_bias(mask, self.dtype)
        out = [h]
        for p in self.layers:
            h, _ = eq.eq01_transformer_layer(h, p, self.num_heads, self.eps, bias, self.approximate)
            out.append(h)
        return out


@dataclass(frozen=True)
class LayerTraceNumpy:
    """One executed layer of one sample (mirror of ``mpee_ref.mpee.LayerTrace``) plus its hidden state."""

    layer: int
    n_att: int
    n_ffn: int
    positions: tuple[int, ...]
    fused_positions: tuple[int, ...]
    fused_weights: tuple[float, ...]
    entropy: float
    exited: bool
    hidden: np.ndarray = field(repr=False)           # (T', D) h^l of this sample
    memory: np.ndarray = field(repr=False)           # (C,) C_zm^l
    logits: np.ndarray | None = field(repr=False, default=None)   # (C,) C_z^l
    attention_memory: np.ndarray | None = field(repr=False, default=None)   # (T'-1,) A_m^l


@dataclass(frozen=True)
class SampleResultNumpy:
    prediction: int
    probabilities: tuple[float, ...]
    exit_layer: int
    layers: tuple[LayerTraceNumpy, ...]
    flops_executed: int
    flops_full: int
    final_classifier: bool = False                   # predicted by the authors' final classifier


@dataclass(frozen=True)
class LossNumpy:
    total: float
    ce: np.ndarray                                    # (L,)
    kd: np.ndarray | None
    teacher_logits: np.ndarray | None                 # (B, C)
    eta: np.ndarray | None                            # (B, L)
    memories: np.ndarray                              # (L, B, C)
    logits: np.ndarray                                # (L, B, C) C_z^l
    tokens: np.ndarray                                # (L, B) tokens entering layer l's FFN
    final_logits: np.ndarray | None = None            # (B, C) final classifier (replaces exit L in the loss)


@dataclass(frozen=True)
class PaddedLayerNumpy:
    """Layer l of :meth:`MPEENumpy.trace_batch`: the whole right-padded batch after layer l."""

    layer: int
    attention_mask: np.ndarray                        # (B, T_l)
    source_index: np.ndarray | None                   # (B, T_l - 1) at pruning layers
    attention_memory: np.ndarray | None               # (B, T_l - 1)
    hidden: np.ndarray                                # (B, T_l, D)
    cls_memory: np.ndarray                            # (B, C)
    entropy: np.ndarray                               # (B,)
    exit: np.ndarray                                  # (B,) bool: entropy < F or l = L


class MPEENumpy:
    """MPEE (BERT + exit heads + teacher) in NumPy. ``cfg`` is a dict of MPEEConfig fields."""

    def __init__(self, bert_config: Mapping[str, Any], mpee_config: Mapping[str, Any],
                 state: Mapping[str, np.ndarray], dtype: Any = np.float64):
        unknown = sorted(set(mpee_config) - set(MPEE_DEFAULTS))
        if unknown:
            raise ValueError(f"mpee_config: unknown keys {unknown}")
        self.cfg = {**MPEE_DEFAULTS, **mpee_config}
        for key, what in NOT_PORTED.items():
            if self.cfg[key] != MPEE_DEFAULTS[key]:
                raise ValueError(f"mpee_config: {key}={self.cfg[key]!r} is not ported ({what}); the port runs "
                                 f"{key}={MPEE_DEFAULTS[key]!r} only")
        self.bert = BertNumpy(bert_config, state, prefix="bert.", dtype=dtype)
        self.dtype = self.bert.dtype
        L, f = self.bert.num_layers, (lambda k: np.asarray(state[k], dtype=self.dtype))
        if self.cfg["head"] == "pooler":
            self.heads = [(f(f"exits.{i}.pooler.dense.weight"), f(f"exits.{i}.pooler.dense.bias"),
                           f(f"exits.{i}.classifier.weight"), f(f"exits.{i}.classifier.bias")) for i in range(L)]
        else:
            self.heads = [(f(f"exits.{i}.dense.weight"), f(f"exits.{i}.dense.bias")) for i in range(L)]
        self.teacher = (f("teacher.dense.weight"), f("teacher.dense.bias"), f("teacher.context.weight")[0])
        self.classifier = ((*self.bert.pooler, f("classifier.weight"), f("classifier.bias"))
                           if self.cfg["final_classifier"] else None)

    @classmethod
    def from_folder(cls, folder: str | Path, dtype: Any = np.float64, **overrides: Any) -> "MPEENumpy":
        """An MPEE folder written by ``mpee_ref.mpee.save_mpee``; ``overrides`` change config fields."""
        from safetensors.numpy import load_file
        folder = Path(folder)
        bert_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        mpee_config = json.loads((folder / "mpee_config.json").read_text(encoding="utf-8"))
        return cls(bert_config, {**mpee_config, **overrides}, load_file(str(folder / "model.safetensors")), dtype)

    # ------------------------------------------------------------------ config helpers
    def prune_layers(self) -> tuple[int, ...]:
        if not self.cfg["token_exit"]:
            return ()
        layers = self.cfg["prune_layers"]
        return tuple(sorted(layers if layers is not None else scale_layers((4, 7, 10), self.bert.num_layers)))

    def beta_at(self, layer: int) -> float:
        c = self.cfg
        return 1.0 if (not c["attention_memory"] or layer <= c["beta_warmup_layers"]) else float(c["beta"])

    def final_logits(self, h_cls: np.ndarray) -> np.ndarray:
        """The authors' final classifier on the backbone pooler: ``(B, D)`` -> raw logits ``(B, C)``."""
        return eq.eq09_pooled_exit_logits(h_cls, *self.classifier)

    def prune_counts(self, l: int, n_base: np.ndarray):
        """Eq. 7's N at pruning layer l: (n_base for prune_tokens, count the fused "mean" divides by), or
        None where the padded slots prune nothing. ``pad_to``: N = W_l - 1 padded slots, W_l - 1 - m exit."""
        c = self.cfg
        if c["pad_to"] is None:
            return (n_base if c["ratio_base"] == "original" else None), None
        L = self.bert.num_layers
        W = eq.padded_widths(c["pad_to"], self.prune_layers(), L, c["r_ee"], c["r_ee_means"], c["fusion"] != "drop")[l - 1]
        m = int(eq.eq07_num_kept(np.array([W - 1]), c["r_ee"], c["r_ee_means"])[0])
        if m >= W - 1:
            return None
        return np.full_like(n_base, W - 1), np.full_like(n_base, W - 1 - m)

    def lam(self) -> float:
        return float(self.cfg["lam"]) if self.cfg["classifier_memory"] else 1.0

    def head(self, l: int, h_cls: np.ndarray) -> np.ndarray:
        """Eq. (9) of exit l (1-based): ``(B, D)`` -> ``(B, C)``."""
        if self.cfg["head"] == "pooler":
            return eq.eq09_pooled_exit_logits(h_cls, *self.heads[l - 1])
        return eq.eq09_exit_logits(h_cls, *self.heads[l - 1])

    # ------------------------------------------------------------------ one layer (batched, padded)
    def _layer(self, l: int, h: np.ndarray, mask: np.ndarray, att_mem: np.ndarray | None, n_base: np.ndarray):
        """Layer l on a right-padded batch: returns (h^l, mask, A_m, PruneResult or None)."""
        c, bert = self.cfg, self.bert
        p = bert.layers[l - 1]
        z, probs = eq.eq01_attention_sublayer(h, p, bert.num_heads, bert.eps,
                                              eq.attention_mask_bias(mask, self.dtype))   # (B, T, D)
        res = None
        if c["token_exit"]:
            score = eq.eq05_class_attention if c["token_score"] == "class" else eq.all_token_attention
            att_mem = eq.eq06_attention_memory(att_mem, score(probs, mask), self.beta_at(l))   # (B, T-1)
            counts = self.prune_counts(l, n_base) if l in self.prune_layers() else None
            if counts is not None:
                res = eq.prune_tokens(z, mask, att_mem, c["r_ee"], r_ee_means=c["r_ee_means"],
                                      fusion=c["fusion"], fused_memory=c["fused_memory"], select=c["token_select"],
                                      n_base=counts[0], memory_alignment=c["memory_alignment"],
                                      fused_mean_count=counts[1])
                z, mask, att_mem = res.hidden, res.attention_mask, res.memory           # (B, T', D) ...
        return eq.eq01_ffn_sublayer(z, p, bert.eps, bert.approximate), mask, att_mem, res

    # ------------------------------------------------------------------ inference
    def infer_one(self, input_ids, token_type_ids=None, **overrides: Any) -> SampleResultNumpy:
        """One unpadded sample ``(T,)`` through MPEE inference; ``overrides`` change config fields for this call."""
        saved = self.cfg
        self.cfg = {**saved, **overrides}
        try:
            return self._infer_one(np.asarray(input_ids, dtype=np.int64),
                                   None if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64))
        finally:
            self.cfg = saved

    def _infer_one(self, ids: np.ndarray, tt: np.ndarray | None) -> SampleResultNumpy:
        c, L = self.cfg, self.bert.num_layers
        T = ids.shape[0]
        if c["pad_to"] is not None and T > c["pad_to"]:
            raise ValueError(f"an input has {T} tokens, more than pad_to={c['pad_to']}; truncate the inputs")
        tt = np.zeros_like(ids) if tt is None else tt
        h = self.bert.embed(ids[None], tt[None])                                       # (1, T, D)
        mask = np.ones((1, T), np.int64)
        n_base = np.array([T - 1])
        positions = list(range(T))                                                     # 0 = [CLS], -l fused at l
        att_mem, cls_mem, traces, n_fused = None, None, [], []
        for l in range(1, L + 1):
            n_att = int(mask.sum())
            h, mask, att_mem, res = self._layer(l, h, mask, att_mem, n_base)
            fused_pos, fused_w = (), ()
            if res is not None:
                old = positions[1:]
                fused_pos = tuple(old[i] for i in np.flatnonzero(res.fused[0]))
                fused_w = tuple(float(w) for w in res.alpha[0][res.fused[0]])
                positions = [0] + [old[s] if s >= 0 else -l for s in res.source_index[0] if s != -2]
            z_l = self.head(l, h[:, 0])                                                # (1, C)
            cls_mem = eq.eq10_classifier_memory(cls_mem, z_l, self.lam())              # (1, C)
            ent = float(eq.exit_entropy(cls_mem)[0])
            leave = l == L or (c["layer_exit"] and bool(eq.should_exit(np.array([ent]), c["threshold"])[0]))
            traces.append(LayerTraceNumpy(
                layer=l, n_att=n_att, n_ffn=int(mask.sum()), positions=tuple(positions),
                fused_positions=fused_pos, fused_weights=fused_w, entropy=ent, exited=leave,
                hidden=h[0], memory=cls_mem[0], logits=z_l[0], attention_memory=None if att_mem is None else att_mem[0]))
            n_fused.append(len(fused_pos) if c["fusion"] != "drop" else 0)
            if leave:
                break
        probs = eq.eq10_probabilities(cls_mem)[0]
        # authors: a sample that fails the test at layer L is predicted by the final classifier
        final_used = c["final_classifier"] and len(traces) == L and not (c["layer_exit"] and ent < c["threshold"])
        if final_used:
            probs = eq.softmax(self.final_logits(h[:, 0]), axis=-1)[0]
        D, Fi = self.bert.word.shape[1], self.bert.layers[0]["w_1"].shape[0]
        executed, full, _ = sample_flops([t.n_att for t in traces], [t.n_ffn for t in traces], n_fused, T, L,
                                         D, Fi, int(c["num_labels"]), c["head"], final_head=final_used)
        return SampleResultNumpy(prediction=int(np.argmax(probs)), probabilities=tuple(float(x) for x in probs),
                                 exit_layer=len(traces), layers=tuple(traces), flops_executed=executed,
                                 flops_full=full, final_classifier=final_used)

    def infer(self, input_ids, attention_mask=None, token_type_ids=None, **overrides: Any) -> list[SampleResultNumpy]:
        """A right-padded batch ``(B, T)``: each sample runs alone (exits and pruning are per sample)."""
        ids = np.asarray(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        out = []
        for b in range(ids.shape[0]):
            n = int(mask[b].sum())
            out.append(self.infer_one(ids[b, :n], tt[b, :n], **overrides))
        return out

    # ------------------------------------------------------------------ training loss (forward only)
    def loss(self, input_ids, attention_mask, token_type_ids, labels) -> LossNumpy:
        """All L layers for every sample (pruning active, no dropout), then Eqs. 11-14."""
        c, L = self.cfg, self.bert.num_layers
        ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
        tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        labels = np.asarray(labels, dtype=np.int64)
        n_base = mask.sum(axis=1) - 1
        if c["pad_to"] is not None and int(mask.sum(axis=1).max()) > c["pad_to"]:
            raise ValueError(f"an input has {int(mask.sum(axis=1).max())} tokens, more than pad_to={c['pad_to']}")
        h = self.bert.embed(ids, tt)                                                   # (B, T, D)
        att_mem, cls_mem, memories, logits, tokens = None, None, [], [], []
        for l in range(1, L + 1):
            h, mask, att_mem, _ = self._layer(l, h, mask, att_mem, n_base)
            logits.append(self.head(l, h[:, 0]))                                       # (B, C)
            cls_mem = eq.eq10_classifier_memory(cls_mem, logits[-1], self.lam())       # (B, C)
            memories.append(cls_mem)
            tokens.append(mask.sum(axis=1))
        mem = np.stack(memories)                                                       # (L, B, C)
        final = self.final_logits(h[:, 0]) if c["final_classifier"] else None          # (B, C)
        extra = dict(logits=np.stack(logits), tokens=np.stack(tokens), final_logits=final)
        loss_in = mem if final is None else np.concatenate([mem[:-1], final[None]])    # (L, B, C)
        ce = eq.eq11_cross_entropy(loss_in, labels)                                    # (L,)
        w = eq.ce_exit_weights(L, c["ce_weighting"])                                   # (L,)
        if not c["use_kd"]:
            return LossNumpy(float(eq.eq14_total_loss(ce, None, ce_weights=w)), ce, None, None, None, mem, **extra)
        t, eta = eq.eq12_teacher(loss_in, *self.teacher)                               # (B, C), (B, L)
        kd = eq.eq13_kd_loss(loss_in, t, float(c["tau"]), c["kd_direction"], c["kd_reduction"])   # (L,)
        gamma = c["gamma"]
        teacher_ce = None if gamma is None else eq.eq11_cross_entropy(t[None], labels)[0]
        total = eq.eq14_total_loss(ce, kd, gamma=gamma, teacher_ce=teacher_ce, ce_weights=w)
        return LossNumpy(float(total), ce, kd, t, eta, mem, **extra)

    # ------------------------------------------------------------------ padded batch, static-shape style
    def trace_batch(self, input_ids, attention_mask, token_type_ids=None) -> list[PaddedLayerNumpy]:
        """The right-padded batch through all L layers at once, each layer's exit test recorded (no sample
        leaves the batch): what a static-shape port computes. Exit layer of b = first l with ``exit[b]``."""
        c, L = self.cfg, self.bert.num_layers
        ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
        tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        n_base = mask.sum(axis=1) - 1                                                  # (B,)
        h = self.bert.embed(ids, tt)                                                   # (B, T, D)
        att_mem, cls_mem, out = None, None, []
        for l in range(1, L + 1):
            h, mask, att_mem, res = self._layer(l, h, mask, att_mem, n_base)           # (B, T_l, D) ...
            cls_mem = eq.eq10_classifier_memory(cls_mem, self.head(l, h[:, 0]), self.lam())   # (B, C)
            ent = eq.exit_entropy(cls_mem)                                             # (B,)
            leave = eq.should_exit(ent, c["threshold"]) if c["layer_exit"] else np.zeros(ent.shape, bool)
            out.append(PaddedLayerNumpy(l, mask, None if res is None else res.source_index, att_mem, h, cls_mem,
                                        ent, leave | (l == L)))
        return out
