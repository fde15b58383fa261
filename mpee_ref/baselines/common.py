r"""What every baseline shares: typed outputs, FLOPs by Eq. (15), the backbone + heads module, and
the two loops (training forward over every layer, real-exit inference).

A baseline is the MPEE backbone (:class:`~mpee_ref.encoder.BertEncoder`, split after MHSA where
tokens can be removed) with classifiers (:class:`~mpee_ref.layer_exit.ExitHead`) after some layers
and one method-specific decision per layer::

    Z~_l, P   = layer_l.attention_sublayer(h)            Eqs. 1-3 of MPEE's encoder
    Z~_l      = eliminate(l, Z~_l, P)                    PoWER-BERT only (tokens really removed)
    h^l       = layer_l.ffn_sublayer(Z~_l)               Eqs. 1, 4
    z_l       = head_l(h^l[CLS])                         layers with a classifier
    leave     = rule(l, z_l, state)                      entropy (DeeBERT), uncertainty (FastBERT),
                                                         patience (PABEE); the last head always exits

FLOPs are counted with MPEE's Eq. (15) code (:func:`mpee_ref.flops.sample_flops`, real lengths):
the layers with ``count_heads=False``, plus one :func:`~mpee_ref.flops.head_flops` per classifier
actually evaluated; the baseline ("the original model") is the full backbone with one classifier,
:func:`~mpee_ref.flops.full_model_flops`, exactly as for MPEE.

Shapes: the legend of ``mpee_ref/encoder/equations.py`` (B batch, T tokens, D hidden, H heads,
L layers, C classes); K = number of classifiers of a method.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from ..config import BertConfig
from ..encoder import BertEncoder
from ..encoder.equations import padding_bias
from ..flops import SampleFlops, full_model_flops, head_flops, sample_flops
from ..layer_exit import HEAD_KINDS, ExitHead
from ..losses import eq11_cross_entropy
from ..losses.checks import check_labels
from ..mpee.model import InferenceOutput, encoded_batch

#: rule(l, logits (B_a, C), state) -> (leave (B_a,) bool, signal (B_a,) float, new state).
#: ``state`` maps names to tensors whose first axis is the active batch; the loop filters them.
ExitRule = Callable[[int, Tensor, dict[str, Tensor]], tuple[Tensor, Tensor, dict[str, Tensor]]]
#: eliminate(l, z_tilde (B, T, D), mask (B, T), probs (B, H, T, T), n_base (B,)) -> (z', mask').
Eliminate = Callable[[int, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


# ============================================================================ config
@dataclass(frozen=True)
class HeadConfig:
    """The classifier fields every baseline config has (each method's config extends it).

    Attributes:
        num_labels: C >= 2.
        head: the classifier kind, MPEE's Eq. 9 reading: ``"pooler"`` (pooler + linear) or ``"tanh"``.
        classifier_dropout: dropout inside each classifier (training only).
        head_norm: standardise h_CLS per feature before each classifier, MPEE's exit-head recipe
            (docs/interpretation/layer_exit_and_losses.md, L10); folds away for inference
            (:meth:`BaselineModel.fold_head_norms`). Off by default, as in the original methods.

    A method's config declares its string switches in ``CHOICES`` (field -> allowed values) and its
    numeric thresholds in ``NUMBERS``; :meth:`__post_init__` checks both.
    """

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    NUMBERS: ClassVar[tuple[str, ...]] = ()

    num_labels: int = 2
    head: str = "pooler"
    classifier_dropout: float = 0.1
    head_norm: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not isinstance(self.num_labels, int) or isinstance(self.num_labels, bool) or self.num_labels < 2:
            raise ValueError(f"{owner}.num_labels must be an int >= 2 (entropy exits need classes), "
                             f"got {self.num_labels!r}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"{owner}.head must be one of {HEAD_KINDS}, got {self.head!r}")
        if not 0.0 <= float(self.classifier_dropout) < 1.0:
            raise ValueError(f"{owner}.classifier_dropout must be in [0, 1), got {self.classifier_dropout!r}")
        if not isinstance(self.head_norm, bool):
            raise ValueError(f"{owner}.head_norm must be a bool, got {self.head_norm!r}")
        for name, values in self.CHOICES.items():
            if getattr(self, name) not in values:
                raise ValueError(f"{owner}.{name} must be one of {values}, got {getattr(self, name)!r}")
        for name in self.NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{owner}.{name} must be a number, got {value!r}")


# ============================================================================ typed outputs
@dataclass(frozen=True)
class BaselineTrainOutput:
    """What a baseline's ``forward`` returns (every sample runs to the last classifier's layer).

    Attributes:
        logits: ``(K, B, C)`` the classifiers' logits, in layer order.
        head_layers: the K 1-based layers those classifiers sit after.
        tokens: ``(E, B)`` tokens entering each executed layer's FFN (E = ``head_layers[-1]``).
        loss: the method's scalar training loss (when labels were given; FastBERT's distillation
            stage always).
        per_head_loss: the terms that loss is built from: ``(K,)`` cross-entropy of each classifier
            (batch means), ``(1,)`` for a single trained classifier, or ``(L-1,)`` per-student KL
            (FastBERT's distillation stage).
    """

    logits: Tensor
    head_layers: tuple[int, ...]
    tokens: Tensor
    loss: Tensor | None = None
    per_head_loss: Tensor | None = None


@dataclass(frozen=True)
class BaselineSample:
    """The inference record of one input.

    Attributes:
        prediction: argmax of ``probabilities`` (ties: the lower class).
        probabilities: softmax of the exiting classifier's logits, length C.
        exit_layer: 1-based layer after which the sample left.
        tokens_per_layer: tokens entering each executed layer's FFN (real tokens, no padding).
        signals: the method's exit signal at each evaluated classifier (DeeBERT/static/PoWER-BERT:
            entropy in nats; FastBERT: normalised entropy; PABEE: patience counter).
        flops: executed and full-model FLOPs of this input (Eq. 15).
    """

    prediction: int
    probabilities: tuple[float, ...]
    exit_layer: int
    tokens_per_layer: tuple[int, ...]
    signals: tuple[float, ...]
    flops: SampleFlops


@dataclass(frozen=True)
class BaselineInferenceOutput(InferenceOutput):
    """All samples of one ``infer`` call, in input order (``predictions``, ``exit_layers`` and ``rho``
    as MPEE's :class:`~mpee_ref.mpee.model.InferenceOutput`)."""

    samples: tuple[BaselineSample, ...]


# ============================================================================ FLOPs (Eq. 15)
def baseline_sample_flops(n_att: Sequence[int], n_ffn: Sequence[int], n_tokens: int,
                          head_layers: Sequence[int], bert: BertConfig, num_labels: int,
                          head: str = "pooler") -> SampleFlops:
    r"""Executed and full FLOPs of one sample of a baseline, with MPEE's Eq. (15) functions.

    .. math:: FLOPs_{exec} = \sum_{l=1}^{e} \mathrm{layer}(n^{att}_l, n^{ffn}_l)
              + |\{k \in \mathcal{K} : k \le e\}| \cdot \mathrm{head}, \qquad
              FLOPs_{total} = L\,\mathrm{layer}(n, n) + \mathrm{head}

    with e = ``len(n_att)`` the exit layer and :math:`\mathcal{K}` the layers that carry a
    classifier. MPEE evaluates a head after every layer (:func:`~mpee_ref.flops.sample_flops`'s
    default); static truncation and PoWER-BERT evaluate one, so heads are added here per classifier
    actually run. No token is fused (PoWER-BERT drops eliminated word vectors).

    Args:
        n_att, n_ffn: per executed layer, tokens at MHSA and at the FFN (``n_ffn < n_att`` where
            PoWER-BERT eliminates).  n_tokens: the sample's real length n.
        head_layers: 1-based layers with a classifier (sorted).  bert: the backbone config (L, D, I).
        num_labels: C.  head: the classifier kind (``"pooler"`` or ``"tanh"``).
    Returns:
        :class:`~mpee_ref.flops.SampleFlops`; ``per_layer`` includes the head where one ran.
    """
    e = len(n_att)
    L, D, I = bert.num_hidden_layers, bert.hidden_size, bert.intermediate_size
    layers = sample_flops(n_att, n_ffn, [0] * e, n_tokens, L, D, I, num_labels, head,
                          count_heads=False)                                # layers only
    h = head_flops(D, num_labels, head)
    ks = set(head_layers)
    per_layer = tuple(c + (h if l in ks else 0) for l, c in enumerate(layers.per_layer, start=1))
    return SampleFlops(executed=sum(per_layer), full=full_model_flops(n_tokens, L, D, I, num_labels, head),
                       per_layer=per_layer)


def cross_entropy_per_head(logits: Tensor, labels: Tensor | None) -> Tensor | None:
    """Eq. (11) on every head's logits ``(K, B, C)`` -> ``(K,)``; None without labels."""
    return None if labels is None else eq11_cross_entropy(logits, labels)


# ============================================================================ the module
class BaselineModel(nn.Module):
    """Backbone (``bert.*``, HF names) + classifiers (``heads.{k}.*``, one per layer in
    :attr:`head_layers`). Subclasses define the loss and the exit rule."""

    def __init__(self, bert_config: BertConfig, head_layers: Sequence[int], config: HeadConfig):
        super().__init__()
        L = bert_config.num_hidden_layers
        layers = tuple(int(l) for l in head_layers)
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1 or layers[-1] > L:
            raise ValueError(f"head_layers must be distinct increasing layers in [1, {L}], got {tuple(head_layers)}")
        self.bert_config = bert_config
        self.config = config
        self.head_layers = layers
        self.num_labels, self.head = config.num_labels, config.head
        self.bert = BertEncoder(bert_config)
        self.heads = nn.ModuleList(ExitHead(bert_config.hidden_size, config.num_labels, config.head,
                                            config.classifier_dropout, norm=config.head_norm)
                                   for _ in layers)

    def resolve_stage(self, stage: str | None) -> str:
        """The training stage of one ``forward`` call: ``stage``, or the config's when None."""
        stage = self.config.stage if stage is None else stage
        allowed = type(self.config).CHOICES["stage"]
        if stage not in allowed:
            raise ValueError(f"stage must be one of {allowed}, got {stage!r}")
        return stage

    def init_heads_from_pooler(self) -> None:
        """Copy the backbone's pretrained pooler into every ``"pooler"`` head (BERT's own classifier
        starts from its pooler); warn, as MPEE does, when that pooler looks untrained (zero bias)."""
        if self.head != "pooler":
            return
        pooler = self.bert.pooler.dense
        if not bool(pooler.bias.any()):
            warnings.warn("the backbone's pooler looks untrained (its bias is all zero): copying it gives "
                          "the classifiers no head start", stacklevel=2)
        for h in self.heads:
            h.init_from_pooler(pooler.weight, pooler.bias)

    def fold_head_norms(self) -> "BaselineModel":
        """Fold each classifier's standardisation (``head_norm``) into its first weight, in place
        (:meth:`~mpee_ref.layer_exit.ExitHead.folded`): eval-mode outputs are unchanged."""
        if self.config.head_norm:
            self.heads = nn.ModuleList(h.folded() for h in self.heads)
            self.config = replace(self.config, head_norm=False)
        return self

    def check_batch(self, input_ids: Tensor, attention_mask: Tensor | None,
                    token_type_ids: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The encoder's checks, plus right padding (tokens are removed by position)."""
        input_ids, mask, types = self.bert.check_inputs(input_ids, attention_mask, token_type_ids)
        T = input_ids.shape[1]
        packed = torch.arange(T, device=input_ids.device)[None, :] < mask.sum(1)[:, None]   # (B, T)
        if not bool((packed == mask.bool()).all()):
            raise ValueError("attention_mask must be right-padded (1...1 0...0 per row)")
        return input_ids, mask, types

    @staticmethod
    def unpack(inputs: Any) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """An encoded batch: a dict or an object with ``input_ids`` (+ optional ``attention_mask``,
        ``token_type_ids``), or a bare ``(B, T)`` id tensor."""
        batch = encoded_batch(inputs)
        if batch is not None:
            return batch
        raise ValueError(f"infer() expects an encoded batch (dict, tokenizer output or id tensor), "
                         f"got {type(inputs).__name__}")

    check_labels = staticmethod(check_labels)          # (B,) integer ids in [0, C), else ValueError

    def train_output(self, logits: Tensor, tokens: Tensor, labels: Tensor | None,
                     per_head_loss: Callable[[Tensor, Tensor | None], Tensor | None] | None = None,
                     total: Callable[[Tensor], Tensor] = Tensor.sum) -> BaselineTrainOutput:
        """The training output: ``labels`` checked when given; ``per_head_loss(logits, labels)`` (default:
        each head's cross-entropy, Eq. 11, None without labels) and the method's ``total`` of it."""
        if labels is not None:
            self.check_labels(labels, logits.shape[1], self.num_labels)
        per_head = (per_head_loss or cross_entropy_per_head)(logits, labels)         # (K,) or None
        return BaselineTrainOutput(logits=logits, head_layers=self.head_layers, tokens=tokens,
                                   loss=None if per_head is None else total(per_head), per_head_loss=per_head)

    # ------------------------------------------------------------------ training forward
    def run_all(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None,
                *, eliminate: Eliminate | None = None, detach_heads: bool = False) -> tuple[Tensor, Tensor]:
        """Every sample through layers 1..``head_layers[-1]``; every classifier evaluated.

        ``detach_heads`` feeds the classifiers a detached h_CLS: no gradient reaches the backbone
        (DeeBERT's second stage, FastBERT's self-distillation). Returns (logits ``(K, B, C)``,
        tokens ``(E, B)``)."""
        input_ids, mask, types = self.check_batch(input_ids, attention_mask, token_type_ids)
        n_base = mask.sum(1) - 1                                                   # (B,) non-CLS tokens
        h = self.bert.embeddings(input_ids, types)                                 # (B, T, D)
        logits, tokens = [], []
        for l in range(1, self.head_layers[-1] + 1):
            layer = self.bert.layers[l - 1]
            z, probs = layer.attention_sublayer(h, padding_bias(mask, h.dtype))    # (B, T, D), (B, H, T, T)
            if eliminate is not None:
                z, mask = eliminate(l, z, mask, probs, n_base)                     # (B, T', D), (B, T')
            h = layer.ffn_sublayer(z)                                              # (B, T', D)
            tokens.append(mask.sum(1))
            if l in self.head_layers:
                h_cls = h[:, 0].detach() if detach_heads else h[:, 0]             # (B, D)
                logits.append(self.heads[self.head_layers.index(l)](h_cls))        # (B, C)
        return torch.stack(logits), torch.stack(tokens)                            # (K, B, C), (E, B)

    # ------------------------------------------------------------------ real-exit inference
    def run_exits(self, inputs: Any, rule: ExitRule, *, eliminate: Eliminate | None = None) -> BaselineInferenceOutput:
        """Inference with real exits: a sample whose ``rule`` fires leaves the batch, the padded width
        shrinks to the longest remaining sample, eliminated tokens are gone from the tensors."""
        if self.training:
            raise ValueError("infer() needs eval mode: call model.eval() first")
        input_ids, mask, types = self.check_batch(*self.unpack(inputs))
        B, last = input_ids.shape[0], self.head_layers[-1]
        lengths = mask.sum(1).tolist()
        n_base = mask.sum(1) - 1                                                   # (B_a,)
        h = self.bert.embeddings(input_ids, types)                                 # (B, T, D)
        active = torch.arange(B, device=input_ids.device)                  # (B_a,) input indices
        state: dict[str, Tensor] = {}
        n_att: list[list[int]] = [[] for _ in range(B)]
        n_ffn: list[list[int]] = [[] for _ in range(B)]
        signals: list[list[float]] = [[] for _ in range(B)]
        done: dict[int, tuple[int, tuple[float, ...]]] = {}
        for l in range(1, last + 1):
            layer = self.bert.layers[l - 1]
            att = mask.sum(1).tolist()
            z, probs = layer.attention_sublayer(h, padding_bias(mask, h.dtype))    # (B_a, T, D), (B_a, H, T, T)
            if eliminate is not None:
                z, mask = eliminate(l, z, mask, probs, n_base)                     # (B_a, T', D), (B_a, T')
            h = layer.ffn_sublayer(z)                                              # (B_a, T', D)
            ffn = mask.sum(1).tolist()
            for i, b in enumerate(active.tolist()):
                n_att[b].append(int(att[i]))
                n_ffn[b].append(int(ffn[i]))
            if l not in self.head_layers:
                continue
            logits = self.heads[self.head_layers.index(l)](h[:, 0])                # (B_a, C)
            leave, signal, state = rule(l, logits, state)                          # (B_a,), (B_a,)
            if l == last:
                leave = torch.ones_like(leave)                                     # the last classifier always answers
            probs_c = torch.softmax(logits, dim=-1)                                # (B_a, C)
            for i, b in enumerate(active.tolist()):
                signals[b].append(float(signal[i]))
                if bool(leave[i]):
                    done[b] = (l, tuple(probs_c[i].tolist()))
            if bool(leave.all()):
                break
            stay = ~leave                                                          # (B_a,)
            active, h, mask, n_base = active[stay], h[stay], mask[stay], n_base[stay]
            state = {k: v[stay] for k, v in state.items()}
            width = int(mask.sum(1).max())
            h, mask = h[:, :width], mask[:, :width]                                # (B_a', T'', D)
        samples = []
        for b in range(B):
            exit_layer, p = done[b]
            samples.append(BaselineSample(
                prediction=max(range(len(p)), key=lambda c: (p[c], -c)), probabilities=p,
                exit_layer=exit_layer, tokens_per_layer=tuple(n_ffn[b]), signals=tuple(signals[b]),
                flops=baseline_sample_flops(n_att[b], n_ffn[b], int(lengths[b]),
                                            [k for k in self.head_layers if k <= exit_layer],
                                            self.bert_config, self.num_labels, self.head)))
        return BaselineInferenceOutput(samples=tuple(samples))


class EveryLayerModel(BaselineModel):
    """A baseline with a classifier after every layer (``heads.{l-1}``, l = 1..L): DeeBERT, FastBERT, PABEE."""

    def __init__(self, bert_config: BertConfig, config: HeadConfig):
        super().__init__(bert_config, tuple(range(1, bert_config.num_hidden_layers + 1)), config)
