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
  longest remaining sample. The result is one :class:`SampleResult` per input; which tokens each
  layer kept and fused is recorded only with ``trace=True`` (position codes: :func:`is_fused`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..config import BertConfig
from ..encoder import BertEncoder
from ..encoder.equations import padding_bias
from ..flops import SampleFlops, eq15_speedup, sample_flops
from ..layer_exit import ExitHead, eq10_classifier_memory, eq10_probabilities, exit_entropy, should_exit
from ..layer_exit.equations import eq09_pooled_exit_logits
from ..losses import LossTerms, WeightedTeacher, mpee_loss
from ..token_exit import (PruneResult, all_token_attention, eq05_class_attention, eq06_attention_memory,
                          eq07_num_kept, padded_widths, prune_tokens)
from ..token_exit.equations import SOURCE_FUSED
from .config import PARAMETER_FIELDS, MPEEConfig

# ============================================================================ position codes
#: One scheme for every token's identity in a trace (:class:`LayerTrace`, Fig. 5, the demo): a real token
#: carries its input position (>= 0, [CLS] is 0); the EE-fusion token made at layer l carries
#: ``fused_code(l) = -l`` (so a fusion token kept from an earlier layer stays distinguishable);
#: ``PAD_CODE`` marks a padding slot inside the model and never appears in a trace.
PAD_CODE = -(2 ** 31)


def fused_code(layer: int) -> int:
    """The position code of the EE-fusion token made at 1-based ``layer``."""
    return -layer


def is_fused(code: int) -> bool:
    """Whether a trace position code is an EE-fusion token (not an input token)."""
    return PAD_CODE < code < 0


def fused_layer(code: int) -> int:
    """The layer that made the EE-fusion token with this position code."""
    return -code


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

    @property
    def loss_inputs(self) -> Tensor:
        """``(L, B, C)``: the logits Eqs. (11)-(13) train (:func:`loss_inputs`)."""
        return loss_inputs(self.memories, self.final_logits)


def loss_inputs(memories: Tensor, final_logits: Tensor | None) -> Tensor:
    """``(L, B, C)``: the memories ``(L, B, C)``, with the final classifier's logits ``(B, C)`` in exit L's
    place when there is one (the authors' code: head L then gets no gradient)."""
    return memories if final_logits is None else torch.cat([memories[:-1], final_logits[None]])


@dataclass(frozen=True)
class LayerTrace:
    """One executed layer of one sample.

    The counts, the entropy and the decision are always there; which tokens were kept and fused only
    with ``infer(..., trace=True)`` (None otherwise), so that evaluation does not pay for them.

    Attributes:
        layer: 1-based layer number l.
        n_att: tokens entering MHSA ([CLS], real tokens, a fused token if any).
        n_ffn: tokens entering the FFN (after Eq. 8 on pruning layers; else n_att).
        entropy: entropy (nats) of softmax(C_zm^l), the quantity compared with F.
        exited: whether the sample left the model after this layer.
        positions: position codes of the tokens in h^l (see :func:`is_fused`).
        fused_positions: position codes of the tokens fused into this layer's new fusion token (an
            earlier fusion token can be fused again); with ``fusion="drop"`` the dropped tokens.
            Empty where the layer does not prune.
        fused_weights: α_i of those tokens (Eq. 8), same order.
    """

    layer: int
    n_att: int
    n_ffn: int
    entropy: float
    exited: bool
    positions: tuple[int, ...] | None = None
    fused_positions: tuple[int, ...] | None = None
    fused_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SampleResult:
    """The MPEE inference record of one input.

    Attributes:
        prediction: argmax of softmax(C_zm) at the exit layer.
        probabilities: softmax(C_zm) at the exit layer (Eq. 10's ŷ), length C.
        exit_layer: 1-based layer after which the sample exited.
        layers: one :class:`LayerTrace` per executed layer (token detail only with ``trace=True``).
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


# ============================================================================ inference state
@dataclass(frozen=True)
class AttentionStep:
    """What layer l's attention half returns (:meth:`MPEEModel._attention_step`).

    Attributes:
        z_tilde: ``(B, T', D)`` Z̃_l, the MHSA sub-layer output, after Eq. 8 on a pruning layer.
        mask: ``(B, T')`` 1 real / 0 padding, for ``z_tilde``.
        a_m: ``(B, T'-1)`` the attention memory A_m^l (Eq. 6), aligned with ``z_tilde[:, 1:]``;
            None where no layer prunes (token exit off, or R_ee keeps every token).
        pruned: Eqs. 7-8's :class:`~mpee_ref.token_exit.PruneResult` where tokens were pruned, else None.
    """

    z_tilde: Tensor
    mask: Tensor
    a_m: Tensor | None
    pruned: PruneResult | None


@dataclass(frozen=True)
class _ActiveBatch:
    """The samples still running during :meth:`MPEEModel.infer` (B_a of the B inputs).

    Attributes:
        index: ``(B_a,)`` each row's input index.
        h: ``(B_a, T, D)`` the hidden states entering the next layer, right-padded.
        mask: ``(B_a, T)`` 1 real / 0 padding.
        lengths: ``(B_a,)`` real tokens per row (``mask.sum(1)``).
        n_base: ``(B_a,)`` non-CLS input length (Eq. 7's N with ``ratio_base="original"``).
        a_m: ``(B_a, T-1)`` attention memory A_m (Eq. 6) or None.
        c_zm: ``(B_a, C)`` classifier memory C_zm (Eq. 10) or None before layer 1.
        positions: ``(B_a, T)`` position codes (``PAD_CODE`` at padding); only with ``trace=True``.
    """

    index: Tensor
    h: Tensor
    mask: Tensor
    lengths: Tensor
    n_base: Tensor
    a_m: Tensor | None = None
    c_zm: Tensor | None = None
    positions: Tensor | None = None

    def keep(self, rows: Tensor) -> "_ActiveBatch":
        """Only the rows where ``rows`` ``(B_a,)`` is True (the others exited), trimmed."""
        pick = {f.name: getattr(self, f.name) for f in fields(self)}
        return _ActiveBatch(**{k: None if v is None else v[rows] for k, v in pick.items()}).trim()

    def trim(self) -> "_ActiveBatch":
        """The padded width cut to the longest remaining row."""
        w = int(self.lengths.max())
        return replace(self, h=self.h[:, :w], mask=self.mask[:, :w],
                       a_m=None if self.a_m is None else self.a_m[:, :w - 1],
                       positions=None if self.positions is None else self.positions[:, :w])


class _LayerRow(NamedTuple):
    """One layer of :class:`_LayerLog`: the rows ``index`` ``(B_a,)`` that ran layer ``l``."""

    l: int
    index: Tensor                # (B_a,) input indices
    n_att: Tensor                # (B_a,) tokens at MHSA
    n_ffn: Tensor                # (B_a,) tokens at the FFN
    n_fused: Tensor | None       # (B_a,) tokens fused (Eq. 8); None: none
    c_zm: Tensor                 # (B_a, C) C_zm^l


class _ExitRow(NamedTuple):
    """One exit event of :class:`_LayerLog`: the rows ``index`` ``(n,)`` leave after layer ``l``."""

    l: int
    index: Tensor                # (n,) input indices
    probabilities: Tensor        # (n, C) softmax(C_zm^l), or the final classifier's
    final_used: Tensor | None    # (n,) predicted by the final classifier; None: no final classifier


class _LayerLog:
    """What :meth:`MPEEModel.infer` reports, gathered layer by layer as tensors and read back once at the
    end: the counts and classifier memories of the rows that ran each layer (the entropies of all layers
    in one call), the exits (layer, softmax(C_zm), final classifier used) and, with ``trace=True``, which
    tokens each layer kept."""

    def __init__(self, trace: bool):
        self.rows: list[_LayerRow] = []
        self.exits: list[_ExitRow] = []
        self.tokens: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]] | None = \
            {} if trace else None                                        # (input, layer) -> token detail

    def layer(self, l: int, index: Tensor, n_att: Tensor, n_ffn: Tensor, n_fused: Tensor | None,
              c_zm: Tensor) -> None:
        """Layer l ran for the rows ``index`` (see :class:`_LayerRow`)."""
        self.rows.append(_LayerRow(l, index, n_att, n_ffn, n_fused, c_zm))

    def exit(self, l: int, index: Tensor, probabilities: Tensor, final_used: Tensor | None = None) -> None:
        """The rows ``index`` leave after layer l (see :class:`_ExitRow`)."""
        self.exits.append(_ExitRow(l, index, probabilities, final_used))

    def trace(self, l: int, index: Tensor, before: Tensor, after: Tensor, pruned: PruneResult | None) -> None:
        """Token detail of layer l (``trace=True``): the codes in h^l, the codes fused (or dropped), their α.
        ``before`` ``(B_a, T)`` / ``after`` ``(B_a, T')`` are the position codes around Eq. 8."""
        for i, b in enumerate(index.tolist()):
            kept = tuple(p for p in after[i].tolist() if p != PAD_CODE)
            fused: tuple[int, ...] = ()
            alpha: tuple[float, ...] = ()
            if pruned is not None:
                sel = pruned.fused[i]                                                    # (N,) bool
                fused, alpha = tuple(before[i, 1:][sel].tolist()), tuple(pruned.alpha[i][sel].tolist())
            self.tokens[(b, l)] = (kept, fused, alpha)

    def token_detail(self, b: int, l: int) -> dict[str, tuple]:
        """The :class:`LayerTrace` token fields of input b at layer l ({} without ``trace``)."""
        if self.tokens is None:
            return {}
        kept, fused, alpha = self.tokens[(b, l)]
        return {"positions": kept, "fused_positions": fused, "fused_weights": alpha}

    def per_input(self) -> list[list[tuple[int, int, int, int, float]]]:
        """Per input, its executed layers as (layer, n_att, n_ffn, n_fused, entropy), in layer order."""
        rows = self.rows
        layers = [r.l for r in rows for _ in range(r.index.shape[0])]
        index, n_att, n_ffn = torch.stack([torch.cat([getattr(r, k) for r in rows])
                                           for k in ("index", "n_att", "n_ffn")]).tolist()
        fused = [r.n_fused for r in rows if r.n_fused is not None]
        fused_counts = iter(torch.cat(fused).tolist() if fused else ())
        n_fused = [0 if r.n_fused is None else next(fused_counts) for r in rows for _ in range(r.index.shape[0])]
        entropy = exit_entropy(torch.cat([r.c_zm for r in rows])).tolist()              # one call for all layers
        out: list[list[tuple[int, int, int, int, float]]] = [[] for _ in range(1 + max(index))]
        for b, *row in zip(index, layers, n_att, n_ffn, n_fused, entropy):
            out[b].append(tuple(row))
        return out

    def exit_of_input(self) -> list[tuple[int, tuple[float, ...], bool]]:
        """Per input: (exit layer, its probabilities, whether the final classifier predicted it)."""
        exits = self.exits
        layers = [e.l for e in exits for _ in range(e.index.shape[0])]
        index = torch.cat([e.index for e in exits]).tolist()
        probabilities = torch.cat([e.probabilities for e in exits]).tolist()
        final = [e.final_used for e in exits if e.final_used is not None]
        final_used = iter(torch.cat(final).tolist() if final else ())
        used = [e.final_used is not None and next(final_used) for e in exits for _ in range(e.index.shape[0])]
        out: list[tuple[int, tuple[float, ...], bool]] = [(0, (), False)] * len(index)
        for b, l, p, f in zip(index, layers, probabilities, used):
            out[b] = (l, tuple(p), f)
        return out


def _input_positions(mask: Tensor) -> Tensor:
    """``(B, T)`` position codes of the input: 0..T-1 at real tokens, ``PAD_CODE`` at padding."""
    slots = torch.arange(mask.shape[1], device=mask.device)[None, :].expand_as(mask)   # (B, T)
    return torch.where(mask.bool(), slots, torch.full_like(slots, PAD_CODE))


def _carry_positions(positions: Tensor, source_index: Tensor, l: int) -> Tensor:
    """Position codes after Eq. 8 at layer l: a kept token keeps its code, the new fusion token gets
    ``fused_code(l)``, padding ``PAD_CODE``. ``(B, T)``, ``(B, T'-1)`` -> ``(B, T')``."""
    moved = positions[:, 1:].gather(1, source_index.clamp(min=0))                        # (B, T'-1)
    new = torch.where(source_index == SOURCE_FUSED, torch.full_like(moved, fused_code(l)),
                      torch.full_like(moved, PAD_CODE))                                  # (B, T'-1)
    return torch.cat([positions[:, :1], torch.where(source_index >= 0, moved, new)], dim=1)


def encoded_batch(inputs: Any) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
    """(input_ids, attention_mask, token_type_ids) of an encoded batch: a dict, an object with
    ``input_ids`` (a tokenizer's output) or a bare ``(B, T)`` id tensor; None for anything else (text)."""
    if isinstance(inputs, dict):
        return inputs["input_ids"], inputs.get("attention_mask"), inputs.get("token_type_ids")
    if hasattr(inputs, "input_ids"):
        return inputs.input_ids, getattr(inputs, "attention_mask", None), getattr(inputs, "token_type_ids", None)
    if isinstance(inputs, Tensor):
        return inputs, None, None
    return None


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

    def configure(self, **overrides: Any) -> "MPEEModel":
        """Set :class:`MPEEConfig` fields for every later call (e.g. ``prune_layers=(3, 4, 5)``), where
        ``infer(..., **overrides)`` sets them for one call; fields fixed by the trained parameters
        (``PARAMETER_FIELDS``) are refused. Returns the model."""
        self._refuse_parameter_changes(overrides)
        self.mpee_config = replace(self.mpee_config, **overrides)
        return self

    def _refuse_parameter_changes(self, values: dict[str, Any]) -> None:
        """``values`` may not change a field fixed by the trained parameters (``PARAMETER_FIELDS``)."""
        for key in PARAMETER_FIELDS:
            if key in values and values[key] != getattr(self.mpee_config, key):
                raise ValueError(f"{key} is fixed by the trained parameters ({getattr(self.mpee_config, key)!r}); "
                                 f"it cannot be changed to {values[key]!r}")

    # ------------------------------------------------------------------ shared per-layer pieces
    @staticmethod
    def _token_scores(cfg: MPEEConfig, probs: Tensor, mask: Tensor) -> Tensor:
        """Eq. 5 (or Table 3's all-token attention): (B, H, T, T) -> (B, T-1)."""
        if cfg.token_score == "class":
            return eq05_class_attention(probs, mask)
        return all_token_attention(probs, mask)

    def _pruning_layers(self, cfg: MPEEConfig) -> tuple[int, ...]:
        """The layers where Eqs. 7-8 run: ``cfg.prune_layer_set``, or none where R_ee keeps every token
        (m = N) and nothing would be reordered either (``memory_alignment="gather"``): then Eq. 8 is the
        identity and is skipped."""
        keeps_all = float(cfg.r_ee) == (0.0 if cfg.r_ee_means == "exit" else 1.0)
        if keeps_all and cfg.memory_alignment == "gather":
            return ()
        return cfg.prune_layer_set(self.bert_config.num_hidden_layers)

    def _attention_step(self, l: int, cfg: MPEEConfig, h: Tensor, mask: Tensor, a_m: Tensor | None,
                        n_base: Tensor, prune_at: tuple[int, ...]) -> AttentionStep:
        """Layer l's attention sub-layer (Eqs. 1-3), the Eq. 5-6 memory update and, on pruning layers,
        Eqs. 7-8. ``h`` ``(B, T, D)``, ``mask`` ``(B, T)``, ``a_m`` ``(B, T-1)`` or None, ``n_base`` ``(B,)``."""
        layer = self.bert.layers[l - 1]
        bias = padding_bias(mask, h.dtype)                                              # None: nothing padded
        z_tilde, probs = layer.attention_sublayer(h, bias)                              # (B, T, D), (B, H, T, T)
        if not prune_at:                         # token exit off, or R_ee keeps every token: A_m is never read
            return AttentionStep(z_tilde, mask, None, None)
        a_class = self._token_scores(cfg, probs, None if bias is None else mask)         # (B, T-1)
        a_m = eq06_attention_memory(a_m, a_class, cfg.beta_at(l))                       # (B, T-1)
        counts = self._prune_counts(cfg, l, n_base) if l in prune_at else None
        if counts is None:                       # not a pruning layer, or the padded slots prune nothing
            return AttentionStep(z_tilde, mask, a_m, None)
        n_base_l, mean_count = counts
        res = prune_tokens(z_tilde, mask, a_m, cfg.r_ee, r_ee_means=cfg.r_ee_means, fusion=cfg.fusion,
                           fused_memory=cfg.fused_memory, select=cfg.token_select, n_base=n_base_l,
                           memory_alignment=cfg.memory_alignment, fused_mean_count=mean_count)
        return AttentionStep(res.hidden, res.attention_mask, res.memory, res)           # (B, T', D) ...

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
        # 0/1 values with a real first token (checked above): right-padded <=> no row ever goes 0 -> 1
        if not bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
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
        prune_at = self._pruning_layers(cfg)
        n_base = mask.sum(1) - 1                                                     # (B,) non-CLS tokens
        h = self.bert.embeddings(input_ids, token_type_ids)                          # (B, T, D)   h^0
        a_m, c_zm = None, None
        logits, memories, tokens = [], [], []
        for l in range(1, L + 1):
            step = self._attention_step(l, cfg, h, mask, a_m, n_base, prune_at)      # Eqs. 1-8
            mask, a_m = step.mask, step.a_m                                          # (B, T'), (B, T'-1)
            h = self.bert.layers[l - 1].ffn_sublayer(step.z_tilde)                   # (B, T', D)  h^l
            c_z = self.exits[l - 1](h[:, 0])                                         # (B, C)   Eq. 9
            c_zm = eq10_classifier_memory(c_zm, c_z, cfg.effective_lam)              # (B, C)   Eq. 10
            logits.append(c_z)
            memories.append(c_zm)
            tokens.append(mask.sum(1))
        memories_t = torch.stack(memories)                                           # (L, B, C)
        final = self._final_logits(h) if cfg.final_classifier else None              # (B, C)
        loss_in = loss_inputs(memories_t, final)                                     # (L, B, C)
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
                             detach_teacher_in_kd=cfg.detach_teacher_in_kd, gamma=cfg.gamma,
                             ce_weighting=cfg.ce_weighting)
        return TrainOutput(logits=torch.stack(logits), memories=memories_t, tokens=torch.stack(tokens),
                           loss=loss, final_logits=final)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def infer(self, inputs: Any, *, threshold: float | None = None, r_ee: float | None = None,
              trace: bool = False, **overrides: Any) -> InferenceOutput:
        """MPEE inference with real early exits.

        Args:
            inputs: an encoded batch (an object with ``input_ids``, ``attention_mask``,
                ``token_type_ids`` tensors, e.g. the tokenizer's output), a dict of those, a text, a
                list of texts, or a list of (text_a, text_b) pairs (texts need ``self.tokenizer``).
            threshold: F for this call (default: the config's).
            r_ee: R_ee for this call (default: the config's).
            trace: also record which tokens each layer kept and fused (``LayerTrace.positions``,
                ``fused_positions``, ``fused_weights``; the demo and Fig. 5 use them). Off by default:
                it costs Python work per sample and layer.
            overrides: any other :class:`MPEEConfig` field for this call (e.g. ``layer_exit=False``).
        Returns:
            One :class:`SampleResult` per input, in input order.
        """
        if threshold is not None:
            overrides["threshold"] = threshold
        if r_ee is not None:
            overrides["r_ee"] = r_ee
        cfg = self._call_config(overrides)
        input_ids, attention_mask, token_type_ids = self._encode(inputs)
        if self.training:
            raise ValueError("infer() needs eval mode: call model.eval() first")
        return self._infer(cfg, *self._check(input_ids, attention_mask, token_type_ids), trace=trace)

    def _call_config(self, overrides: dict[str, Any]) -> MPEEConfig:
        """:attr:`mpee_config` with one call's ``overrides`` (the last one is remembered: validating a
        config costs about as much as a small layer, and a benchmark or a sweep repeats the same call)."""
        if not overrides:
            return self.mpee_config
        key = (self.mpee_config, tuple(sorted(overrides.items())))
        cached = getattr(self, "_last_call_config", None)
        if cached is None or cached[0] != key:
            self._refuse_parameter_changes(overrides)
            cached = (key, replace(self.mpee_config, **overrides))
            self._last_call_config = cached
        return cached[1]

    def _encode(self, inputs: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        batch = encoded_batch(inputs)
        if batch is not None:
            return batch
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
        device = self.bert.embeddings.word_embeddings.weight.device                   # texts go to the model
        return enc.input_ids.to(device), enc.attention_mask.to(device), enc.token_type_ids.to(device)

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

    def _infer(self, cfg: MPEEConfig, input_ids: Tensor, mask: Tensor, token_type_ids: Tensor, *,
               trace: bool) -> InferenceOutput:
        """The per-layer algorithm of the module docstring with real exits: tokens that exit leave the
        tensors (Eq. 8), samples that exit leave the batch. One host read per layer: does anyone leave?"""
        self._check_pad_to(cfg, mask)
        B, L = input_ids.shape[0], self.bert_config.num_hidden_layers
        prune_at = self._pruning_layers(cfg)
        lengths = mask.sum(1)                                                        # (B,)
        state: _ActiveBatch | None = _ActiveBatch(
            index=torch.arange(B, device=input_ids.device), h=self.bert.embeddings(input_ids, token_type_ids),
            mask=mask, lengths=lengths, n_base=lengths - 1, positions=_input_positions(mask) if trace else None)
        log = _LayerLog(trace)
        for l in range(1, L + 1):
            state = self._exit_test(l, cfg, self._layer(l, cfg, state, prune_at, log), log)
            if state is None:
                break
        return self._results(cfg, log, input_ids, lengths)

    def _layer(self, l: int, cfg: MPEEConfig, state: _ActiveBatch, prune_at: tuple[int, ...],
               log: _LayerLog) -> _ActiveBatch:
        """Layer l for the active rows: Eqs. 1-8, 9, 10, logged. Returns the state after the layer."""
        step = self._attention_step(l, cfg, state.h, state.mask, state.a_m, state.n_base, prune_at)
        h = self.bert.layers[l - 1].ffn_sublayer(step.z_tilde)                       # (B_a, T', D)  h^l
        c_z = self.exits[l - 1](h[:, 0])                                             # (B_a, C)   Eq. 9
        c_zm = eq10_classifier_memory(state.c_zm, c_z, cfg.effective_lam)            # (B_a, C)   Eq. 10
        pruned, positions = step.pruned, state.positions
        lengths = state.lengths if pruned is None else step.mask.sum(1)              # (B_a,)
        n_fused = None if pruned is None or cfg.fusion == "drop" else pruned.fused.sum(1)   # (B_a,)
        log.layer(l, state.index, state.lengths, lengths, n_fused, c_zm)
        if positions is not None:                                                    # trace=True
            if pruned is not None:
                positions = _carry_positions(positions, pruned.source_index, l)      # (B_a, T')
            log.trace(l, state.index, state.positions, positions, pruned)
        return replace(state, h=h, mask=step.mask, lengths=lengths, a_m=step.a_m, c_zm=c_zm, positions=positions)

    def _exit_test(self, l: int, cfg: MPEEConfig, state: _ActiveBatch, log: _LayerLog) -> _ActiveBatch | None:
        """The exit test after layer l: the rows that leave are logged with softmax(C_zm^l) and dropped
        from the batch; None when no row is left (always after layer L). The test cannot fire with
        ``layer_exit=False`` or F <= 0 (an entropy is never negative): then it is skipped."""
        if l == self.bert_config.num_hidden_layers:                                  # the last layer always exits
            probs = eq10_probabilities(state.c_zm)                                   # (B_a, C)
            if not cfg.final_classifier:
                log.exit(l, state.index, probs)
                return None
            # authors: head L's memory passed the test -> it predicts; otherwise the final classifier
            passed = should_exit(exit_entropy(state.c_zm), cfg.threshold) if cfg.layer_exit else \
                torch.zeros_like(state.index, dtype=torch.bool)                      # (B_a,)
            final = torch.softmax(self._final_logits(state.h), dim=-1)               # (B_a, C)
            log.exit(l, state.index, torch.where(passed[:, None], probs, final), final_used=~passed)
            return None
        if not cfg.layer_exit or cfg.threshold <= 0:
            return state
        leave = should_exit(exit_entropy(state.c_zm), cfg.threshold)                 # (B_a,)
        n_leave = int(leave.sum())                                                   # the layer's one host read
        if n_leave == 0:
            return state
        log.exit(l, state.index[leave], eq10_probabilities(state.c_zm)[leave])
        return None if n_leave == leave.shape[0] else state.keep(~leave)

    def _results(self, cfg: MPEEConfig, log: _LayerLog, input_ids: Tensor, lengths: Tensor) -> InferenceOutput:
        """One :class:`SampleResult` per input from the log (read back from the device here, once)."""
        bc = self.bert_config
        ids, n = input_ids.tolist(), lengths.tolist()
        samples = []
        for b, (layers, (exit_layer, p, final_used)) in enumerate(zip(log.per_input(), log.exit_of_input())):
            traces = tuple(LayerTrace(layer=l, n_att=a, n_ffn=f, entropy=e, exited=l == exit_layer,
                                      **log.token_detail(b, l)) for l, a, f, _, e in layers)
            flops = sample_flops([r[1] for r in layers], [r[2] for r in layers], [r[3] for r in layers], n[b],
                                 bc.num_hidden_layers, bc.hidden_size, bc.intermediate_size, cfg.num_labels,
                                 cfg.head, final_head=final_used)
            samples.append(SampleResult(
                prediction=max(range(len(p)), key=lambda c: (p[c], -c)), probabilities=p,
                exit_layer=exit_layer, layers=traces, flops=flops, input_ids=tuple(ids[b][:n[b]])))
        return InferenceOutput(samples=tuple(samples))
