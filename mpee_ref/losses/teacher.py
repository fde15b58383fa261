"""The weighted-ensemble teacher of Eq. (12) as a module.

Parameters: ``dense.{weight,bias}`` = W_η (k x C), b_η (k,); ``context.weight`` = V as a (1, k) row
(no bias). The computation is :func:`mpee_ref.losses.equations.eq12_teacher`.
"""

from __future__ import annotations

from torch import Tensor, nn

from .checks import check_memories
from .equations import eq12_teacher


class WeightedTeacher(nn.Module):
    r"""Attention pool over the L exit memories: ``(L, B, C) -> t (B, C), eta (B, L)`` (Eq. 12).

    Args:
        num_labels: C.
        k: width of :math:`W_\eta \in \mathbb{R}^{k \times C}` and V; default k = C (the authors'
            Linear(C→C), tanh, Linear(C→1)). The paper does not give k.

    Init: weights normal(0, 0.02), bias 0 (BERT's initialiser, as for the exit heads); with
    such small V the initial η is close to uniform, i.e. the teacher starts as the mean exit.
    """

    def __init__(self, num_labels: int, k: int | None = None):
        super().__init__()
        k = num_labels if k is None else k
        for name, value in (("num_labels", num_labels), ("k", k)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"WeightedTeacher {name} must be a positive int, got {value!r}")
        self.num_labels, self.k = num_labels, k
        self.dense = nn.Linear(num_labels, k)
        self.context = nn.Linear(k, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.dense.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.dense.bias)
        nn.init.normal_(self.context.weight, mean=0.0, std=0.02)

    def forward(self, memories: Tensor) -> tuple[Tensor, Tensor]:
        check_memories(memories, self.num_labels)
        return eq12_teacher(memories, self.dense.weight, self.dense.bias,
                            self.context.weight.squeeze(0))                # (B, C), (B, L)

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}, k={self.k}"
