r"""The MPEE model: the BERT encoder wired with token-wise (Eqs. 5-8) and layer-wise (Eqs. 9-10)
early exits, the training objective (Eqs. 11-14) and FLOPs accounting (Eq. 15).

This module only *wires* the pure equation functions of ``token_exit``, ``layer_exit``, ``losses``
and ``flops`` together. One layer l of MPEE, for every sample still running::

    Z~_l, P      = LN(h + MHSA(h))                    Eqs. 1-3  (attention sub-layer)
    A_class      = class attention of P               Eq. 5     (or all-token attention, Table 3)
    A_m          = (1-β) A_m + β A_class              Eq. 6     (every layer)
    if l prunes:   keep top-m of A_m, fuse the rest   Eqs. 7-8  (Z~_l shrinks)
    h^l          = LN(Z~_l + FFN(Z~_l))               Eqs. 1, 4
    C_z          = head_l(h^l_[CLS])                  Eq. 9
    C_zm         = (1-λ) C_zm + λ C_z                 Eq. 10
    exit if  entropy(softmax(C_zm)) < F  or l = L     (exit test, §3.2)

The authors' preset adds three switches (docs/INTERPRETATION.md M6): ``pad_to`` (Eq. 7's N over
padded slots), ``memory_alignment="truncate"`` (A_m left in the old order after Eq. 8) and
``final_classifier`` (a sample that fails the test at layer L is predicted by a separate final
classifier, which also replaces exit L in the loss).

Two entry points:

* :meth:`MPEEModel.forward` (training): every layer runs for every sample, token pruning active,
  the L classifier memories feed the loss. Per-sample token counts are kept with padding masks.
* :meth:`MPEEModel.infer` (inference): work is really skipped. Exited tokens are removed from the
  tensors (not masked), a sample that exits leaves the batch, and the padded width shrinks to the
  longest remaining sample. The result is one :class:`SampleResult` per input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..config import BertConfig
from ..encoder import BertEncoder
from ..encoder.equations import padding_bias
from ..flops import SampleFlops, eq15_speedup, sample_flops
from ..layer_exit import ExitHead, eq10_classifier_memory, eq10_probabilities, exit_entropy, should_exit
from ..layer_exit.equations import eq09_pooled_exit_logits
from ..losses import LossTerms, WeightedTeacher, mpee_loss
from ..token_exit import (all_token_attention, eq05_class_attention, eq06_attention_memory, eq07_num_kept,
                          padded_widths, prune_tokens)
from .config import PARAMETER_FIELDS, MPEEConfig

#: Position codes in traces: real tokens have their input position ([CLS] is 0); the EE-fusion token
#: created at layer l is -l (so a fusion token kept from an earlier layer stays distinguishable).
_PAD = -(2 ** 31)                        # internal code of a padding slot (never in a trace)


# ============================================================================ typed outputs
@dataclass(frozen=True)
class TrainOutput:
    """What :meth:`MPEEModel.forward` returns (all layers run).

    Attributes:
        logits: ``(L, B, C)`` exit-head outputs C_z^l (Eq. 9).
        memories: ``(L, B, C)`` classifier memories C_zm^l (Eq. 10); the loss and the exit test use these.
        tokens: ``(L, B)`` tokens entering each layer's FFN (after Eq. 8), per sample.
        loss: the loss terms (Eqs. 11-14) when labels were given.
        final_logits: ``(B, C)`` the final classifier's raw logits with ``final_classifier=True``
            (they replace ``memories[L-1]`` in the loss, as in the authors' code), else None.
    """

    logits: Tensor
    memories: Tensor
    tokens: Tensor
    loss: LossTerms | None = None
    final_logits: Tensor | None = None


@dataclass(frozen=True)
class LayerTrace:
    """One executed layer of one sample.

    Attributes:
        layer: 1-based layer number l.
        n_att: tokens entering MHSA ([CLS], real tokens, a fused token if any).
        n_ffn: tokens entering the FFN (after Eq. 8 on pruning layers; else n_att).
        positions: input positions of the tokens in h^l (0 = [CLS]; -k = the EE-fusion token made at
            layer k).
        fused_positions: position codes of the tokens fused into this layer's new fusion token (a
            negative code: an earlier fusion token fused again); with ``fusion="drop"`` the dropped
            tokens. Empty where the layer does not prune.
        fused_weights: α_i of those tokens (Eq. 8), same order.
        entropy: entropy (nats) of softmax(C_zm^l), the quantity compared with F.
        exited: whether the sample left the model after this layer.
    """

    layer: int
    n_att: int
    n_ffn: int
    positions: tuple[int, ...]
    fused_positions: tuple[int, ...]
    fused_weights: tuple[float, ...]
    entropy: float
    exited: bool


@dataclass(frozen=True)
class SampleResult:
    """The MPEE inference record of one input.

    Attributes:
        prediction: argmax of softmax(C_zm) at the exit layer.
        probabilities: softmax(C_zm) at the exit layer (Eq. 10's ŷ), length C.
        exit_layer: 1-based layer after which the sample exited.
        layers: one :class:`LayerTrace` per executed layer.
        flops: executed and full-model FLOPs of this input (Eq. 15).
        input_ids: the input's real token ids (padding removed); index with ``positions``.
    """

    prediction: int
    probabilities: tuple[float, ...]
    exit_layer: int
    layers: tuple[LayerTrace, ...]
    flops: SampleFlops
    input_ids: tuple[int, ...]

    @property
    def entropies(self) -> tuple[float, ...]:
        return tuple(t.entropy for t in self.layers)

    @property
    def tokens_per_layer(self) -> tuple[int, ...]:
        """Tokens entering each executed layer's FFN."""
        return tuple(t.n_ffn for t in self.layers)


@dataclass(frozen=True)
class InferenceOutput:
    """All samples of one :meth:`MPEEModel.infer` call, in input order."""

    samples: tuple[SampleResult, ...]

    @property
    def predictions(self) -> Tensor:
        return torch.tensor([s.prediction for s in self.samples], dtype=torch.long)       # (B,)

    @property
    def exit_layers(self) -> Tensor:
        return torch.tensor([s.exit_layer for s in self.samples], dtype=torch.long)       # (B,)

    @property
    def rho(self) -> float:
        """Eq. 15 speed-up over these samples: Σ full FLOPs / Σ executed FLOPs."""
        return eq15_speedup([s.flops.full for s in self.samples], [s.flops.executed for s in self.samples])


# ============================================================================ the model
class MPEEModel(nn.Module):
    """BERT + MPEE. Parameters: ``bert.*`` (HF BertModel names), ``exits.{l-1}.*`` (Eq. 9 heads),
    ``teacher.*`` (Eq. 12)."""

    def __init__(self, bert_config: BertConfig, mpee_config: MPEEConfig):
        super().__init__()
        self.bert_config = bert_config
        self.mpee_config = mpee_config
        mpee_config.prune_layer_set(bert_config.num_hidden_layers)      # validates prune_layers early
        self.bert = BertEncoder(bert_config)
        self.exits = nn.ModuleList(
            ExitHead(bert_config.hidden_size, mpee_config.num_labels, mpee_config.head,
                     mpee_config.classifier_dropout, norm=mpee_config.head_norm)
            for _ in range(bert_config.num_hidden_layers))
        self.teacher = WeightedTeacher(mpee_config.num_labels)
        if mpee_config.final_classifier:   # authors: BertForSequenceClassification's head on bert.pooler
            self.classifier = nn.Linear(bert_config.hidden_size, mpee_config.num_labels)
            nn.init.normal_(self.classifier.weight, mean=0.0, std=0.02)
            nn.init.zeros_(self.classifier.bias)
        self.tokenizer: Any = None                                      # set by load_mpee

    def init_heads_from_pooler(self) -> None:
        """Copy the backbone's pretrained pooler into every pooler head (as the authors do), when
        ``head_init="pooler"``; warn when that pooler looks untrained (all-zero bias)."""
        if self.mpee_config.head != "pooler" or self.mpee_config.head_init != "pooler":
            return
        pooler = self.bert.pooler.dense
        if not bool(pooler.bias.any()):
            hint = "" if self.mpee_config.head_norm else "; see the exit-head recipe (MPEEConfig.recipe, docs L10)"
            warnings.warn("the backbone's pooler looks untrained (its bias is all zero, weight std "
                          f"{float(pooler.weight.std()):.3g}): copying it into the exit heads gives them no "
                          f"head start (head_init='fresh' skips the copy){hint}", stacklevel=2)
        for head in self.exits:
            head.init_from_pooler(pooler.weight, pooler.bias)

    def fold_head_norms(self) -> "MPEEModel":
        """Fold each exit head's standardisation (``head_norm``, docs L10) into its first weight, in
        place, and set ``head_norm=False``: eval-mode outputs are unchanged and every head is Eq. (9)."""
        if self.mpee_config.head_norm:
            self.exits = nn.ModuleList(head.folded() for head in self.exits)
            self.mpee_config = replace(self.mpee_config, head_norm=False)
        return self

    def _refuse_parameter_changes(self, values: dict[str, Any]) -> None:
        """``values`` may not change a field fixed by the trained parameters (``PARAMETER_FIELDS``)."""
        for key in PARAMETER_FIELDS:
            if key in values and values[key] != getattr(self.mpee_config, key):
                raise ValueError(f"{key} is fixed by the trained parameters ({getattr(self.mpee_config, key)!r}); "
                                 f"it cannot be changed to {values[key]!r} for one call")

    # ------------------------------------------------------------------ shared per-layer pieces
    @staticmethod
    def _token_scores(cfg: MPEEConfig, probs: Tensor, mask: Tensor) -> Tensor:
        """Eq. 5 (or Table 3's all-token attention): (B, H, T, T) -> (B, T-1)."""
        if cfg.token_score == "class":
            return eq05_class_attention(probs, mask)
        return all_token_attention(probs, mask)

    def _attention_step(self, l: int, cfg: MPEEConfig, h: Tensor, mask: Tensor, att_mem: Tensor | None,
                        n_base: Tensor, prune_at: tuple[int, ...]):
        """Layer l's attention sub-layer, Eq. 5-6 memory update and, on pruning layers, Eqs. 7-8.

        Returns (z_tilde (B, T', D), mask (B, T'), att_mem (B, T'-1) or None, PruneResult or None).
        """
        layer = self.bert.layers[l - 1]
        z, probs = layer.attention_sublayer(h, padding_bias(mask, h.dtype))                                 # (B, T, D), (B, H, T, T)
        if not cfg.token_exit:
            return z, mask, None, None
        a = self._token_scores(cfg, probs, mask)                                          # (B, T-1)
        att_mem = eq06_attention_memory(att_mem, a, cfg.beta_at(l))                  # (B, T-1)
        if l not in prune_at:
            return z, mask, att_mem, None
        counts = self._prune_counts(cfg, l, n_base)
        if counts is None:                       # the padded slots prune nothing here (m >= W_l - 1)
            return z, mask, att_mem, None
        n_base_l, mean_count = counts
        res = prune_tokens(z, mask, att_mem, cfg.r_ee, r_ee_means=cfg.r_ee_means, fusion=cfg.fusion,
                           fused_memory=cfg.fused_memory, select=cfg.token_select, n_base=n_base_l,
                           memory_alignment=cfg.memory_alignment, fused_mean_count=mean_count)
        return res.hidden, res.attention_mask, res.memory, res                      # (B, T', D) ...

    def _prune_counts(self, cfg: MPEEConfig, l: int, n_base: Tensor) -> tuple[Tensor | None, Tensor | None] | None:
        """Eq. 7's N at pruning layer l: (n_base for prune_tokens, count the fused "mean" divides by).

        Real lengths (``pad_to=None``): the current N, or the original length with
        ``ratio_base="original"``. Padding regime (``pad_to``, the authors): N = W_l - 1 over the
        padded slots of :func:`padded_widths`, and the fused memory is a mean over the W_l - 1 - m
        slots that exit there; None when those slots prune nothing.
        """
        if cfg.pad_to is None:
            return (n_base if cfg.ratio_base == "original" else None), None
        L = self.bert_config.num_hidden_layers
        W = padded_widths(cfg.pad_to, cfg.prune_layer_set(L), L, cfg.r_ee, cfg.r_ee_means,
                          fused=cfg.fusion != "drop")[l - 1]
        m = int(eq07_num_kept(torch.tensor([W - 1], device="cpu"), cfg.r_ee, cfg.r_ee_means)[0])
        if m >= W - 1:
            return None
        full = torch.full_like(n_base, W - 1)                                       # (B,)
        return full, torch.full_like(n_base, W - 1 - m)

    def _final_logits(self, h: Tensor) -> Tensor:
        """The authors' final classifier: Linear(Dropout(tanh(bert.pooler(h[:, 0])))), raw logits (B, C)."""
        return eq09_pooled_exit_logits(h[:, 0], self.bert.pooler.dense.weight, self.bert.pooler.dense.bias,
                                       self.classifier.weight, self.classifier.bias,
                                       dropout_p=self.mpee_config.classifier_dropout, training=self.training)

    @staticmethod
    def _check_pad_to(cfg: MPEEConfig, mask: Tensor) -> None:
        if cfg.pad_to is not None and int(mask.sum(1).max()) > cfg.pad_to:
            raise ValueError(f"an input has {int(mask.sum(1).max())} tokens, more than pad_to={cfg.pad_to} "
                             f"(the padding regime counts Eq. 7 over pad_to slots); truncate the inputs")

    def _check(self, input_ids: Tensor, attention_mask: Tensor | None,
               token_type_ids: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        input_ids, attention_mask, token_type_ids = self.bert.check_inputs(input_ids, attention_mask,
                                                                           token_type_ids)
        lengths = attention_mask.sum(1)                                              # (B,)
        T = input_ids.shape[1]
        packed = torch.arange(T, device=input_ids.device)[None, :] < lengths[:, None]
        if not bool((packed == attention_mask.bool()).all()):
            raise ValueError("attention_mask must be right-padded (1...1 0...0 per row): MPEE removes "
                             "tokens and assumes real tokens come first")
        return input_ids, attention_mask, token_type_ids

    # ------------------------------------------------------------------ training forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None, *,
                config: MPEEConfig | None = None) -> TrainOutput:
        """All L layers for every sample, token pruning active; Eqs. 11-14 when ``labels`` is given.

        ``config`` replaces :attr:`mpee_config` for this call (e.g. ``token_exit=False`` for the
        per-layer diagnostic); ``num_labels``, ``head``, ``head_norm`` and ``final_classifier`` must match
        the trained heads."""
        cfg, L = config or self.mpee_config, self.bert_config.num_hidden_layers
        self._refuse_parameter_changes({k: getattr(cfg, k) for k in PARAMETER_FIELDS})
        input_ids, mask, token_type_ids = self._check(input_ids, attention_mask, token_type_ids)
        self._check_pad_to(cfg, mask)
        prune_at = cfg.prune_layer_set(L)
        n_base = mask.sum(1) - 1                                                     # (B,) non-CLS tokens
        h = self.bert.embeddings(input_ids, token_type_ids)                          # (B, T, D)
        att_mem, cls_mem = None, None
        logits, memories, tokens = [], [], []
        for l in range(1, L + 1):
            z, mask, att_mem, _ = self._attention_step(l, cfg, h, mask, att_mem, n_base, prune_at)
            h = self.bert.layers[l - 1].ffn_sublayer(z)                              # (B, T', D)
            z_l = self.exits[l - 1](h[:, 0])                                         # (B, C)   Eq. 9
            cls_mem = eq10_classifier_memory(cls_mem, z_l, cfg.effective_lam)        # (B, C)   Eq. 10
            logits.append(z_l)
            memories.append(cls_mem)
            tokens.append(mask.sum(1))
        memories_t = torch.stack(memories)                                           # (L, B, C)
        final = self._final_logits(h) if cfg.final_classifier else None              # (B, C)
        # authors: the final classifier's raw logits take exit L's place in the loss (head L gets no gradient)
        loss_in = memories_t if final is None else torch.cat([memories_t[:-1], final[None]])   # (L, B, C)
        loss = None
        if labels is not None:
            if labels.shape != (input_ids.shape[0],):
                raise ValueError(f"labels must have shape (B,) = ({input_ids.shape[0]},), got {tuple(labels.shape)}")
            if int(labels.min()) < 0 or int(labels.max()) >= cfg.num_labels:
                raise ValueError(f"labels must be in [0, {cfg.num_labels}), got min {int(labels.min())}, "
                                 f"max {int(labels.max())}")
            loss = mpee_loss(loss_in, labels, self.teacher if cfg.use_kd else None, tau=cfg.tau,
                             use_kd=cfg.use_kd, kd_direction=cfg.kd_direction,
                             kd_reduction=cfg.kd_reduction, detach_teacher_inputs=cfg.detach_teacher_inputs,
                             detach_teacher_in_kd=cfg.detach_teacher_in_kd, gamma=cfg.gamma)
        return TrainOutput(logits=torch.stack(logits), memories=memories_t, tokens=torch.stack(tokens),
                           loss=loss, final_logits=final)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def infer(self, inputs: Any, *, threshold: float | None = None, r_ee: float | None = None,
              **overrides: Any) -> InferenceOutput:
        """MPEE inference with real early exits.

        Args:
            inputs: an encoded batch (an object with ``input_ids``, ``attention_mask``,
                ``token_type_ids`` tensors, e.g. the tokenizer's output), a dict of those, a text, a
                list of texts, or a list of (text_a, text_b) pairs (texts need ``self.tokenizer``).
            threshold: F for this call (default: the config's).
            r_ee: R_ee for this call (default: the config's).
            overrides: any other :class:`MPEEConfig` field for this call (e.g. ``layer_exit=False``).
        Returns:
            One :class:`SampleResult` per input, in input order.
        """
        if threshold is not None:
            overrides["threshold"] = threshold
        if r_ee is not None:
            overrides["r_ee"] = r_ee
        self._refuse_parameter_changes(overrides)
        cfg = replace(self.mpee_config, **overrides) if overrides else self.mpee_config
        input_ids, attention_mask, token_type_ids = self._encode(inputs)
        if self.training:
            raise ValueError("infer() needs eval mode: call model.eval() first")
        return self._infer(cfg, *self._check(input_ids, attention_mask, token_type_ids))

    def _encode(self, inputs: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if isinstance(inputs, dict):
            return inputs["input_ids"], inputs.get("attention_mask"), inputs.get("token_type_ids")
        if hasattr(inputs, "input_ids"):
            return inputs.input_ids, getattr(inputs, "attention_mask", None), getattr(inputs, "token_type_ids", None)
        if isinstance(inputs, Tensor):
            return inputs, None, None
        if self.tokenizer is None:
            raise ValueError("infer() got text but the model has no tokenizer; load it with "
                             "mpee_ref.load_mpee(folder) or pass an encoded batch")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise ValueError(f"infer() expects text(s), pairs or an encoded batch, got {type(inputs).__name__}")
        if all(isinstance(x, (tuple, list)) and len(x) == 2 for x in inputs):
            texts, pairs = [a for a, _ in inputs], [b for _, b in inputs]
        elif all(isinstance(x, str) for x in inputs):
            texts, pairs = list(inputs), None
        else:
            raise ValueError("infer() expects all inputs to be texts, or all to be (text_a, text_b) pairs")
        enc = self.tokenizer(texts, pairs=pairs)
        self._warn_if_truncated(texts, pairs, enc.attention_mask.sum(1))
        return enc.input_ids, enc.attention_mask, enc.token_type_ids

    def _warn_if_truncated(self, texts: list[str], pairs: list[str] | None, lengths: Tensor) -> None:
        """Warn when the tokenizer cut an input at its ``max_length`` (re-encoding only the rows at the limit)."""
        limit = self.tokenizer.max_length
        full = [i for i, n in enumerate(lengths.tolist()) if n == limit]
        if not full:
            return
        longer = self.tokenizer([texts[i] for i in full], pairs=None if pairs is None else [pairs[i] for i in full],
                                max_length=self.tokenizer.model_max_length).attention_mask.sum(1)
        cut = [i for i, n in zip(full, longer.tolist()) if n > limit]
        if cut:
            warnings.warn(f"infer(): {len(cut)} of {len(texts)} inputs (indices {cut[:10]}) were truncated to the "
                          f"tokenizer's max_length {limit} tokens; set model.tokenizer.max_length (up to "
                          f"{self.tokenizer.model_max_length}) or pass an encoded batch", stacklevel=3)

    def _infer(self, cfg: MPEEConfig, input_ids: Tensor, mask: Tensor, token_type_ids: Tensor) -> InferenceOutput:
        L, bc = self.bert_config.num_hidden_layers, self.bert_config
        B = input_ids.shape[0]
        self._check_pad_to(cfg, mask)
        final_used = [False] * B
        prune_at = cfg.prune_layer_set(L)
        lengths = mask.sum(1)                                                        # (B,)
        n_base = lengths - 1                                                         # (B,)
        h = self.bert.embeddings(input_ids, token_type_ids)                          # (B, T, D)
        T = input_ids.shape[1]
        # pos[b, j]: position code of the token in slot j (0 = [CLS], -k = fused at layer k, _PAD = padding)
        pos = torch.where(mask.bool(), torch.arange(T, device=input_ids.device)[None, :].expand(B, T),
                          torch.full_like(input_ids, _PAD))
        active = torch.arange(B, device=input_ids.device)                            # (B_a,) original indices
        att_mem, cls_mem = None, None
        traces: list[list[LayerTrace]] = [[] for _ in range(B)]
        n_fused: list[list[int]] = [[] for _ in range(B)]
        done: dict[int, tuple[int, tuple[float, ...]]] = {}
        for l in range(1, L + 1):
            n_att = mask.sum(1).tolist()                                             # per active sample
            z, mask, att_mem, res = self._attention_step(l, cfg, h, mask, att_mem, n_base, prune_at)
            fused_pos: list[list[int]] = [[] for _ in active]
            fused_w: list[list[float]] = [[] for _ in active]
            if res is not None:
                old = pos[:, 1:]                                                     # (B_a, T-1)
                src = res.source_index                                               # (B_a, T'-1)
                gathered = torch.gather(old, 1, src.clamp(min=0))
                code = torch.where(src == -1, torch.full_like(src, -l), torch.full_like(src, _PAD))
                pos = torch.cat([pos[:, :1], torch.where(src >= 0, gathered, code)], dim=1)  # (B_a, T')
                for i in range(len(active)):
                    sel = res.fused[i]
                    fused_pos[i] = old[i][sel].tolist()
                    fused_w[i] = res.alpha[i][sel].tolist()
            h = self.bert.layers[l - 1].ffn_sublayer(z)                              # (B_a, T', D)
            z_l = self.exits[l - 1](h[:, 0])                                         # (B_a, C)   Eq. 9
            cls_mem = eq10_classifier_memory(cls_mem, z_l, cfg.effective_lam)        # (B_a, C)   Eq. 10
            ent = exit_entropy(cls_mem)                                              # (B_a,)
            if l == L:
                leave = torch.ones_like(ent, dtype=torch.bool)                       # the last layer always exits
            elif cfg.layer_exit:
                leave = should_exit(ent, cfg.threshold)                              # (B_a,)
            else:
                leave = torch.zeros_like(ent, dtype=torch.bool)
            n_ffn = mask.sum(1).tolist()
            probs = eq10_probabilities(cls_mem)                                      # (B_a, C)
            if l == L and cfg.final_classifier:
                # authors: head L's memory passed the test -> it predicts; otherwise the final classifier
                passed = should_exit(ent, cfg.threshold) if cfg.layer_exit else torch.zeros_like(leave)  # (B_a,)
                probs = torch.where(passed[:, None], probs, torch.softmax(self._final_logits(h), dim=-1))
                for i, b in enumerate(active.tolist()):
                    final_used[b] = not bool(passed[i])
            ent_l, leave_l = ent.tolist(), leave.tolist()
            for i, b in enumerate(active.tolist()):
                traces[b].append(LayerTrace(
                    layer=l, n_att=int(n_att[i]), n_ffn=int(n_ffn[i]),
                    positions=tuple(p for p in pos[i].tolist() if p != _PAD),
                    fused_positions=tuple(fused_pos[i]), fused_weights=tuple(fused_w[i]),
                    entropy=float(ent_l[i]), exited=bool(leave_l[i])))
                n_fused[b].append(len(fused_pos[i]) if cfg.fusion != "drop" else 0)
                if leave_l[i]:
                    done[b] = (l, tuple(probs[i].tolist()))
            if bool(leave.all()):
                break
            # samples that exited leave the batch; the padded width shrinks to the longest remaining one
            stay = ~leave
            active, h, mask, pos, cls_mem = active[stay], h[stay], mask[stay], pos[stay], cls_mem[stay]
            n_base = n_base[stay]
            if att_mem is not None:
                att_mem = att_mem[stay]
            width = int(mask.sum(1).max())
            h, mask, pos = h[:, :width], mask[:, :width], pos[:, :width]
            if att_mem is not None:
                att_mem = att_mem[:, :width - 1]

        samples = []
        for b in range(B):
            exit_layer, p = done[b]
            tr = traces[b]
            fl = sample_flops([t.n_att for t in tr], [t.n_ffn for t in tr], n_fused[b], int(lengths[b]), L,
                              bc.hidden_size, bc.intermediate_size, cfg.num_labels, cfg.head,
                              final_head=final_used[b])
            samples.append(SampleResult(
                prediction=max(range(len(p)), key=lambda c: (p[c], -c)), probabilities=p,
                exit_layer=exit_layer, layers=tuple(tr), flops=fl,
                input_ids=tuple(input_ids[b, : int(lengths[b])].tolist())))
        return InferenceOutput(samples=tuple(samples))
