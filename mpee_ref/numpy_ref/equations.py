r"""MPEE's Eqs. (1)-(14) in NumPy: an independent port of the torch reference, function for function.

Each function mirrors the torch function of the same name (``mpee_ref/encoder/equations.py``,
``token_exit``, ``layer_exit``, ``losses``) minus dropout and autograd; it passes the same golden
vectors (tests/vectors, see docs/PORTING.md). NumPy only: no torch import anywhere in this package.

Shape legend (as in the torch code): B batch, T tokens incl. [CLS] (N = T - 1 non-CLS), D hidden,
H heads, dh head size, I FFN size (HF's intermediate_size), L layers/exits, C classes, k teacher
width. F is the entropy threshold of the exit test only.
Weights use the PyTorch layout ``(out_features, in_features)``: the paper's ``Z W`` is ``z @ w.T``.
Every function works in the dtype of its inputs (float64 or float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


# ----------------------------------------------------------------------------- building blocks
def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    r""":math:`x W^\top + b`; x ``(..., in)``, weight ``(out, in)``, bias ``(out,)`` -> ``(..., out)``."""
    # one 2-D BLAS product: NumPy's stacked (3-D) matmul with a transposed operand can miss BLAS
    y = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(*x.shape[:-1], weight.shape[0])   # (..., out)
    return y if bias is None else y + bias


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    r""":math:`\gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta` over the last axis, *biased* variance."""
    mu = x.mean(axis=-1, keepdims=True)                                    # (..., 1)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)                     # (..., 1) biased: / D, not D - 1
    return (x - mu) / np.sqrt(var + eps) * weight + bias                   # (..., D)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    r"""GELU (σ of Eq. 4). ``"none"``: exact :math:`\tfrac12 x(1 + \mathrm{erf}(x/\sqrt2))` (BERT's "gelu");
    ``"tanh"``: :math:`\tfrac12 x(1 + \tanh(\sqrt{2/\pi}(x + 0.044715x^3)))` (HF's "gelu_new")."""
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: subtract the max first (a masked entry, max + finfo.min, becomes exp(-huge) = 0)."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log-softmax: ``x - max - log(sum(exp(x - max)))``."""
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def attention_mask_bias(attention_mask: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``(B, T)`` 1/0 key mask -> ``(B, 1, 1, T)`` additive bias: 0 for real keys, ``finfo(dtype).min`` for padding."""
    keep = attention_mask.astype(dtype)                                    # (B, T)
    return ((1.0 - keep) * np.finfo(dtype).min)[:, None, None, :]          # (B, 1, 1, T)


def embeddings(input_ids: np.ndarray, token_type_ids: np.ndarray, position_ids: np.ndarray,
               word: np.ndarray, position: np.ndarray, token_type: np.ndarray,
               ln_weight: np.ndarray, ln_bias: np.ndarray, eps: float) -> np.ndarray:
    r""":math:`h^0 = \mathrm{LN}(E_{word}[x] + E_{pos}[p] + E_{type}[s])`; ids ``(B, T)`` -> ``(B, T, D)``."""
    x = word[input_ids] + position[position_ids] + token_type[token_type_ids]   # (B, T, D)
    return layer_norm(x, ln_weight, ln_bias, eps)


# ----------------------------------------------------------------------------- Eqs. (1)-(4)
def eq03_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                   mask_bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    r"""Eq. (3): :math:`\mathrm{softmax}(Q_h K_h^T/\sqrt{d_h}) V_h` for all heads.
    q, k, v ``(B, H, T, dh)``; returns context ``(B, H, T, dh)``, probs ``(B, H, T, T)``."""
    dh = q.shape[-1]
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(dh)                    # (B, H, T, T)
    if mask_bias is not None:
        scores = scores + mask_bias                                        # (B, H, T, T)
    probs = softmax(scores, axis=-1)                                       # (B, H, T, T)
    return probs @ v, probs                                                # (B, H, T, dh), (B, H, T, T)


def eq02_mhsa(z: np.ndarray, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads: int,
              mask_bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    r"""Eq. (2): :math:`\mathrm{Concat}[\mathrm{HA}_1; \dots; \mathrm{HA}_H] W^o`; head h owns rows
    ``h*dh:(h+1)*dh`` of each ``(D, D)`` weight. z ``(B, T, D)`` -> out ``(B, T, D)``, probs ``(B, H, T, T)``."""
    B, T, D = z.shape
    H, dh = num_heads, D // num_heads

    def heads(x: np.ndarray) -> np.ndarray:                                # (B, T, D) -> (B, H, T, dh)
        return x.reshape(B, T, H, dh).transpose(0, 2, 1, 3)

    q, k, v = (heads(linear(z, w, b)) for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
    context, probs = eq03_attention(q, k, v, mask_bias)                    # (B, H, T, dh), (B, H, T, T)
    concat = context.transpose(0, 2, 1, 3).reshape(B, T, D)                # (B, T, D)
    return linear(concat, w_o, b_o), probs


def eq04_ffn(z_tilde: np.ndarray, w_1, b_1, w_2, b_2, approximate: str = "none") -> np.ndarray:
    r"""Eq. (4): :math:`\sigma(\tilde Z W_1 + b_1) W_2 + b_2`; ``(B, T, D)`` -> ``(B, T, D)``."""
    return linear(gelu(linear(z_tilde, w_1, b_1), approximate), w_2, b_2)   # (B, T, I) -> (B, T, D)


def eq01_attention_sublayer(h: np.ndarray, p: dict, num_heads: int, eps: float,
                            mask_bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    r"""Eq. (1), first half: :math:`\tilde Z_l = \mathrm{LN}(h + \mathrm{MHSA}(h))` (pruning acts on this)."""
    attn, probs = eq02_mhsa(h, p["w_q"], p["b_q"], p["w_k"], p["b_k"], p["w_v"], p["b_v"],
                            p["w_o"], p["b_o"], num_heads, mask_bias)
    return layer_norm(h + attn, p["ln1_w"], p["ln1_b"], eps), probs       # (B, T, D), (B, H, T, T)


def eq01_ffn_sublayer(z_tilde: np.ndarray, p: dict, eps: float, approximate: str = "none") -> np.ndarray:
    r"""Eq. (1), second half: :math:`h^l = \mathrm{LN}(\tilde Z_l + \mathrm{FFN}(\tilde Z_l))`."""
    ffn = eq04_ffn(z_tilde, p["w_1"], p["b_1"], p["w_2"], p["b_2"], approximate)
    return layer_norm(z_tilde + ffn, p["ln2_w"], p["ln2_b"], eps)          # (B, T', D)


def eq01_transformer_layer(h: np.ndarray, p: dict, num_heads: int, eps: float,
                           mask_bias: np.ndarray | None, approximate: str = "none"):
    r"""Eq. (1): one post-LN BERT layer, no pruning. Returns h^l ``(B, T, D)``, probs ``(B, H, T, T)``."""
    z_tilde, probs = eq01_attention_sublayer(h, p, num_heads, eps, mask_bias)
    return eq01_ffn_sublayer(z_tilde, p, eps, approximate), probs


# ----------------------------------------------------------------------------- Eqs. (5)-(8)
def eq05_class_attention(probs: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    r"""Eq. (5): :math:`A_{class}^l` = the [CLS] row of the probabilities over non-CLS keys, mean over heads.
    probs ``(B, H, T, T)`` -> ``(B, T-1)``, 0 at padded keys."""
    a = probs[:, :, 0, 1:].mean(axis=1)                                    # (B, T-1)
    if attention_mask is None:
        return a
    return a * (attention_mask[:, 1:] != 0).astype(a.dtype)


def all_token_attention(probs: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    """Table 3's alternative to Eq. (5): attention each key receives, averaged over real queries and heads."""
    B, _, T, _ = probs.shape
    valid = np.ones((B, T), bool) if attention_mask is None else attention_mask != 0
    w = valid.astype(probs.dtype)                                          # (B, T)
    n_real = np.maximum(w.sum(axis=1), 1.0)                                # (B,)
    received = (probs * w[:, None, :, None]).sum(axis=2).mean(axis=1) / n_real[:, None]   # (B, T)
    return received[:, 1:] * w[:, 1:]                                      # (B, T-1)


def eq06_attention_memory(prev: np.ndarray | None, a_class: np.ndarray, beta: float) -> np.ndarray:
    r"""Eq. (6): :math:`A_m^l = (1-\beta)A_m^{l-1} + \beta A_{class}^l`; first layer :math:`A_m^1 = A_{class}^1`."""
    return a_class if prev is None else (1.0 - beta) * prev + beta * a_class


def eq07_num_kept(n: np.ndarray, r_ee: float, r_ee_means: str = "exit") -> np.ndarray:
    r"""Eq. (7): :math:`m = \lceil N(1 - R_{ee}) \rceil` ("exit") or :math:`\lceil N R_{ee} \rceil` ("keep").

    The ceiling is exact on the decimal R_ee stands for (``Fraction(repr(r))``: 0.7 is 7/10), so
    N = 10, R = 0.7 gives 3 although ``10 * (1 - 0.7) = 3.0000000000000004`` in floats.
    """
    r = Fraction(repr(float(r_ee)))
    kept = 1 - r if r_ee_means == "exit" else r
    return np.array([-((-int(nb) * kept.numerator) // kept.denominator) for nb in np.asarray(n).tolist()],
                    dtype=np.int64)                                        # (B,)


def eq07_top_m(scores: np.ndarray, valid: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eq. (7): keep the ``m[b]`` valid positions of row b with the highest score; ties: lower position wins.
    scores ``(B, N)``, valid ``(B, N)`` bool, m ``(B,)`` -> ``(B, N)`` bool."""
    keep = np.zeros(scores.shape, bool)
    for b in range(scores.shape[0]):
        order = np.argsort(-scores[b], kind="stable")                      # highest first, stable on ties
        order = [i for i in order if valid[b, i]]                          # padding is never kept
        keep[b, order[: int(m[b])]] = True
    return keep


def eq08_fuse(tokens: np.ndarray, alpha: np.ndarray, fuse: np.ndarray) -> np.ndarray:
    r"""Eq. (8), first line: :math:`h_{eef} = \sum_{i\ \mathrm{exited}} \alpha_i h_i`.
    tokens ``(B, N, D)``, alpha/fuse ``(B, N)`` -> ``(B, D)``."""
    w = np.where(fuse, alpha, 0.0).astype(tokens.dtype)                    # (B, N)
    h = np.where(fuse[..., None], tokens, 0.0)                             # (B, N, D)
    return np.einsum("bn,bnd->bd", w, h)                                   # (B, D)


@dataclass(frozen=True)
class PruneResult:
    """Mirror of ``mpee_ref.token_exit.PruneResult`` (see there for the fields)."""

    hidden: np.ndarray
    attention_mask: np.ndarray
    memory: np.ndarray
    source_index: np.ndarray
    kept: np.ndarray
    fused: np.ndarray
    alpha: np.ndarray
    num_kept: np.ndarray


def prune_tokens(hidden: np.ndarray, attention_mask: np.ndarray, memory: np.ndarray, r_ee: float, *,
                 r_ee_means: str = "exit", fusion: str = "memory", fused_memory: str = "sum",
                 n_base: np.ndarray | None = None, select: str = "top", memory_alignment: str = "gather",
                 fused_mean_count: np.ndarray | None = None) -> PruneResult:
    r"""Eqs. (7)-(8): keep the m best tokens (``select="bottom"``: the m worst, Fig. 5's control), fuse the p = N − m others into one token, splice.

    Output row b: ``[CLS, kept tokens in position order, fused token (if p_b > 0 and fusion != "drop"),
    zero padding]``; T' = 1 + max_b(m_b + has_fused_b). If no sample drops a token the inputs come back.
    ``memory_alignment="truncate"`` (authors): kept tokens in selection-score order (ties: lower position)
    and output memory slot j < m keeps the *input's* entry j, not its token's; applied even where nothing exits.
    ``fused_mean_count`` ``(B,)``: with ``fused_memory="mean"``, divide the fused scores' sum by it instead of p
    (authors: every padded slot that exits, padding included).
    """
    N = hidden.shape[1] - 1
    valid = attention_mask[:, 1:] != 0                                     # (B, N)
    n = valid.sum(axis=1)                                                  # (B,)
    m = eq07_num_kept(n if n_base is None else n_base, r_ee, r_ee_means)   # (B,)
    if n_base is not None:
        m = np.minimum(m, n)
    sel = memory if select == "top" else -memory                           # (B, N) selection score
    keep = eq07_top_m(sel, valid, m)                                       # (B, N)
    exited = valid & ~keep                                                 # (B, N)
    p = n - m                                                              # (B,)
    truncate = memory_alignment == "truncate"
    if not truncate and not (p > 0).any():
        src = np.where(valid, np.arange(N)[None, :], -2)
        return PruneResult(hidden, attention_mask, memory, src, keep, exited, np.zeros_like(memory), m)
    score = np.where(exited, memory, 0.0).astype(memory.dtype)             # (B, N)
    alpha = _fusion_weights(score, fusion)                                 # (B, N)
    has_fused = (p > 0) & (fusion != "drop")                               # (B,)
    h_eef = eq08_fuse(hidden[:, 1:], alpha, exited)                        # (B, D)
    mem_eef = _fused_memory(score, p, fused_memory, fused_mean_count)      # (B,)
    return _splice(hidden, attention_mask, memory, sel, keep, m, has_fused, h_eef, mem_eef, truncate,
                   fused=exited, alpha=alpha)


def _fusion_weights(score: np.ndarray, fusion: str) -> np.ndarray:
    """Eq. (8)'s alpha from the exited tokens' scores ``(B, N)``: "memory", "normalised" or "drop"."""
    if fusion == "memory":
        return score
    if fusion == "normalised":
        total = score.sum(axis=1, keepdims=True)
        return score / np.where(total > 0, total, 1.0)
    return np.zeros_like(score)


def _fused_memory(score: np.ndarray, p: np.ndarray, fused_memory: str, fused_mean_count) -> np.ndarray:
    """The fused token's A_m entry ``(B,)``: sum of the exited scores, or their mean over p (or the given count)."""
    mem_eef = score.sum(axis=1)                                            # (B,)
    if fused_memory == "mean":
        count = p if fused_mean_count is None else np.asarray(fused_mean_count)
        mem_eef = mem_eef / np.maximum(count, 1).astype(mem_eef.dtype)
    return mem_eef


def _splice(hidden, attention_mask, memory, sel, keep, m, has_fused, h_eef, mem_eef, truncate: bool, *,
            fused: np.ndarray, alpha: np.ndarray) -> PruneResult:
    """Eq. (8), second line, row by row: ``[CLS, kept tokens, fused token?, zero padding]``
    (``fused`` and ``alpha`` pass through to the result)."""
    B, _, D = hidden.shape
    length = m + has_fused                                                 # (B,) non-CLS tokens left
    t_out = int(length.max())
    out_h = np.zeros((B, t_out + 1, D), hidden.dtype)
    out_mask = np.zeros((B, t_out + 1), attention_mask.dtype)
    out_mem = np.zeros((B, t_out), memory.dtype)
    src = np.full((B, t_out), -2, np.int64)
    for b in range(B):
        kept_idx = np.flatnonzero(keep[b])                                 # position order
        if truncate:                                                       # score order, best first
            kept_idx = np.array([i for i in np.argsort(-sel[b], kind="stable") if keep[b, i]], dtype=np.int64)
        k = len(kept_idx)
        out_h[b, 0] = hidden[b, 0]                                         # [CLS]
        out_h[b, 1:1 + k] = hidden[b, 1 + kept_idx]
        out_mem[b, :k] = memory[b, :k] if truncate else memory[b, kept_idx]   # truncate: slot j keeps entry j
        src[b, :k] = kept_idx
        if has_fused[b]:
            out_h[b, 1 + k] = h_eef[b]
            out_mem[b, k] = mem_eef[b]
            src[b, k] = -1
        out_mask[b, :1 + int(length[b])] = 1
    return PruneResult(out_h, out_mask, out_mem, src, keep, fused, alpha, m)


def padded_widths(pad_to: int, prune_layers: tuple[int, ...], num_layers: int, r_ee: float,
                  r_ee_means: str = "exit", fused: bool = True) -> tuple[int, ...]:
    r"""Eq. (7) over padded slots (authors): the width :math:`W_l` entering each layer, ``(W_1, ..., W_L)``.

    Inputs count as padded to ``pad_to``; a pruning layer keeps :math:`m = \lceil r(W_l - 1) \rceil` slots and
    appends the fused one, :math:`W_{l+1} = m + 2` (``m + 1`` without fusion); nothing changes where
    :math:`m \ge W_l - 1`. A sample with N real tokens keeps ``min(m, N)`` of them.
    """
    widths, W = [], pad_to
    for l in range(1, num_layers + 1):
        widths.append(W)
        if l in prune_layers:
            m = int(eq07_num_kept(np.array([W - 1]), r_ee, r_ee_means)[0])
            if m < W - 1:
                W = m + 1 + int(fused)                                     # [CLS] + kept (+ fused)
    return tuple(widths)


# ----------------------------------------------------------------------------- Eqs. (9)-(10), exit test
def eq09_exit_logits(h_cls: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    r"""Eq. (9) as printed: :math:`C_z = \tanh(W_z h_{CLS} + b_z)`; ``(B, D)`` -> ``(B, C)`` in [-1, 1]."""
    return np.tanh(linear(h_cls, weight, bias))


def eq09_pooled_exit_logits(h_cls: np.ndarray, w_pool, b_pool, w_cls, b_cls) -> np.ndarray:
    r"""Eq. (9) as the authors realise it: :math:`W_c \tanh(W_p h_{CLS} + b_p) + b_c`; ``(B, D)`` -> ``(B, C)``."""
    return linear(np.tanh(linear(h_cls, w_pool, b_pool)), w_cls, b_cls)


def eq10_classifier_memory(prev: np.ndarray | None, logits: np.ndarray, lam: float) -> np.ndarray:
    r"""Eq. (10): :math:`C_{zm}^l = (1-\lambda)C_{zm}^{l-1} + \lambda C_z^l`; :math:`C_{zm}^1 = C_z^1`."""
    return logits if prev is None else (1.0 - lam) * prev + lam * logits


def eq10_probabilities(memory: np.ndarray) -> np.ndarray:
    r"""Eq. (10): :math:`\hat y_z^l = \mathrm{softmax}(C_{zm}^l)`; ``(B, C)``."""
    return softmax(memory, axis=-1)


def exit_entropy(memory: np.ndarray) -> np.ndarray:
    """Entropy (nats) of softmax(C_zm) from log-softmax (finite for any logit size); ``(B, C)`` -> ``(B,)``."""
    log_p = log_softmax(memory, axis=-1)
    return -(np.exp(log_p) * log_p).sum(axis=-1)


def should_exit(entropy: np.ndarray, threshold: float) -> np.ndarray:
    """Exit where the entropy is strictly below F; ``(B,)`` bool."""
    return entropy < threshold


# ----------------------------------------------------------------------------- Eqs. (11)-(14)
def eq11_cross_entropy(memories: np.ndarray, labels: np.ndarray) -> np.ndarray:
    r"""Eq. (11): per-exit CE of softmax(C_zm^l), batch mean. memories ``(L, B, C)``, labels ``(B,)`` -> ``(L,)``."""
    log_p = log_softmax(memories, axis=-1)                                 # (L, B, C)
    B = memories.shape[1]
    return -log_p[:, np.arange(B), labels].mean(axis=1)                    # (L,)


def eq12_teacher(memories: np.ndarray, w_eta, b_eta, v) -> tuple[np.ndarray, np.ndarray]:
    r"""Eq. (12): :math:`\eta^l = \mathrm{softmax}_l(V^T \tanh(W_\eta C_{zm}^l + b_\eta))`,
    :math:`t = \sum_l \eta^l C_{zm}^l`. Returns t ``(B, C)``, eta ``(B, L)``."""
    scores = np.tanh(linear(memories, w_eta, b_eta)) @ v                   # (L, B)
    eta = softmax(scores, axis=0).T                                        # (B, L)
    return np.einsum("bl,lbc->bc", eta, memories), eta


def eq13_kd_loss(memories: np.ndarray, teacher: np.ndarray, tau: float, direction: str = "student_teacher",
                 reduction: str = "batchmean") -> np.ndarray:
    r"""Eq. (13): :math:`\tau^2 \mathrm{KL}(\mathrm{softmax}(C_{zm}^l/\tau) \| \mathrm{softmax}(t/\tau))` per exit, ``(L,)``.
    ``direction="teacher_student"`` swaps the KL arguments; ``reduction="mean"`` also divides by C."""
    C = memories.shape[-1]
    log_s = log_softmax(memories / tau, axis=-1)                           # (L, B, C)
    log_t = log_softmax(teacher / tau, axis=-1)[None]                      # (1, B, C)
    if direction == "student_teacher":
        kl = (np.exp(log_s) * (log_s - log_t)).sum(axis=-1)                # (L, B)
    else:
        kl = (np.exp(log_t) * (log_t - log_s)).sum(axis=-1)                # (L, B)
    per_exit = kl.mean(axis=1)
    if reduction == "mean":
        per_exit = per_exit / C
    return tau * tau * per_exit                                            # (L,)


def ce_exit_weights(num_exits: int, weighting: str = "uniform") -> np.ndarray:
    r"""Weights :math:`w_l` of Eq. (11)'s per-exit CE, ``(L,)``: ``"uniform"`` 1 (paper), ``"depth"``
    :math:`Ll/\sum_k k` (L12)."""
    if weighting not in ("uniform", "depth"):
        raise ValueError(f"ce_weighting must be 'uniform' or 'depth', got {weighting!r}")
    depth = np.arange(1, num_exits + 1, dtype=np.float64)                  # (L,)
    return np.ones(num_exits) if weighting == "uniform" else num_exits * depth / depth.sum()


def eq14_total_loss(l_ce: np.ndarray, l_kd: np.ndarray | None, *, gamma: float | None = None,
                    teacher_ce=None, ce_weights: np.ndarray | None = None):
    r"""Eq. (14): :math:`\sum_l CE_l + \sum_l KD_l`; with γ:
    :math:`\sum_l[(1-\gamma)CE_l + \gamma KD_l] + \gamma CE(t)`. ``ce_weights`` ``(L,)`` multiplies each :math:`CE_l` first (None = ones, the paper)."""
    if ce_weights is not None:
        l_ce = ce_weights * l_ce                                           # (L,)
    if gamma is None:
        return l_ce.sum() if l_kd is None else l_ce.sum() + l_kd.sum()
    return ((1.0 - gamma) * l_ce + gamma * l_kd).sum() + gamma * teacher_ce
