r"""Tokenised datasets, padding and the seeded batch order shared by ``train`` and ``evaluate``.

Decisions (none of them is in the paper; each is written down because it changes results):

* **Dynamic padding.** Every example is tokenised once, truncated to ``max_seq_length`` and kept
  unpadded; a batch is right-padded to its longest member (not to ``max_seq_length``). MPEE's masks make
  padding inert (the model's tests check "padding changes nothing"), so this only saves time.
* **No length bucketing.** Batches are drawn in a random order, never sorted by length: sorting would
  change which examples share a gradient step, i.e. the result.
* **One sampler for 1 and N processes.** :class:`EpochBatchSampler` permutes the indices with
  ``torch.randperm(n, generator=manual_seed(seed + epoch))`` (what ``DistributedSampler`` does), pads
  the permutation to a multiple of the world size by repeating its head, and gives rank ``r`` the slots
  ``r, r + W, r + 2W, ...``. So at step k the W ranks with per-process batch b together see exactly the
  examples a single process with batch W·b sees (the DDP test relies on this), and a run resumed at step
  s skips exactly the batches it has already seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class EncodedDataset:
    """Tokenised examples, unpadded.

    Attributes:
        input_ids: per example, the token ids ([CLS] ... [SEP] ... [SEP]), at most ``max_seq_length``.
        token_type_ids: per example, segment ids (same lengths as ``input_ids``).
        labels: per example, the class id.
    """

    input_ids: tuple[tuple[int, ...], ...]
    token_type_ids: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.labels)


def encode_examples(tokenizer: Any, examples: Sequence[Any], max_seq_length: int,
                    chunk: int = 256) -> EncodedDataset:
    """Tokenise GLUE ``examples`` (``text_a``, ``text_b``, ``label``) with the model's tokenizer.

    Args:
        tokenizer: ``tok(texts, pairs=None, max_length=None) -> Encoded`` (``mpee_ref.io``).
        examples: a sequence of :class:`mpee_ref.data.Example`.
        max_seq_length: truncation length (tokens, incl. [CLS]/[SEP]).
        chunk: examples per tokenizer call (bounds the padded tensor it returns).
    Returns:
        :class:`EncodedDataset` in the order of ``examples``.
    """
    if not isinstance(max_seq_length, int) or max_seq_length < 3:
        raise ValueError(f"max_seq_length must be an int >= 3 ([CLS] x [SEP]), got {max_seq_length!r}")
    if len(examples) == 0:
        raise ValueError("examples: expected at least one example, got none")
    paired = examples[0].text_b is not None
    if any((ex.text_b is not None) != paired for ex in examples):
        raise ValueError("examples: mixes single sentences and sentence pairs")
    ids, types, labels = [], [], []
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        enc = tokenizer([ex.text_a for ex in part], pairs=[ex.text_b for ex in part] if paired else None,
                        max_length=max_seq_length)
        lengths = enc.attention_mask.sum(1).tolist()                             # (b,)
        for row, n in enumerate(lengths):
            ids.append(tuple(enc.input_ids[row, :n].tolist()))
            types.append(tuple(enc.token_type_ids[row, :n].tolist()))
    for ex in examples:
        if isinstance(ex.label, float) and not float(ex.label).is_integer():
            raise ValueError(f"example {ex.guid}: label {ex.label!r} is not a class id "
                             f"(regression tasks are not supported by MPEE's entropy exits)")
        labels.append(int(ex.label))
    return EncodedDataset(tuple(ids), tuple(types), tuple(labels))


def collate(data: EncodedDataset, indices: Sequence[int], pad_token_id: int = 0) -> dict[str, Tensor]:
    """Right-pad the examples ``indices`` of ``data`` to their longest member.

    Returns:
        ``input_ids`` (B, T), ``attention_mask`` (B, T), ``token_type_ids`` (B, T), ``labels`` (B,).
    """
    if len(indices) == 0:
        raise ValueError("indices: a batch needs at least one example")
    T = max(len(data.input_ids[i]) for i in indices)
    B = len(indices)
    host = torch.device("cpu")                  # built on the host; the caller moves it to the model's device
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long, device=host)   # (B, T)
    mask = torch.zeros((B, T), dtype=torch.long, device=host)                     # (B, T)
    types = torch.zeros((B, T), dtype=torch.long, device=host)                    # (B, T)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        input_ids[row, :n] = torch.tensor(data.input_ids[i], device=host)
        types[row, :n] = torch.tensor(data.token_type_ids[i], device=host)
        mask[row, :n] = 1
    labels = torch.tensor([data.labels[i] for i in indices], dtype=torch.long, device=host)   # (B,)
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


class EpochBatchSampler:
    """Seeded, resumable, rank-sharded batches of indices (see the module doc).

    Args:
        n: dataset size.  batch_size: per-process batch size b.  seed: base seed.
        rank, world_size: this process's slot among W processes (1 process: 0, 1).
        shuffle: False keeps index order (evaluation).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        for name, value, lo in (("n", n, 1), ("batch_size", batch_size, 1), ("world_size", world_size, 1)):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    @property
    def per_rank(self) -> int:
        """Examples each rank sees per epoch (the permutation is padded to a multiple of W)."""
        return math.ceil(self.n / self.world_size)

    def __len__(self) -> int:
        """Batches (= optimizer steps) per epoch."""
        return math.ceil(self.per_rank / self.batch_size)

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch``, in visiting order."""
        if self.shuffle:
            g = torch.Generator(device="cpu").manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g, device="cpu").tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        order = order + order[: total - self.n]                     # pad like DistributedSampler
        return order[self.rank::self.world_size]

    def batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """Batches of ``epoch`` from batch number ``start`` (0-based) on."""
        idx = self.epoch_indices(epoch)
        for k in range(start, len(self)):
            yield idx[k * self.batch_size:(k + 1) * self.batch_size]
