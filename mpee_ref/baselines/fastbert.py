r"""FastBERT (Liu et al., 2020, "FastBERT: a Self-distilling BERT with Adaptive Inference Time").

A student classifier after every layer 1..L-1 and the teacher classifier after layer L. Training
(Liu et al., §x "Model training"):

* fine-tuning (``stage="backbone"``): backbone and teacher, cross-entropy of the teacher;
* self-distillation (``stage="distill"``): backbone and teacher frozen; each student is pulled
  towards the teacher's distribution by KL divergence, no labels needed.

Adaptive inference (Liu et al., §x "Adaptive inference"): after layer i the student's distribution
:math:`p_s` gives the *uncertainty*, its entropy normalised to [0, 1] by :math:`\log C`; the sample
exits when the uncertainty is below the *speed* threshold.

Reused, not re-implemented: the KL term is :func:`mpee_ref.losses.eq13_kd_loss` at τ = 1; the
entropy is :func:`mpee_ref.layer_exit.exit_entropy`.

Departures (docs/BASELINES.md):

* FastBERT's student (and teacher) classifier is a small transformer of its own (project to 128
  dims, one self-attention layer over all tokens, then dense layers). Here each classifier
  is an :class:`~mpee_ref.layer_exit.ExitHead` on h_CLS (pooler + linear), the same classifier as
  DeeBERT, PABEE and MPEE, so that the comparison isolates the training and exit rules and the
  classifier cost in Eq. (15) is the same for every method. FastBERT's classifier is more costly
  (it attends over all tokens) and possibly more accurate at shallow layers.
* the frozen backbone and teacher are built into the loss (students get a detached h_CLS, the
  teacher's logits are detached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import BertConfig
from ..layer_exit import exit_entropy
from ..losses import KD_DIRECTIONS, eq13_kd_loss
from .common import BaselineInferenceOutput, BaselineTrainOutput, EveryLayerModel, HeadConfig, cross_entropy_per_head

FASTBERT_STAGES = ("backbone", "distill")


def fastbert_uncertainty(logits: Tensor) -> Tensor:
    r"""FastBERT's uncertainty (Liu et al., 2020, §x "Adaptive inference"): normalised entropy.

    .. math:: \mathrm{Uncertainty} = \frac{\sum_{c=1}^{C} p_s(c) \log p_s(c)}{\log \frac{1}{C}}
              = \frac{H(p_s)}{\log C}, \qquad p_s = \mathrm{softmax}(\text{logits})

    Args:
        logits: ``(B, C)`` a student's logits, C >= 2.
    Returns:
        ``(B,)`` in [0, 1]: 0 for a one-hot distribution, 1 for the uniform one.

    Deviation (B3): none; computed from ``log_softmax`` (finite for any logits).
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, C) with C >= 2, got shape {tuple(logits.shape)}")
    return exit_entropy(logits) / math.log(logits.shape[1])                        # (B,)


def fastbert_distill_loss(student_logits: Tensor, teacher_logits: Tensor,
                          direction: str = "student_teacher") -> Tensor:
    r"""FastBERT's self-distillation loss (Liu et al., 2020, §x "Self-distillation").

    .. math:: \mathcal{L}(p_{s_0}, \dots, p_{s_{L-2}}, p_t) = \sum_{i=0}^{L-2} D_{KL}(p_{s_i}, p_t),
              \qquad D_{KL}(p_s, p_t) = \sum_{c=1}^{C} p_s(c) \log \frac{p_s(c)}{p_t(c)}

    The teacher :math:`p_t` is the final classifier's distribution, treated as a constant.

    Args:
        student_logits: ``(S, B, C)`` the S = L-1 students' logits.  teacher_logits: ``(B, C)``.
        direction: ``"student_teacher"`` KL(p_s ‖ p_t) as written above (our reading of the paper's
            :math:`D_{KL}(p_s, p_t)`), or ``"teacher_student"`` KL(p_t ‖ p_s), the usual KD direction.
    Returns:
        ``(S,)`` the per-student KL (batch mean); the loss is its sum.

    Deviation (B3): the batch mean is ours. The direction of the printed :math:`D_{KL}(p_s, p_t)` is
    read from its expansion; the switch gives the other.
    """
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be (S, B, C), got shape {tuple(student_logits.shape)}")
    return eq13_kd_loss(student_logits, teacher_logits.detach(), tau=1.0, direction=direction)   # (S,)


@dataclass(frozen=True)
class FastBERTConfig(HeadConfig):
    """FastBERT.

    Attributes (besides :class:`~mpee_ref.baselines.common.HeadConfig`'s classifier fields):
        speed: the threshold on the uncertainty, in [0, 1]: exit when uncertainty < speed (0 never
            exits early; above 1 everything exits after layer 1).
        stage: ``"backbone"`` (teacher CE) or ``"distill"`` (self-distillation).
        kd_direction: direction of the KL, see :func:`fastbert_distill_loss`.
    """

    CHOICES = {"stage": FASTBERT_STAGES, "kd_direction": KD_DIRECTIONS}
    NUMBERS = ("speed",)

    speed: float = 0.5
    stage: str = "backbone"
    kd_direction: str = "student_teacher"


class FastBERT(EveryLayerModel):
    """Backbone + students ``heads.0..L-2`` (after layers 1..L-1) + teacher ``heads.{L-1}``."""

    def __init__(self, bert_config: BertConfig, config: FastBERTConfig):
        if bert_config.num_hidden_layers < 2:
            raise ValueError(f"FastBERT needs at least 2 layers (students + teacher), got {bert_config.num_hidden_layers}")
        super().__init__(bert_config, config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None, *,
                stage: str | None = None) -> BaselineTrainOutput:
        """All L layers. ``"backbone"``: CE of the teacher when labels are given. ``"distill"``:
        :func:`fastbert_distill_loss`, always (self-distillation needs no labels; any given are checked
        and ignored)."""
        stage = self.resolve_stage(stage)
        logits, tokens = self.run_all(input_ids, attention_mask, token_type_ids,
                                      detach_heads=stage == "distill")              # (L, B, C), (L, B)
        if stage == "distill":                                                      # (L-1,) students' KL
            per_head = lambda lg, _: fastbert_distill_loss(lg[:-1], lg[-1], self.config.kd_direction)  # noqa: E731
        else:                                                                       # (1,) teacher CE
            per_head = lambda lg, y: cross_entropy_per_head(lg[-1:], y)             # noqa: E731
        return self.train_output(logits, tokens, labels, per_head)

    @torch.inference_mode()
    def infer(self, inputs: Any, *, speed: float | None = None) -> BaselineInferenceOutput:
        """Real exits: a sample leaves after the first student whose uncertainty is below ``speed``."""
        s = self.config.speed if speed is None else float(speed)

        def rule(l: int, logits: Tensor, state: dict[str, Tensor]):
            u = fastbert_uncertainty(logits)                                        # (B_a,)
            return u < s, u, state                                                  # (B_a,) bool
        return self.run_exits(inputs, rule)
