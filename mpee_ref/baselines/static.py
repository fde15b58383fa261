r"""Static truncation: the first k layers of the backbone and one classifier (the paper's "BERT-6L").

The MPEE paper's Table 1 lists BERT-6L (a 12-layer BERT cut to 6 layers, fine-tuned) at ρ = 2.00×.
Here the backbone is cut to its first k = ⌊L/2⌋ layers (3 of MiniLM-L6's 6) and fine-tuned with
one classifier after layer k; every sample runs exactly k layers::

    h^k = Transformer^k(... Transformer^1(Embed(x)))         MPEE Eqs. 1-4, layers 1..k
    z   = head(h^k[CLS])                                     an Eq. 9 classifier
    L   = CE(softmax(z), y)

Its ρ is not exactly L/k: both sides count one classifier (Eq. 15 code), so
ρ = (L·layer(n) + head) / (k·layer(n) + head), a little below 2 for k = L/2.

Departures: BERT-6L in the paper is presumably initialised from the first 6 layers of BERT-base (the
paper does not say); here it is the first k layers of the same backbone as every other method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import BertConfig
from ..layer_exit import exit_entropy
from .common import BaselineInferenceOutput, BaselineModel, BaselineTrainOutput, HeadConfig


@dataclass(frozen=True)
class StaticConfig(HeadConfig):
    """Static truncation.

    Attributes (besides :class:`~mpee_ref.baselines.common.HeadConfig`'s classifier fields):
        num_layers: k, the layers kept; None = ⌊L/2⌋ (the ρ ≈ 2× reference).
    """

    num_layers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        k = self.num_layers
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"StaticConfig.num_layers must be an int >= 1 or None, got {k!r}")

    def kept_layers(self, num_hidden_layers: int) -> int:
        k = num_hidden_layers // 2 if self.num_layers is None else self.num_layers
        if not 1 <= k <= num_hidden_layers:
            raise ValueError(f"StaticConfig.num_layers must be in [1, {num_hidden_layers}], got {k}")
        return k


class StaticTruncation(BaselineModel):
    """The first k layers + one classifier (``heads.0``). Layers k+1..L of ``bert`` are never run."""

    def __init__(self, bert_config: BertConfig, config: StaticConfig):
        k = config.kept_layers(bert_config.num_hidden_layers)
        super().__init__(bert_config, (k,), config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None) -> BaselineTrainOutput:
        """k layers for every sample; the cross-entropy of the one classifier when labels are given."""
        logits, tokens = self.run_all(input_ids, attention_mask, token_type_ids)   # (1, B, C), (k, B)
        return self.train_output(logits, tokens, labels)

    @torch.inference_mode()
    def infer(self, inputs: Any) -> BaselineInferenceOutput:
        """Every sample exits after layer k; the signal recorded is the classifier's entropy (nats)."""
        def rule(l: int, logits: Tensor, state: dict[str, Tensor]):
            ent = exit_entropy(logits)                                              # (B_a,)
            return torch.ones_like(ent, dtype=torch.bool), ent, state
        return self.run_exits(inputs, rule)
