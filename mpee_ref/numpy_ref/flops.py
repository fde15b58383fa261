r"""Eq. (15) FLOPs accounting in plain Python integers: a port of ``mpee_ref/flops/equations.py``.

Convention ("ours"): FLOPs = 2 x multiply-accumulates of every matrix product executed, at the
sample's real (unpadded) token counts; biases, softmax, LayerNorm, GELU, tanh and residuals are not
counted. The fused token counts as a token; fusing p tokens costs 2pD; each executed layer runs its
exit head. The baseline is plain BERT at the real length plus one classifier head.
"""

from __future__ import annotations

import math
from typing import Sequence


def eq15_layer_flops(n_att: int, n_ffn: int, hidden: int, intermediate: int) -> int:
    r"""One layer: :math:`8 n_{att} D^2 + 4 n_{att}^2 D + 4 n_{ffn} D I` (Q, K, V, W^o; QK^T; PV; W_1, W_2)."""
    D, I = hidden, intermediate
    return 4 * (2 * n_att * D * D) + 2 * n_att * n_att * D + 2 * n_att * n_att * D + 2 * (2 * n_ffn * D * I)


def head_flops(hidden: int, num_labels: int, head: str = "pooler") -> int:
    """Eq. (9) head on [CLS]: ``2D^2 + 2DC`` (pooler) or ``2DC`` (literal tanh)."""
    return (2 * hidden * hidden if head == "pooler" else 0) + 2 * hidden * num_labels


def fusion_flops(num_fused: int, hidden: int) -> int:
    r"""Eq. (8) fusion :math:`\sum_i \alpha_i h_i` over p tokens: ``2 p D``."""
    return 2 * num_fused * hidden


def sample_flops(n_att: Sequence[int], n_ffn: Sequence[int], num_fused: Sequence[int], n_tokens: int,
                 num_layers: int, hidden: int, intermediate: int, num_labels: int,
                 head: str = "pooler", count_heads: bool = True,
                 final_head: bool = False) -> tuple[int, int, tuple[int, ...]]:
    """(executed, full, per_layer) of one sample; the sequences run over the executed layers.
    ``final_head``: the authors' final classifier ran after layer L (one more head, in the last entry)."""
    h = head_flops(hidden, num_labels, head) if count_heads else 0
    per_layer = tuple(eq15_layer_flops(a, f, hidden, intermediate) + fusion_flops(p, hidden) + h
                      for a, f, p in zip(n_att, n_ffn, num_fused))
    if final_head:
        per_layer = per_layer[:-1] + (per_layer[-1] + h,)
    full = num_layers * eq15_layer_flops(n_tokens, n_tokens, hidden, intermediate) + h
    return sum(per_layer), full, per_layer


def eq15_speedup(full: Sequence[int], executed: Sequence[int]) -> float:
    r"""Eq. (15) as reported: :math:`\rho = \sum FLOPs_{total} / \sum FLOPs_{exec}` (ratio of sums, > 1 = faster)."""
    return sum(int(f) for f in full) / sum(int(e) for e in executed)


def authors_layer_macs(n_att: int, n_ffn: int, hidden: int) -> int:
    """The authors' per-layer count, in MACs with I = 4D: ``2 D n_att^2 + 4 D^2 n_att + 8 D^2 n_ffn``."""
    return 2 * hidden * n_att * n_att + 4 * hidden * hidden * n_att + 8 * hidden * hidden * n_ffn


def authors_code_sample_macs(exit_layer: int, prune_layers: Sequence[int], keep_ratio: float, num_layers: int,
                             hidden: int, max_len: int = 128, fused: bool = True) -> tuple[int, int]:
    """(executed, full) MACs as the authors' evaluation loop adds them (docs/interpretation/flops.md).

    Recorded length per executed layer on an input padded to ``max_len``: ``k + 1`` with k the kept
    non-[CLS] slots (``ceil(r (W - 1))`` at pruning layers, float ceil as their Python; the fused token not
    recorded). Step i charges an FFN at that length plus, when i < L, the next layer's attention."""
    attention = lambda n: 2 * hidden * n * n + 4 * hidden * hidden * n     # noqa: E731
    ffn = lambda n: 8 * hidden * hidden * n                                # noqa: E731
    W, executed = max_len, attention(max_len)                              # layer 1's attention
    for i in range(1, exit_layer + 1):
        k = math.ceil(keep_ratio * (W - 1)) if i in prune_layers else W - 1
        executed += ffn(k + 1) if i == num_layers else attention(k + 1) + ffn(k + 1)
        if k < W - 1:
            W = k + 1 + int(fused)
    return executed, num_layers * (attention(max_len) + ffn(max_len))
