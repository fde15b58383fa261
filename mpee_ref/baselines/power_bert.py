r"""PoWER-BERT (Goyal et al., 2020, "PoWER-BERT: Accelerating BERT Inference via Progressive
Word-vector Elimination").

Every sample runs all L layers, but after each layer's self-attention an *extract layer* keeps only
the most significant word vectors; the eliminated ones are gone for the FFN and every later layer
(Goyal et al., §x "Extract layer"). The significance of word vector w in layer j is the total
attention it receives, summed over heads and over all query positions (Goyal et al., §x
"Significance score"). How many vectors each layer keeps is the *retention configuration*
:math:`\ell_1 \ge \ell_2 \ge \dots \ge \ell_L`; PoWER-BERT learns it with a soft-extract layer and a
length penalty, then fine-tunes with the hard elimination active.

Reused: selecting the top vectors and removing the others is MPEE's
:func:`mpee_ref.token_exit.prune_tokens` with ``fusion="drop"`` (no fused token), ``r_ee_means="keep"``
and ``n_base`` = the input length, so that layer j keeps :math:`\lceil r_j N \rceil` of the N
non-[CLS] tokens (exact rational ceiling of Eq. 7's code).

Departures (docs/BASELINES.md):

* **the soft-extract configuration search is not implemented**: the retention configuration is
  given (fractions :math:`r_j` of each input's own length), and a sweep over fixed configurations
  stands in for the learned one;
* retention is a fraction of each sample's real length (the paper fixes absolute counts
  :math:`\ell_j` for inputs padded to one length), so FLOPs are per sample at real lengths;
* [CLS] is always kept (the classifier reads it); the ranking is over the other tokens;
* query rows of padding are left out of the significance (they are artifacts of batching).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import BertConfig
from ..layer_exit import exit_entropy
from ..token_exit import prune_tokens
from .common import BaselineInferenceOutput, BaselineModel, BaselineTrainOutput, HeadConfig


def power_significance(probs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    r"""PoWER-BERT's significance score (Goyal et al., 2020, §x "Significance score").

    .. math:: \mathrm{Sig}(w) = \sum_{h=1}^{H} \sum_{w'} A_h[w', w]

    the attention word vector w receives from every (real) query w', summed over the H heads.

    Args:
        probs: ``(B, H, T, T)`` attention probabilities of the layer (rows: queries, columns: keys).
        attention_mask: ``(B, T)`` 1 real / 0 padding, or None (all real).
    Returns:
        ``(B, T-1)`` significance of the non-[CLS] tokens 1..T-1; 0 at padded keys.
        For a sample of n real tokens the full row (with [CLS]) sums to H·n.

    Deviation (B5): padding query rows are excluded (ours, so that padding cannot change a ranking);
    [CLS] is left out because it is always kept.
    """
    if probs.dim() != 4 or probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"probs must be (B, H, T, T) attention probabilities, got shape {tuple(probs.shape)}")
    B, _, T, _ = probs.shape
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=probs.device)
    if tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"attention_mask must have shape {(B, T)} to match probs {tuple(probs.shape)}, "
                         f"got {tuple(attention_mask.shape)}")
    real = (attention_mask != 0).to(probs.dtype)                                   # (B, T)
    received = (probs * real[:, None, :, None]).sum(dim=(1, 2))                    # (B, T): Σ_h Σ_{w' real}
    return (received * real)[:, 1:]                                               # (B, T-1)


@dataclass(frozen=True)
class PowerBERTConfig(HeadConfig):
    """PoWER-BERT with a fixed retention configuration.

    Attributes (besides :class:`~mpee_ref.baselines.common.HeadConfig`'s classifier fields):
        retention: r_1 >= ... >= r_L in (0, 1]: after layer j's self-attention, keep
            ⌈r_j N⌉ of the input's N non-[CLS] tokens ([CLS] always kept). None = keep everything.
    """

    retention: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.retention
        if r is None:
            return
        if not isinstance(r, tuple) or not r:
            raise ValueError(f"PowerBERTConfig.retention must be a non-empty tuple of fractions, got {r!r}")
        for j, x in enumerate(r):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 < float(x) <= 1.0:
                raise ValueError(f"PowerBERTConfig.retention[{j}] must be in (0, 1], got {x!r}")
        if any(b > a for a, b in zip(r, r[1:])):
            raise ValueError(f"PowerBERTConfig.retention must be non-increasing (eliminated vectors never "
                             f"come back), got {r}")

    def fractions(self, num_hidden_layers: int) -> tuple[float, ...]:
        if self.retention is None:
            return (1.0,) * num_hidden_layers
        if len(self.retention) != num_hidden_layers:
            raise ValueError(f"PowerBERTConfig.retention needs one fraction per layer ({num_hidden_layers}), "
                             f"got {len(self.retention)}")
        return tuple(float(x) for x in self.retention)


class PowerBERT(BaselineModel):
    """Backbone with an extract layer in every layer + one classifier after layer L (``heads.0``)."""

    def __init__(self, bert_config: BertConfig, config: PowerBERTConfig):
        L = bert_config.num_hidden_layers
        fractions = config.fractions(L)                                             # validates the length
        super().__init__(bert_config, (L,), config)
        self._fractions = fractions

    def _eliminate(self, fractions: tuple[float, ...]):
        def eliminate(l: int, z: Tensor, mask: Tensor, probs: Tensor, n_base: Tensor) -> tuple[Tensor, Tensor]:
            sig = power_significance(probs, mask)                                   # (B, T-1)
            res = prune_tokens(z, mask, sig, fractions[l - 1], r_ee_means="keep", fusion="drop",
                               n_base=n_base)                                       # keep ⌈r_l N⌉
            return res.hidden, res.attention_mask                                   # (B, T', D), (B, T')
        return eliminate

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, labels: Tensor | None = None) -> BaselineTrainOutput:
        """All L layers with elimination active (PoWER-BERT's final fine-tuning); classifier CE."""
        logits, tokens = self.run_all(input_ids, attention_mask, token_type_ids,
                                      eliminate=self._eliminate(self._fractions))   # (1, B, C), (L, B)
        return self.train_output(logits, tokens, labels)

    @torch.inference_mode()
    def infer(self, inputs: Any, *, retention: tuple[float, ...] | None = None) -> BaselineInferenceOutput:
        """Eliminated word vectors are removed from the tensors; every sample answers after layer L.
        ``retention`` overrides the configuration for this call (a sweep over fixed configurations)."""
        fr = self._fractions if retention is None else PowerBERTConfig(
            num_labels=self.num_labels, retention=tuple(retention)).fractions(self.bert_config.num_hidden_layers)

        def rule(l: int, logits: Tensor, state: dict[str, Tensor]):
            ent = exit_entropy(logits)                                              # (B_a,)
            return torch.ones_like(ent, dtype=torch.bool), ent, state
        return self.run_exits(inputs, rule, eliminate=self._eliminate(fr))
