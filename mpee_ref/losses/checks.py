"""Input checks at the boundary of the losses package (:func:`~mpee_ref.losses.equations.mpee_loss`,
the teacher module, the baselines' training forward): the ``eqNN_`` functions trust their inputs.

Each raises ``ValueError`` with one line naming the argument, the expected shape and what it got.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_memories(memories: Tensor, num_labels: int | None = None) -> None:
    """``memories`` must be a non-empty ``(L, B, C)`` stack (C = ``num_labels`` when given)."""
    C = "C" if num_labels is None else num_labels
    if memories.dim() != 3 or min(memories.shape) == 0 or (num_labels is not None and memories.shape[-1] != C):
        raise ValueError(f"memories must be a non-empty (L, B, {C}) stack of exit memories, "
                         f"got shape {tuple(memories.shape)}")


def check_labels(labels: Tensor, B: int, C: int) -> None:
    """``labels`` must be ``(B,)`` integer class ids in ``[0, C)``."""
    if labels.shape != (B,):
        raise ValueError(f"labels must have shape (B,) = ({B},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if B and (int(labels.min()) < 0 or int(labels.max()) >= C):
        raise ValueError(f"labels must be in [0, {C}), got min {int(labels.min())}, max {int(labels.max())}")
