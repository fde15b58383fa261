r"""Sequential token-wise early exiting as the paper writes it: Eqs. (5)-(8), §3.1.

At every layer l the [CLS] row of the attention probabilities gives a score per token (Eq. 5); the
scores are smoothed across layers (Eq. 6); on a pruning layer the m best tokens are kept (Eq. 7) and
the others are fused into one "EE fusion token" appended after them (Eq. 8). The model calls::

    z_tilde, probs = layer.attention_sublayer(h, mask_bias)          # (B, T, D), (B, H, T, T)
    a   = eq05_class_attention(probs, attention_mask)                 # (B, T-1)
    mem = eq06_attention_memory(mem, a, beta)                         # (B, T-1), every layer
    res = prune_tokens(z_tilde, attention_mask, mem, r_ee)            # pruning layers only
    h   = layer.ffn_sublayer(res.hidden)                              # (B, T', D)

Shape legend: as in ``mpee_ref/encoder/equations.py`` (B batch, T tokens incl. [CLS], D hidden,
H heads), plus ``N = T - 1``, the non-CLS axis, and ``T'`` the length after pruning.

Paper notation <-> code:

    A_class^l               [CLS] attention row, mean over heads       ``a_class``   (B, N)
    A_m^l, \beta            class-attention memory, its weight         ``memory``, ``beta``
    R_ee, m, p              sequence EE ratio, kept / exited counts     ``r_ee``, ``m``, ``p``
    h_in^l, h_i^l, \alpha_i kept tokens, fused tokens, their weights    ``kept``, ``fused``, ``alpha``
    h_eef^l                 EE fusion token                            ``h_eef``     (B, D)
    \tilde Z_l              pruned sequence fed to the FFN (Eq. 4)      ``PruneResult.hidden``

Conventions: the batch is padded (attention_mask 0); token 0 is [CLS] and always real. Every
interpretation of the printed text is listed in ``docs/interpretation/token_exit.md`` with its switch.
The functions trust their inputs, as the encoder's do: ``MPEEConfig`` checks the hyper-parameters and
switches, ``MPEEModel`` the input shapes and mask (tests/test_boundaries.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

R_EE_MEANINGS = ("exit", "keep")
FUSIONS = ("memory", "normalised", "drop")
FUSED_MEMORIES = ("sum", "mean")
MEMORY_ALIGNMENTS = ("gather", "truncate")
TOKEN_SELECTS = ("top", "bottom")
#: ``PruneResult.source_index`` of an output slot that holds the EE-fusion token / padding.
SOURCE_FUSED = -1
SOURCE_PAD = -2


def _key_mask(probs: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The key mask ``(B, T)`` bool of ``probs`` (B, H, T, T): all True when ``attention_mask`` is None."""
    if attention_mask is None:
        return torch.ones(probs.shape[0], probs.shape[-1], dtype=torch.bool, device=probs.device)   # (B, T)
    return attention_mask != 0                                                 # (B, T)


# ----------------------------------------------------------------------------- Eq. (5)
def eq05_class_attention(probs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    r"""Eq. (5), §3.1: class attention, the [CLS] query row averaged over heads.

    .. math::
        A_{class}^{l} = \text{MeanPooling}(\sum_{h}^{H} \text{HA}_{h}(Z_{l}^{0})), \qquad
        h_{[\text{CLS}]}^{l} = V^{l} \cdot A_{class}^{l}

    :math:`A_{class}^l[i]` is how much token i contributes to :math:`h_{[CLS]}^l`: entry
    ``probs[b, h, 0, i]`` of the softmax of Eq. (3), averaged over the H heads.

    Args:
        probs: ``(B, H, T, T)`` attention probabilities of layer l (softmax of Eq. 3, before dropout).
        attention_mask: ``(B, T)`` 1 real / 0 padding, or None (all real).
    Returns:
        ``(B, T-1)``: :math:`A_{class}^l` over the non-CLS keys 1..T-1; 0 at padded keys.

    Deviation (E5-1): the printed formula pools the head *outputs* :math:`\mathrm{HA}_h` (value-weighted);
    the text ("mean values of all attention heads corresponding to the [CLS] token", and
    :math:`h_{CLS} = V \cdot A_{class}`) and the authors' code use the probability row, as here.
    The [CLS] key itself is left out (it is never pruned). Padded keys are set to 0 explicitly so
    the result does not depend on what the caller's softmax put there.
    """
    cls_row = probs[:, :, 0, 1:]                                               # (B, H, T-1)
    a_class = cls_row.mean(dim=1)                                              # (B, T-1)
    if attention_mask is None:                                                 # no padded key
        return a_class
    return a_class * (attention_mask[:, 1:] != 0).to(a_class.dtype)            # (B, T-1)


def all_token_attention(probs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    r"""Table 3's alternative to Eq. (5), §4 "all token attention": attention each token receives.

    .. math:: A_{all}^l[i] = \frac{1}{H}\sum_h \frac{1}{n}\sum_{q\ \mathrm{real}} \mathrm{softmax}
              \Big(\frac{Q_h K_h^T}{\sqrt{d_h}}\Big)[q, i]

    with n the number of real query rows of the sample (including [CLS]).

    Args:
        probs: ``(B, H, T, T)``.  attention_mask: ``(B, T)`` or None.
    Returns:
        ``(B, T-1)`` over the non-CLS keys; 0 at padded keys.

    Deviation (E5-2): the paper says "sum the attention weights of all tokens"; we average over the real
    query rows (a per-sample constant 1/n, so the ranking is the same) so that the scale matches
    Eq. (5) (each row of a softmax sums to 1) when the two are mixed in the memory of Eq. (6).
    """
    valid = _key_mask(probs, attention_mask)                                   # (B, T)
    q_weight = valid.to(probs.dtype)                                           # (B, T)
    n_real = q_weight.sum(dim=1).clamp_min(1.0)                                # (B,)
    received = (probs * q_weight[:, None, :, None]).sum(dim=2)                 # (B, H, T): Σ_q real
    received = received.mean(dim=1) / n_real[:, None]                          # (B, T)
    return received[:, 1:] * q_weight[:, 1:]                                   # (B, T-1)


# ----------------------------------------------------------------------------- Eq. (6)
def eq06_attention_memory(prev: Tensor | None, a_class: Tensor, beta: float) -> Tensor:
    r"""Eq. (6), §3.1: recycling class attention memory.

    .. math:: A_m^l = (1 - \beta)A_m^{l-1} + \beta A_{class}^l

    Called at every layer. At the first layer there is no :math:`A_m^0`: pass ``prev=None`` and
    :math:`A_m^1 = A_{class}^1`. Unrolled, :math:`A_m^l = (1-\beta)^{l-1} A_{class}^1 +
    \sum_{j=2}^{l} \beta (1-\beta)^{l-j} A_{class}^j` (for a constant β): a convex combination.

    Args:
        prev: ``(B, T-1)`` :math:`A_m^{l-1}` aligned with ``a_class`` (after pruning, use
            ``PruneResult.memory``), or None at the first layer.
        a_class: ``(B, T-1)`` :math:`A_{class}^l` from :func:`eq05_class_attention`.
        beta: β in [0, 1]; β = 1 keeps no memory. A per-layer schedule is the caller's.
    Returns:
        ``(B, T-1)`` :math:`A_m^l`.

    Deviation (E6-1): the paper does not say what :math:`A_m^0` is; we start the memory at layer 1
    with :math:`A_{class}^1` (the authors' code does the same).
    """
    if prev is None:
        return a_class                                                         # (B, T-1): A_m^1
    return (1.0 - beta) * prev + beta * a_class                                # (B, T-1)


# ----------------------------------------------------------------------------- Eq. (7)
def eq07_num_kept(n: Tensor, r_ee: float, r_ee_means: str = "exit") -> Tensor:
    r"""Eq. (7), §3.1: how many informative tokens each sample keeps.

    .. math:: m = N(1 - R_{ee})

    Args:
        n: ``(B,)`` integer: N, the current number of non-CLS real tokens of each sample.
        r_ee: :math:`R_{ee}` in [0, 1], the "sequence EE ratio": the fraction that exits.
        r_ee_means: ``"exit"`` (paper) or ``"keep"`` (authors' code: m = ⌈N R⌉, the kept fraction).
    Returns:
        ``(B,)`` long m, in [1, N] when :math:`R_{ee} < 1` and N ≥ 1 ("exit"); m = N at
        :math:`R_{ee} = 0`, m = 0 at :math:`R_{ee} = 1`.

    Deviation (E7-1): N(1 − R) is rarely an integer; we take the ceiling (the authors' code does too),
    computed exactly on the decimal the float stands for (``Fraction(repr(r_ee))``: 0.7 is read as
    7/10), in integers: so N = 10, R = 0.7 gives m = 3 although 10 * (1 - 0.7) =
    3.0000000000000004 in floats. (A non-terminating R such as 1/3 is read as its repr
    0.3333333333333333, so N = 3 gives m = 3.) ``mpee_ref/numpy_ref`` uses the same rule.
    """
    m = _num_kept([int(n_b) for n_b in n.tolist()], r_ee, r_ee_means)
    return torch.tensor(m, dtype=torch.long, device=n.device)                  # (B,)


def _num_kept(ns: list[int], r_ee: float, r_ee_means: str) -> list[int]:
    """Eq. (7)'s m per sample as Python integers: :math:`\\lceil N (1 - R_{ee}) \\rceil` on the exact decimal."""
    r = Fraction(repr(float(r_ee)))                                            # exact decimal, e.g. 7/10
    kept_fraction = 1 - r if r_ee_means == "exit" else r                      # 1 - R_ee (paper)
    p, q = kept_fraction.numerator, kept_fraction.denominator
    return [-((-n * p) // q) for n in ns]  # ceil(N p / q) in Python integers: no float rounding, no overflow


def eq07_top_m(scores: Tensor, valid: Tensor, m: Tensor) -> Tensor:
    r"""Eq. (7), §3.1: "we keep m informative tokens :math:`h_{in}^l` for m-highest score in
    :math:`A_m^l`".

    Exactly ``m[b]`` of the valid positions of row b are kept: those with the highest score; on
    equal scores the lower position wins (a stable descending sort). Invalid positions (padding)
    are never kept.

    Args:
        scores: ``(B, N)`` real scores (:math:`A_m^l`). Not differentiated through.
        valid: ``(B, N)`` bool, True for real tokens.
        m: ``(B,)`` integer, 0 <= m[b] <= valid[b].sum().
    Returns:
        ``(B, N)`` bool: the kept positions.
    """
    N = scores.shape[1]
    s = scores.detach()                                                        # (B, N)
    # 1) stable sort by score, highest first (ties: lower position first);
    by_score = torch.sort(s, dim=1, descending=True, stable=True).indices      # (B, N)
    # 2) stable sort of that order by validity, valid first: the score order survives within.
    valid_sorted = valid.gather(1, by_score).to(torch.uint8)                   # (B, N)
    by_valid = torch.sort(valid_sorted, dim=1, descending=True, stable=True).indices   # (B, N)
    order = by_score.gather(1, by_valid)                                       # (B, N) best valid first
    rank_ok = torch.arange(N, device=s.device)[None, :] < m.to(s.device)[:, None]      # (B, N)
    return torch.zeros_like(valid).scatter(1, order, rank_ok)                  # (B, N)


# ----------------------------------------------------------------------------- Eq. (8)
def eq08_fuse(tokens: Tensor, alpha: Tensor, fuse: Tensor) -> Tensor:
    r"""Eq. (8), §3.1, first line: the EE fusion token.

    .. math:: h_{eef}^l = \alpha_i h_i^l

    read as :math:`h_{eef}^l = \sum_{i \in \text{exited}} \alpha_i h_i^l`.

    Args:
        tokens: ``(B, N, D)`` non-CLS token states :math:`h_i^l` (rows of :math:`\tilde Z_l`).
        alpha: ``(B, N)`` weights :math:`\alpha_i`.
        fuse: ``(B, N)`` bool, True for the p less-informative tokens that exit.
    Returns:
        ``(B, D)``: :math:`h_{eef}^l` (zeros for a sample with nothing to fuse).

    Deviation (E8-1): the printed line has no sum over i; a single token built from the p exited tokens
    ("fused into an EE fusion token") needs one. Entries outside ``fuse`` are masked out before
    multiplying, so non-finite padding rows cannot leak in.
    """
    w = torch.where(fuse, alpha, torch.zeros_like(alpha))                      # (B, N): α_i on exited i
    h = torch.where(fuse[..., None], tokens, torch.zeros_like(tokens))         # (B, N, D)
    return torch.einsum("bn,bnd->bd", w.to(tokens.dtype), h)                   # (B, D): Σ_i α_i h_i


@dataclass(frozen=True)
class PruneResult:
    r"""What :func:`prune_tokens` returns (N = input non-CLS length, T' = output length).

    Attributes:
        hidden: ``(B, T', D)`` :math:`\tilde Z_l = [h_{CLS}; h_{in} \text{ (position order)};
            h_{eef}?; \text{padding}]`; padding rows are 0.
        attention_mask: ``(B, T')`` same dtype as the input mask, 1 real / 0 padding.
        memory: ``(B, T'-1)`` :math:`A_m^l` aligned with ``hidden[:, 1:]``; 0 at padding.
        source_index: ``(B, T'-1)`` long: for each output token, its index 0..N-1 on the input's
            non-CLS axis; ``SOURCE_FUSED`` (-1) for the fused token; ``SOURCE_PAD`` (-2) for padding.
        kept: ``(B, N)`` bool, the tokens kept (:math:`h_{in}`).
        fused: ``(B, N)`` bool, the tokens that exited (into :math:`h_{eef}`, or dropped when
            ``fusion="drop"``).
        alpha: ``(B, N)`` the :math:`\alpha_i` used (0 where not fused, all 0 for ``"drop"``).
        num_kept: ``(B,)`` long, m.
    """

    hidden: Tensor
    attention_mask: Tensor
    memory: Tensor
    source_index: Tensor
    kept: Tensor
    fused: Tensor
    alpha: Tensor
    num_kept: Tensor


def prune_tokens(hidden: Tensor, attention_mask: Tensor, memory: Tensor, r_ee: float, *,
                 r_ee_means: str = "exit", fusion: str = "memory", fused_memory: str = "sum",
                 n_base: Tensor | None = None, select: str = "top", memory_alignment: str = "gather",
                 fused_mean_count: Tensor | None = None) -> PruneResult:
    r"""Eqs. (7)-(8), §3.1: keep the m best tokens, fuse the p = N − m others, splice.

    .. math::
        m = N(1 - R_{ee}), \qquad h_{eef}^l = \sum_{i} \alpha_i h_i^l, \qquad
        \tilde{Z}_l = \text{Concat}[h_{CLS}^l; h_{in}^l; h_{eef}^l]

    Args:
        hidden: ``(B, T, D)`` :math:`\tilde Z_l` (MHSA sub-layer output), [CLS] at 0.
        attention_mask: ``(B, T)`` 1 real / 0 padding; column 0 must be 1.
        memory: ``(B, T-1)`` :math:`A_m^l` (Eq. 6) on the non-CLS tokens.
        r_ee: :math:`R_{ee}` in [0, 1]; r_ee_means: ``"exit"`` (paper) / ``"keep"`` (authors).
        fusion: ``"memory"`` (α_i = A_m^l[i]), ``"normalised"`` (EViT) or ``"drop"`` (w/o EE-fusion).
        fused_memory: the fused token's A_m entry, ``"sum"`` of the fused scores or ``"mean"`` (authors).
        n_base: ``(B,)`` or None: m from this length (e.g. the original one), clipped to N.
        select: ``"top"`` keeps the m highest-scoring tokens (the method); ``"bottom"`` keeps the m
            lowest (the paper's Fig. 5 control experiment). Ties go to the lower position either way.
        memory_alignment: ``"gather"`` (default): kept tokens in position order, each with its own
            memory entry. ``"truncate"`` (authors): kept tokens in selection-score order, output memory
            slot j < m keeps the input's entry j (not its token's); applied even where nothing exits.
        fused_mean_count: ``(B,)`` or None: ``fused_memory="mean"`` divides by it, not p (authors: padded slots).
    Returns:
        :class:`PruneResult`, T' = 1 + max_b(m_b + [b has a fused token]). If no sample prunes a token
        and ``memory_alignment="gather"``, the inputs come back as they are (same length T). Unpadded rows
        that all keep the same m (any batch of one) take :func:`_prune_full_rows`: the same tensors, faster.

    Deviation (E8-2, E6-2): kept tokens stay in position order with their own memory entries (the
    authors keep score order and truncate the memory: ``memory_alignment="truncate"``; without re-added
    position embeddings the order changes nothing else). A sample with p = 0 gets no fused token.
    """
    B, T, D = hidden.shape
    m_all = _uniform_num_kept(T - 1, n_base, r_ee, r_ee_means) if memory_alignment == "gather" else None
    if m_all is not None and m_all < T - 1 and bool(attention_mask.all()):   # no padding: a third of the ops
        return _prune_full_rows(hidden, attention_mask.dtype, memory, m_all, select, fusion, fused_memory,
                                fused_mean_count)
    valid = attention_mask[:, 1:] != 0                                         # (B, N)
    n = valid.sum(dim=1)                                                       # (B,) N per sample
    m = eq07_num_kept(n if n_base is None else n_base, r_ee, r_ee_means).to(n.device)   # (B,)
    m = m if n_base is None else torch.minimum(m, n)                           # (B,) clipped to N
    p = n - m                                                                  # (B,)
    truncate = memory_alignment == "truncate"
    if not truncate and not bool((p > 0).any()):  # nothing exits (m = N everywhere): no sort needed
        return _unchanged(hidden, attention_mask, memory, valid, m)
    # ---- Eq. (7): keep the m best tokens h_in, the p others exit
    select_score = memory if select == "top" else -memory                     # (B, N)
    keep = eq07_top_m(select_score, valid, m)                                  # (B, N)
    exited = valid & ~keep                                                     # (B, N): p tokens
    # ---- Eq. (8), first line: α_i and h_eef, and the fused token's memory entry
    score = torch.where(exited, memory, torch.zeros_like(memory))              # (B, N)
    alpha = _fusion_weights(score, fusion)                                     # (B, N)
    has_fused = (p > 0) & (fusion != "drop")                                   # (B,)
    h_eef = eq08_fuse(hidden[:, 1:], alpha, exited) if fusion != "drop" else hidden.new_zeros(B, D)  # (B, D)
    mem_eef = _fused_memory(score, p, fused_memory, fused_mean_count)          # (B,)
    # ---- Eq. (8), second line: Z~_l = Concat[h_CLS; h_in; h_eef] + right padding
    kept_first = _kept_order(keep, select_score, truncate)                     # (B, N) kept tokens first
    return _splice(hidden, attention_mask, memory, kept_first, has_fused, h_eef, mem_eef, truncate,
                   kept=keep, fused=exited, alpha=alpha, num_kept=m)


def _unchanged(hidden: Tensor, attention_mask: Tensor, memory: Tensor, valid: Tensor, m: Tensor) -> PruneResult:
    """:func:`prune_tokens` where no token exits: the inputs themselves, every real token kept in place."""
    arange_n = torch.arange(valid.shape[1], device=hidden.device)              # (N,)
    return PruneResult(
        hidden=hidden, attention_mask=attention_mask, memory=memory,
        source_index=torch.where(valid, arange_n[None, :], torch.full_like(valid, SOURCE_PAD, dtype=torch.long)),
        kept=valid.clone(), fused=torch.zeros_like(valid), alpha=torch.zeros_like(memory), num_kept=m)


def _fusion_weights(score: Tensor, fusion: str) -> Tensor:
    r""":math:`\alpha_i` of Eq. (8) from ``score`` ``(B, N)`` (:math:`A_m^l` on the exited tokens, 0 elsewhere):
    ``"memory"`` the score itself (paper and authors), ``"normalised"`` divided by the exited tokens' sum
    (EViT), ``"drop"`` 0 (no fused token: the "w/o EE-fusion" ablation)."""
    if fusion == "memory":
        return score                                                           # (B, N): α_i = A_m^l[i]
    if fusion == "normalised":
        total = score.sum(dim=1, keepdim=True)                                 # (B, 1)
        return score / torch.where(total > 0, total, torch.ones_like(total))   # (B, N)
    return torch.zeros_like(score)                                             # (B, N): "drop"


def _fused_memory(score: Tensor, p: Tensor | None, fused_memory: str, fused_mean_count: Tensor | None) -> Tensor:
    """The fused token's :math:`A_m^l` entry ``(B,)``: the sum of the exited scores (so Σ memory is unchanged),
    or their mean over p (or over ``fused_mean_count``, the authors' count of exited padded slots)."""
    total = score.sum(dim=1)                                                   # (B,) Σ exited scores
    if fused_memory == "sum":
        return total
    count = p if fused_mean_count is None else fused_mean_count.to(p.device)  # (B,)
    return total / count.clamp_min(1).to(total.dtype)                          # (B,)


def _kept_order(keep: Tensor, select_score: Tensor, truncate: bool) -> Tensor:
    """``(B, N)`` input indices, the kept tokens first: in position order (``gather``) or by selection
    score, best first, ties to the lower position (``truncate``, the authors'); then the others."""
    if truncate:
        s_sel = torch.where(keep, select_score.detach(), torch.full_like(select_score, -math.inf))
        return torch.sort(s_sel, dim=1, descending=True, stable=True).indices   # (B, N)
    arange_n = torch.arange(keep.shape[1], device=keep.device)                 # (N,)
    return torch.where(keep, arange_n, arange_n + keep.shape[1]).argsort(dim=1)   # (B, N)


def _splice(hidden: Tensor, attention_mask: Tensor, memory: Tensor, kept_first: Tensor, has_fused: Tensor,
            h_eef: Tensor, mem_eef: Tensor, truncate: bool, *, kept: Tensor, fused: Tensor, alpha: Tensor,
            num_kept: Tensor) -> PruneResult:
    r"""Eq. (8), second line: row b of :math:`\tilde Z_l` is ``[CLS, kept_first[b, :m_b], h_eef (if
    has_fused_b), zero padding]``, m = ``num_kept``; ``truncate``: memory slot j < m keeps the input's
    entry j (authors). ``kept``, ``fused``, ``alpha`` pass through to the :class:`PruneResult`."""
    B, T, D = hidden.shape
    N, m = T - 1, num_kept
    length = m + has_fused.long()                                              # (B,) non-CLS tokens left
    t_out = int(length.max())                                                  # T' - 1
    j = torch.arange(t_out, device=hidden.device)[None, :]                     # (1, T'-1)
    m_col, fused_col = m[:, None], has_fused[:, None]                          # (B, 1)
    # index into the extended axis [h_1..h_N, h_eef, 0]: i < N kept token, N fused, N + 1 padding
    src = torch.where(j < m_col, kept_first[:, :t_out],
                      torch.where((j == m_col) & fused_col, N, N + 1))         # (B, T'-1)
    ext_h = torch.cat([hidden[:, 1:], h_eef[:, None], hidden.new_zeros(B, 1, D)], dim=1)   # (B, N+2, D)
    tokens = ext_h.gather(1, src[..., None].expand(B, t_out, D))               # (B, T'-1, D)
    ext_m = torch.cat([memory, mem_eef[:, None].to(memory.dtype), memory.new_zeros(B, 1)], dim=1)  # (B, N+2)
    mem_src = torch.where(j < m_col, j.expand(B, t_out), src) if truncate else src   # (B, T'-1)
    new_mask = torch.arange(t_out + 1, device=hidden.device)[None, :] < (1 + length)[:, None]    # (B, T')
    return PruneResult(
        hidden=torch.cat([hidden[:, :1], tokens], dim=1),                      # (B, T', D)
        attention_mask=new_mask.to(attention_mask.dtype),                      # (B, T')
        memory=ext_m.gather(1, mem_src),                                       # (B, T'-1)
        source_index=torch.where(src < N, src, torch.where(src == N, SOURCE_FUSED, SOURCE_PAD)),
        kept=kept, fused=fused, alpha=alpha, num_kept=m)


def _uniform_num_kept(N: int, n_base: Tensor | None, r_ee: float, r_ee_means: str) -> int | None:
    """m when every row has N real non-CLS tokens and all rows keep the same m (clipped to N), else None."""
    bases = [N] if n_base is None else [int(nb) for nb in n_base.tolist()]
    ms = {min(m, N) for m in _num_kept(bases, r_ee, r_ee_means)}
    return ms.pop() if len(ms) == 1 else None


def _prune_full_rows(hidden: Tensor, mask_dtype: torch.dtype, memory: Tensor, m: int, select: str, fusion: str,
                     fused_memory: str, fused_mean_count: Tensor | None) -> PruneResult:
    r""":func:`prune_tokens` for rows without padding that all keep the same m < N (every batch of one).

    The same steps on dense ``(B, N)`` rows: the m best positions by a stable sort, put back in position
    order, gathered; Eq. 8's sum over all N rows (α is 0 on the kept ones, and no row is padding). At batch 1
    a pruning layer is bound by the number of small tensor operations, not their size: this path runs
    about a third of the general path's (``tools/bench_mpee.py --layer-times``), and returns the same
    tensors (``tests/test_eq08_fusion.py`` checks it against the general path on a padded copy).
    """
    B, T, D = hidden.shape
    N = T - 1
    select_score = (memory if select == "top" else -memory).detach()          # (B, N)
    best_first = torch.sort(select_score, dim=1, descending=True, stable=True).indices   # (B, N) ties: lower first
    kept_index = best_first[:, :m].sort(dim=1).values                          # (B, m) in position order
    keep = torch.zeros_like(memory, dtype=torch.bool).scatter_(1, kept_index, True)     # (B, N): Eq. 7
    exited = ~keep                                                             # (B, N): p = N - m tokens
    score = memory.masked_fill(keep, 0.0)                                      # (B, N): A_m on exited tokens
    alpha = _fusion_weights(score, fusion)                                     # (B, N)
    num_kept = torch.full((B,), m, dtype=torch.long, device=memory.device)     # (B,)
    tokens = hidden[:, 1:].gather(1, kept_index[..., None].expand(B, m, D))    # (B, m, D): h_in
    kept_memory = memory.gather(1, kept_index)                                 # (B, m)
    if fusion == "drop":                                                       # no fused token
        parts, memories, source = [hidden[:, :1], tokens], [kept_memory], kept_index
    else:
        h_eef = torch.einsum("bn,bnd->bd", alpha, hidden[:, 1:])               # (B, D): Σ_i α_i h_i
        p = None if fused_memory == "sum" else N - num_kept                    # (B,)
        mem_eef = _fused_memory(score, p, fused_memory, fused_mean_count)      # (B,)
        parts, memories = [hidden[:, :1], tokens, h_eef[:, None]], [kept_memory, mem_eef[:, None]]
        source = torch.cat([kept_index, num_kept.new_full((B, 1), SOURCE_FUSED)], dim=1)    # (B, m+1)
    width = source.shape[1]                                                    # T' - 1
    return PruneResult(hidden=torch.cat(parts, dim=1),                         # (B, T', D)
                       attention_mask=torch.ones(B, 1 + width, dtype=mask_dtype, device=memory.device),
                       memory=torch.cat(memories, dim=1), source_index=source,  # (B, T'-1)
                       kept=keep, fused=exited, alpha=alpha, num_kept=num_kept)


# ----------------------------------------------------------------------------- Eq. (7) over padded slots
def padded_widths(pad_to: int, prune_layers: tuple[int, ...], num_layers: int, r_ee: float,
                  r_ee_means: str = "exit", fused: bool = True) -> tuple[int, ...]:
    r"""Eq. (7) in the authors' padding regime: the padded width :math:`W_l` entering each layer.

    The authors pad every input to ``pad_to`` (128) slots and apply Eq. (7) to the slots, padding
    included: at a pruning layer :math:`m = \lceil r (W_l - 1) \rceil` non-[CLS] slots are kept
    (r the kept fraction) and one fused slot is appended, so :math:`W_{l+1} = m + 2`
    (:math:`m + 1` without fusion); elsewhere :math:`W_{l+1} = W_l`. A sample with n real tokens keeps
    all of them while :math:`n - 1 \le m` (only padding exits); ``prune_tokens(..., n_base=W_l - 1)``
    reproduces that on the unpadded sample (m is clipped to its real N).

    Args:
        pad_to: the padded length (authors: 128), >= 2.  prune_layers: 1-based pruning layers.
        num_layers: L.  r_ee, r_ee_means: as in :func:`eq07_num_kept`.
        fused: whether a pruning layer appends a fused token (False: the "w/o EE-fusion" ablation).
    Returns:
        ``(W_1, ..., W_L)``: for 128 slots, layers 4/7/10 and 70% kept: 128 (layers 1-4), 91 (5-7),
        65 (8-10), 47 (11-12).

    Deviation (E7-2, M6): m is the exact ceiling of :func:`eq07_num_kept`; the authors take the ceiling of a
    float product, which agrees at every width reached from 128 with r = 0.7 (tested). A pruning
    layer where :math:`m \ge W_l - 1` changes nothing (the authors' code then loses its memory).
    """
    widths, W = [], pad_to
    for l in range(1, num_layers + 1):
        widths.append(W)
        if l in prune_layers:
            m = int(eq07_num_kept(torch.tensor([W - 1], device="cpu"), r_ee, r_ee_means)[0])
            if m < W - 1:
                W = m + 1 + int(fused)                                         # [CLS] + kept (+ fused)
    return tuple(widths)


__all__ = ["eq05_class_attention", "all_token_attention", "eq06_attention_memory", "eq07_num_kept",
           "eq07_top_m", "eq08_fuse", "PruneResult", "prune_tokens", "padded_widths",
           "R_EE_MEANINGS", "FUSIONS", "FUSED_MEMORIES", "MEMORY_ALIGNMENTS", "TOKEN_SELECTS"]
