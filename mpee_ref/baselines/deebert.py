r"""DeeBERT (Xin et al., 2020, "DeeBERT: Dynamic Early Exiting for Accelerating BERT Inference").

An off-ramp (classifier) after every layer 1..L-1 and BERT's final classifier after layer L. Two-stage
training (Xin et al., §x "DeeBERT training"):

* stage 1 (``stage="backbone"``): embeddings, all layers and the final classifier, with the final
  classifier's cross-entropy :math:`\mathcal{L}_n` only (ordinary fine-tuning);
* stage 2 (``stage="ramps"``): everything from stage 1 frozen; the off-ramps trained with
  :math:`\sum_{i=1}^{n-1} \mathcal{L}_i`.

Inference (Xin et al., §x "DeeBERT inference"): after layer i, the off-ramp's output distribution
:math:`z_i = \mathrm{softmax}(\cdot)` has entropy :math:`S(z_i) = -\sum_c z_{i,c} \log z_{i,c}`;
the sample exits when :math:`S(z_i) < S`, else continues; the final classifier always answers.

This entropy test is the one MPEE already has (:func:`mpee_ref.layer_exit.exit_entropy`,
:func:`mpee_ref.layer_exit.should_exit`), applied to one off-ramp's logits (no classifier memory):
it is reused, not re-implemented. The only new equation is the stage-wise loss.

Departures (docs/BASELINES.md):

* stage 2's freezing is built into the loss: the off-ramps receive a detached h_CLS, so no gradient
  reaches the backbone whatever the optimiser holds (the original freezes parameters); the backbone
  still runs in train mode (dropout on) in stage 2.
* each off-ramp is an :class:`~mpee_ref.layer_exit.ExitHead` (pooler + linear, as DeeBERT's
  highway: its own pooler, dropout, classifier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..layer_exit import exit_entropy, should_exit
from .common import BaselineInferenceOutput, BaselineTrainOutput, EveryLayerModel, HeadConfig

DEEBERT_STAGES = ("backbone", "ramps")


def deebert_loss(per_layer_ce: Tensor, stage: str) -> Tensor:
    r"""DeeBERT's two-stage objective (Xin et al., 2020, §x "DeeBERT training").

    .. math:: \text{stage 1: } \mathcal{L} = \mathcal{L}_n, \qquad
              \text{stage 2: } \mathcal{L} = \sum_{i=1}^{n-1} \mathcal{L}_i

    with :math:`\mathcal{L}_i` the cross-entropy of the classifier after layer i and n = L.

    Args:
        per_layer_ce: ``(L,)`` :math:`\mathcal{L}_1..\mathcal{L}_L` (batch means), e.g. from
            :func:`mpee_ref.losses.eq11_cross_entropy` on the stacked logits.
        stage: ``"backbone"`` (stage 1) or ``"ramps"`` (stage 2).
    Returns:
        scalar loss.

    Deviation (B2): none in the formula; the batch mean inside each :math:`\mathcal{L}_i` is ours.
    """
    if per_layer_ce.dim() != 1 or per_layer_ce.numel() < 2:
        raise ValueError(f"per_layer_ce must be (L,) with L >= 2, got shape {tuple(per_layer_ce.shape)}")
    if stage not in DEEBERT_STAGES:
        raise ValueError(f"stage must be one of {DEEBERT_STAGES}, got {stage!r}")
    if stage == "backbone":
        return per_layer_ce[-1]                                                    # L_n
    return per_layer_ce[:-1].sum()                                                 # Σ_{i<n} L_i


@dataclass(frozen=True)
class DeeBERTConfig(HeadConfig):
    """DeeBERT.

    Attributes (besides :class:`~mpee_ref.baselines.common.HeadConfig`'s classifier fields):
        entropy_threshold: S (nats): exit after layer i when the off-ramp's entropy is below S;
            ``S <= 0`` never exits early, ``S > ln C`` exits everything after layer 1.
        stage: ``"backbone"`` (stage 1) or ``"ramps"`` (stage 2), which loss ``forward`` returns.
    """

    CHOICES = {"stage": DEEBERT_STAGES}
    NUMBERS = ("entropy_threshold",)

    entropy_threshold: float = 0.3
    stage: str = "backbone"


class DeeBERT(EveryLayerModel):
    """Backbone + a classifier after every layer (``heads.{l-1}``; the last one is the final classifier)."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None, *,
                stage: str | None = None) -> BaselineTrainOutput:
        """All L layers for every sample; :func:`deebert_loss` of ``stage`` (default: the config's)."""
        stage = self.resolve_stage(stage)
        logits, tokens = self.run_all(input_ids, attention_mask, token_type_ids,
                                      detach_heads=stage == "ramps")                # (L, B, C), (L, B)
        return self.train_output(logits, tokens, labels, total=lambda per_layer: deebert_loss(per_layer, stage))

    @torch.inference_mode()
    def infer(self, inputs: Any, *, entropy_threshold: float | None = None) -> BaselineInferenceOutput:
        """Real exits: a sample leaves after the first layer whose off-ramp entropy is below S."""
        s = self.config.entropy_threshold if entropy_threshold is None else float(entropy_threshold)

        def rule(l: int, logits: Tensor, state: dict[str, Tensor]):
            ent = exit_entropy(logits)                                              # (B_a,) S(z_l)
            return should_exit(ent, s), ent, state                                  # (B_a,) S(z_l) < S
        return self.run_exits(inputs, rule)
