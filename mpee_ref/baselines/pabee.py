r"""PABEE (Zhou et al., 2020, "BERT Loses Patience: Fast and Robust Inference with Early Exit").

An internal classifier after every layer, trained jointly with the backbone on a weighted average of
their cross-entropies, deeper classifiers weighted more (Zhou et al., §x "Training"). At inference a
patience counter counts how many consecutive layers left the prediction unchanged; the sample exits
when the counter reaches the patience t (Zhou et al., §x "Patience-based early exit"), answering with
the current layer's classifier. The last classifier always answers.

Departures (docs/BASELINES.md):

* each internal classifier is an :class:`~mpee_ref.layer_exit.ExitHead` with its own pooler (the
  authors' implementation, as we know it, shares BERT's pooler between all classifiers and gives each its own
  linear layer);
* the paper's main backbone is ALBERT; here it is the same BERT backbone as every other method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .common import BaselineInferenceOutput, BaselineTrainOutput, EveryLayerModel, HeadConfig


def pabee_weighted_loss(per_layer_ce: Tensor) -> Tensor:
    r"""PABEE's training loss (Zhou et al., 2020, §x "Training"): the depth-weighted average.

    .. math:: \mathcal{L} = \frac{\sum_{j=1}^{n} j \cdot \mathcal{L}_j}{\sum_{j=1}^{n} j}

    Args:
        per_layer_ce: ``(n,)`` :math:`\mathcal{L}_1..\mathcal{L}_n` (batch means), e.g. from
            :func:`mpee_ref.losses.eq11_cross_entropy`.
    Returns:
        scalar loss, between min and max of the :math:`\mathcal{L}_j`.
    """
    if per_layer_ce.dim() != 1 or per_layer_ce.numel() == 0:
        raise ValueError(f"per_layer_ce must be (n,) with n >= 1, got shape {tuple(per_layer_ce.shape)}")
    j = torch.arange(1, per_layer_ce.numel() + 1, dtype=per_layer_ce.dtype, device=per_layer_ce.device)  # (n,)
    return (j * per_layer_ce).sum() / j.sum()


def pabee_patience_step(prev_count: Tensor | None, prev_pred: Tensor | None, pred: Tensor) -> Tensor:
    r"""PABEE's patience counter (Zhou et al., 2020, §x "Patience-based early exit").

    .. math:: cnt_i = \begin{cases} cnt_{i-1} + 1 & \arg\max_c F_i = \arg\max_c F_{i-1} \\
              0 & \text{otherwise} \end{cases}, \qquad cnt_1 = 0

    Args:
        prev_count: ``(B,)`` long :math:`cnt_{i-1}`, or None at the first classifier.
        prev_pred: ``(B,)`` long prediction of classifier i-1, or None at the first classifier.
        pred: ``(B,)`` long prediction of classifier i.
    Returns:
        ``(B,)`` long :math:`cnt_i`.
    """
    if pred.dim() != 1:
        raise ValueError(f"pred must be (B,), got shape {tuple(pred.shape)}")
    if (prev_count is None) != (prev_pred is None):
        raise ValueError("prev_count and prev_pred must both be None (first classifier) or both tensors")
    if prev_count is None:
        return torch.zeros_like(pred, dtype=torch.long)                            # (B,) cnt_1 = 0
    if prev_count.shape != pred.shape or prev_pred.shape != pred.shape:
        raise ValueError(f"prev_count {tuple(prev_count.shape)} and prev_pred {tuple(prev_pred.shape)} "
                         f"must have the shape of pred {tuple(pred.shape)}")
    same = pred == prev_pred                                                       # (B,)
    return torch.where(same, prev_count + 1, torch.zeros_like(prev_count))         # (B,)


def pabee_should_exit(count: Tensor, patience: int) -> Tensor:
    r"""PABEE's exit test: stop when the prediction has stayed the same for t consecutive layers.

    .. math:: \mathrm{exit}_b = [\, cnt_{i,b} \ge t \,]

    (the counter grows by one per layer, so ``>=`` fires exactly when it reaches t).

    Args:
        count: ``(B,)`` :math:`cnt_i`.  patience: t >= 1.
    Returns:
        ``(B,)`` bool.
    """
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be an int >= 1, got {patience!r}")
    return count >= patience                                                       # (B,)


@dataclass(frozen=True)
class PABEEConfig(HeadConfig):
    """PABEE.

    Attributes (besides :class:`~mpee_ref.baselines.common.HeadConfig`'s classifier fields):
        patience: t >= 1; the earliest exit is after layer t + 1, so t >= L - 1 never exits early.
    """

    patience: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"PABEEConfig.patience must be an int >= 1, got {self.patience!r}")


class PABEE(EveryLayerModel):
    """Backbone + an internal classifier after every layer (``heads.{l-1}``)."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None) -> BaselineTrainOutput:
        """All L layers; :func:`pabee_weighted_loss` when labels are given."""
        logits, tokens = self.run_all(input_ids, attention_mask, token_type_ids)   # (L, B, C), (L, B)
        return self.train_output(logits, tokens, labels, total=pabee_weighted_loss)

    @torch.inference_mode()
    def infer(self, inputs: Any, *, patience: int | None = None) -> BaselineInferenceOutput:
        """Real exits: a sample leaves once its prediction has been unchanged for ``patience`` layers.
        The recorded signal is the counter :math:`cnt_i`."""
        t = self.config.patience if patience is None else patience
        pabee_should_exit(torch.zeros(1, dtype=torch.long, device="cpu"), t)                 # validates t

        def rule(l: int, logits: Tensor, state: dict[str, Tensor]):
            pred = logits.argmax(dim=-1)                                            # (B_a,)
            count = pabee_patience_step(state.get("count"), state.get("pred"), pred)   # (B_a,)
            return pabee_should_exit(count, t), count, {"count": count, "pred": pred}
        return self.run_exits(inputs, rule)
