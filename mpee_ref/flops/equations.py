r"""FLOPs accounting and the acceleration ratio, Eq. (15), §4.2 (and the complexity note of §2).

Everything here is exact integer arithmetic on token counts: no tensors, no module state. The
numbers are what ``torch.utils.flop_counter.FlopCounterMode`` reports for the matrix products the
reference model executes (tests/test_eq15_flops.py checks that on a tiny encoder).

Shape letters follow ``mpee_ref/encoder/equations.py``: D hidden, I FFN size (HF's intermediate_size), L
layers, C classes (F is the entropy threshold only).

Our convention (``convention="ours"``, the default):

* FLOPs = 2 x multiply-accumulates of every matrix product actually executed, counted at each
  sample's real (unpadded) token count. Biases, softmax, LayerNorm, GELU, tanh, residual adds and
  embedding look-ups are not counted (FlopCounterMode does not count them either).
* Layer l (Eq. 1-4): MHSA on ``n_att`` tokens (incl. [CLS] and any fused token), FFN on ``n_ffn``
  tokens (after Eq. 8 pruning; the fused token counts as a token).
* Every executed layer evaluates its exit head (Eq. 9) on the [CLS] vector; fusing ``p`` tokens into
  one (Eq. 8, :math:`\sum_i \alpha_i h_i`) costs one ``(1, p) @ (p, D)`` product.
* The baseline ("the original model") is plain BERT with a classifier: L layers at the sample's real
  length, no pruning, one head (the final classifier, same head type).
* :math:`\rho = \sum_{samples} \mathrm{full} / \sum_{samples} \mathrm{executed}` (a ratio of sums).

``count_heads=False`` leaves every head out, on both sides; then a run with no pruning and no early
exit has :math:`\rho = 1` exactly. With heads (default) such a run costs ``L - 1`` heads more than the
baseline, so :math:`\rho < 1`. See docs/interpretation/flops.md.

Two accountings of the authors' code (JunKong5/MPEE, ``run_Ada_glue.py``; docs/interpretation/flops.md):

* ``"authors"`` (:func:`authors_layer_macs`, :func:`authors_sample_flops`, ``sample_flops(...,
  convention="authors")``): their per-layer formula (MACs, I = 4D assumed, no fused token, no heads)
  summed plainly over the layers a sample really runs, at real or padded lengths.
* ``"authors_code"`` (:func:`authors_code_lengths`, :func:`authors_code_sample_macs`): what their
  evaluation loop actually adds up, step for step: one attention block too many for a sample that
  exits before layer L, and the fused token left out of a pruning layer's FFN and of the next
  layer's attention.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Sequence

HEADS = ("pooler", "tanh")
CONVENTIONS = ("ours", "authors")            # of sample_flops; "authors_code" has its own functions


# ----------------------------------------------------------------------------- validation helpers
def _int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum``, else ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int >= {minimum}, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v}")
    return v


def _ints(name: str, values: Sequence[object], minimum: int) -> list[int]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    return [_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values)]


def _head(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    return head


# ----------------------------------------------------------------------------- our convention
def eq15_layer_flops(n_att: int, n_ffn: int, hidden: int, intermediate: int) -> int:
    r"""FLOPs of one encoder layer (Eqs. 1-4), the per-layer term of :math:`FLOPs_{exec}` in Eq. (15), §4.2.

    .. math:: \underbrace{4 \cdot 2 n_{att} D^2}_{Q,K,V,W^o} + \underbrace{2 n_{att}^2 D}_{QK^T}
              + \underbrace{2 n_{att}^2 D}_{\mathrm{softmax}(\cdot)V} + \underbrace{2 \cdot 2 n_{ffn} D I}_{W_1, W_2}

    The paper's §2 complexity :math:`O(4ND^2 + 2N^2D)` (MHSA) and :math:`O(8ND^2)` (FFN) counts
    MACs with I = 4D; this is twice that, for any I, with the FFN at the post-pruning length.

    Args:
        n_att: tokens entering MHSA (incl. [CLS] and any fused token), >= 1.
        n_ffn: tokens entering the FFN after Eq. (8), 1 <= n_ffn <= n_att.
        hidden: D.  intermediate: I.
    Returns:
        FLOPs (int).

    Deviation (F3): biases, softmax, LayerNorm, GELU and residual adds are not counted (O(nD) or
    O(n^2 H) element-wise work, which FlopCounterMode also leaves out).
    """
    n_att = _int("n_att", n_att)
    n_ffn = _int("n_ffn", n_ffn)
    D = _int("hidden", hidden)
    I = _int("intermediate", intermediate)
    if n_ffn > n_att:
        raise ValueError(f"n_ffn ({n_ffn}) must be <= n_att ({n_att}): pruning (Eq. 8) never adds tokens")
    projections = 4 * (2 * n_att * D * D)      # Q, K, V and W^o: (n_att, D) @ (D, D) each
    scores = 2 * n_att * n_att * D             # Q_h K_h^T for all H heads: H * n_att^2 * d_h MACs
    context = 2 * n_att * n_att * D            # softmax(.) V_h for all heads
    ffn = 2 * (2 * n_ffn * D * I)              # (n_ffn, D) @ (D, I) and (n_ffn, I) @ (I, D)
    return projections + scores + context + ffn


def head_flops(hidden: int, num_labels: int, head: str = "pooler") -> int:
    r"""FLOPs of one exit head on the [CLS] vector, Eq. (9), §3.2: :math:`C_z^l = \tanh(W_z^l h^l_{[CLS]} + b_z^l)`.

    ``head="pooler"`` (authors' code): Linear D->D, tanh, Linear D->C: :math:`2D^2 + 2DC`.
    ``head="tanh"`` (paper as printed): Linear D->C, tanh: :math:`2DC`.

    Args:
        hidden: D.  num_labels: C (J in the paper).  head: "pooler" or "tanh".
    Returns:
        FLOPs (int).
    """
    D = _int("hidden", hidden)
    C = _int("num_labels", num_labels)
    pooler = 2 * D * D if _head(head) == "pooler" else 0   # (1, D) @ (D, D)
    return pooler + 2 * D * C                              # (1, D) @ (D, C)


def fusion_flops(num_fused: int, hidden: int) -> int:
    r"""FLOPs of the EE fusion token, Eq. (8), §3.1: :math:`h_{eef}^l = \sum_i \alpha_i h_i^l` over p tokens.

    One ``(1, p) @ (p, D)`` product: :math:`2pD`; 0 when nothing is fused.

    Args:
        num_fused: p >= 0.  hidden: D.
    Returns:
        FLOPs (int).

    Deviation (E8-1, F6): the printed Eq. (8) omits the sum; the text ("fused into an EE fusion token
    according to the corresponding class attention weights") and the authors' code sum.
    """
    return 2 * _int("num_fused", num_fused, minimum=0) * _int("hidden", hidden)


def full_model_flops(n_tokens: int, num_layers: int, hidden: int, intermediate: int,
                     num_labels: int, head: str = "pooler", *, count_heads: bool = True) -> int:
    r""":math:`FLOPs_{total}` of one sample, Eq. (15), §4.2: the original model (plain BERT + classifier).

    .. math:: L \cdot \mathrm{layer}(n, n) + \mathrm{head}

    Args:
        n_tokens: the sample's real length n (incl. [CLS] and [SEP]).  num_layers: L.
        hidden: D.  intermediate: I.  num_labels: C.  head: "pooler" or "tanh".
        count_heads: if False the final classifier is left out (see :func:`sample_flops`).
    Returns:
        FLOPs (int).
    """
    L = _int("num_layers", num_layers)
    per_layer = eq15_layer_flops(n_tokens, n_tokens, hidden, intermediate)
    return L * per_layer + (head_flops(hidden, num_labels, head) if count_heads else 0)


@dataclass(frozen=True)
class SampleFlops:
    """FLOPs of one sample.

    Attributes:
        executed: :math:`FLOPs_{exec}`: every executed layer with its fusion and exit head.
        full: :math:`FLOPs_{total}`: the original model on the same input.
        per_layer: executed cost of each executed layer (layer + fusion + head), ``sum == executed``.
    """

    executed: int
    full: int
    per_layer: tuple[int, ...]


def _check_run(n_att: list[int], n_ffn: list[int], num_fused: list[int], n_tokens: int,
               num_layers: int) -> None:
    """One sample's token counts must describe a run the model can make (raises ValueError)."""
    e = len(n_att)
    if not (len(n_ffn) == e and len(num_fused) == e):
        raise ValueError(f"n_att, n_ffn and num_fused must have the same length (one entry per executed "
                         f"layer), got {e}, {len(n_ffn)}, {len(num_fused)}")
    if not 1 <= e <= num_layers:
        raise ValueError(f"the number of executed layers (len(n_att) = {e}) must be in [1, num_layers = "
                         f"{num_layers}]")
    if n_att[0] != n_tokens:
        raise ValueError(f"n_att[0] ({n_att[0]}) must equal n_tokens ({n_tokens}): layer 1 sees the whole input")
    for l in range(e):
        a, f, p = n_att[l], n_ffn[l], num_fused[l]
        if f > a:
            raise ValueError(f"n_ffn[{l}] ({f}) must be <= n_att[{l}] ({a}): pruning never adds tokens")
        if p > a - 1:
            raise ValueError(f"num_fused[{l}] ({p}) must be <= n_att[{l}] - 1 ({a - 1}): [CLS] is never fused")
        if p > 0 and f > a - p + 1:
            raise ValueError(f"n_ffn[{l}] ({f}) must be <= n_att[{l}] - num_fused[{l}] + 1 ({a - p + 1}): "
                             f"{p} tokens fused into one")
        if l + 1 < e and n_att[l + 1] != f:
            raise ValueError(f"n_att[{l + 1}] ({n_att[l + 1]}) must equal n_ffn[{l}] ({f}): layer {l + 2} "
                             f"attends over the tokens layer {l + 1} kept")


def sample_flops(n_att: Sequence[int], n_ffn: Sequence[int], num_fused: Sequence[int], n_tokens: int,
                 num_layers: int, hidden: int, intermediate: int, num_labels: int,
                 head: str = "pooler", *, count_heads: bool = True,
                 convention: str = "ours", final_head: bool = False) -> SampleFlops:
    r"""Executed and full FLOPs of one sample, the summands of Eq. (15), §4.2.

    .. math:: FLOPs_{exec} = \sum_{l=1}^{e} \big[\mathrm{layer}(n^{att}_l, n^{ffn}_l)
              + 2 p_l D + \mathrm{head}\big], \qquad
              FLOPs_{total} = L\,\mathrm{layer}(n, n) + \mathrm{head}

    with e the exit layer (``len(n_att)``). The sequences run over the executed layers and must
    chain: ``n_att[0] == n_tokens``, ``n_att[l+1] == n_ffn[l]``, ``n_ffn[l] <= n_att[l] - p_l + 1``
    when ``p_l > 0`` fused tokens become one.

    Args:
        n_att, n_ffn, num_fused: per executed layer, tokens at MHSA, tokens at the FFN, tokens fused (p).
        n_tokens: the sample's real length n.  num_layers: L.  hidden: D.  intermediate: I.
        num_labels: C.  head: "pooler" or "tanh".
        count_heads: False leaves all exit heads and the baseline's classifier out; then a run with
            no pruning and no exit (e = L) has executed == full, i.e. rho = 1.
        convention: "ours" (default) or "authors": :func:`authors_layer_macs` per layer (MACs, I = 4D
            assumed so ``intermediate`` is ignored), no fusion, no heads, baseline L layers at n_tokens.
        final_head: the sample ran layer L and was then predicted by a separate final classifier
            (``MPEEConfig.final_classifier``, the authors' path): one more head on the executed side
            (our convention with heads counted; counted in the last layer's ``per_layer`` entry).
    Returns:
        :class:`SampleFlops`.

    Bound (I >= 2, default convention): ``executed <= full + (e-1) head + 2D k1``, k1 = number of layers
    fusing a single token (p = 1), with equality iff e = L and no token ever leaves (n_att = n_ffn = n).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    a = _ints("n_att", n_att, 1)
    f = _ints("n_ffn", n_ffn, 1)
    p = _ints("num_fused", num_fused, 0)
    n = _int("n_tokens", n_tokens)
    L = _int("num_layers", num_layers)
    D = _int("hidden", hidden)
    I = _int("intermediate", intermediate)
    C = _int("num_labels", num_labels)
    _head(head)
    _check_run(a, f, p, n, L)
    if convention == "authors":
        per_layer = tuple(authors_layer_macs(a_l, f_l, D) for a_l, f_l in zip(a, f))
        return SampleFlops(executed=sum(per_layer), full=L * authors_layer_macs(n, n, D), per_layer=per_layer)
    if final_head and len(a) != L:
        raise ValueError(f"final_head=True needs a run through all {L} layers, got {len(a)} executed layers")
    h = head_flops(D, C, head) if count_heads else 0
    per_layer = tuple(eq15_layer_flops(a_l, f_l, D, I) + fusion_flops(p_l, D) + h
                      for a_l, f_l, p_l in zip(a, f, p))
    if final_head:                                   # the final classifier after layer L
        per_layer = per_layer[:-1] + (per_layer[-1] + h,)
    full = full_model_flops(n, L, D, I, C, head, count_heads=count_heads)
    return SampleFlops(executed=sum(per_layer), full=full, per_layer=per_layer)


def eq15_speedup(full: Sequence[int], executed: Sequence[int]) -> float:
    r"""Eq. (15), §4.2, the acceleration ratio over a set of samples, as the paper reports it:

    .. math:: \rho = \frac{\sum_{samples} FLOPs_{total}}{\sum_{samples} FLOPs_{exec}}

    Args:
        full: per-sample FLOPs of the original model.  executed: per-sample FLOPs executed (same length).
    Returns:
        rho (float; > 1 means faster than the original model).

    Deviation (F1, F2): the paper prints :math:`\rho = FLOPs_{exec} / FLOPs_{total}` but defines rho in words as
    "the rate of the total FLOPs by the original model to the FLOPs actually executed" and reports
    rho > 1; we follow the words and the results (as does the authors' code). A ratio of sums, not a
    mean of per-sample ratios.
    """
    fs = _ints("full", full, 0)
    es = _ints("executed", executed, 0)
    if len(fs) != len(es):
        raise ValueError(f"full and executed must have the same length, got {len(fs)} and {len(es)}")
    if not es:
        raise ValueError("full and executed are empty: rho needs at least one sample")
    total_exec = sum(es)
    if total_exec == 0:
        raise ValueError("sum(executed) is 0: rho is undefined")
    return sum(fs) / total_exec   # int / int: correctly rounded, no overflow


# ----------------------------------------------------------------------------- authors' convention
def authors_layer_macs(n_att: int, n_ffn: int, hidden: int) -> int:
    r"""One layer as the authors' code counts it (MACs, I = 4D), cf. §2 "Computational Complexity".

    .. math:: \underbrace{2 D n_{att}^2 + 4 D^2 n_{att}}_{\mathrm{MHSA}} + \underbrace{8 D^2 n_{ffn}}_{\mathrm{FFN}}

    Args:
        n_att: tokens at MHSA.  n_ffn: tokens at the FFN (<= n_att).  hidden: D.
    Returns:
        MACs (int); equals ``eq15_layer_flops(n_att, n_ffn, D, 4 * D) // 2``.
    """
    n_att = _int("n_att", n_att)
    n_ffn = _int("n_ffn", n_ffn)
    D = _int("hidden", hidden)
    if n_ffn > n_att:
        raise ValueError(f"n_ffn ({n_ffn}) must be <= n_att ({n_att}): pruning never adds tokens")
    return 2 * D * n_att * n_att + 4 * D * D * n_att + 8 * D * D * n_ffn


def _authors_args(exit_layer: int, prune_layers: Sequence[int], keep_ratio: float, num_layers: int,
                  max_len: int) -> tuple[int, int, list[int], float]:
    """Checked (e, max_len, prune layers, keep ratio) of the authors' per-layer length functions."""
    L = _int("num_layers", num_layers)
    e = _int("exit_layer", exit_layer)
    if e > L:
        raise ValueError(f"exit_layer ({e}) must be <= num_layers ({L})")
    layers = _ints("prune_layers", prune_layers, 1)
    if len(set(layers)) != len(layers) or any(l > L for l in layers):
        raise ValueError(f"prune_layers must be distinct layers in [1, {L}], got {tuple(layers)}")
    r = float(keep_ratio)
    if not 0.0 < r <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1] (the fraction of tokens kept), got {keep_ratio!r}")
    return e, _int("max_len", max_len), list(layers), r


def authors_padded_lengths(exit_layer: int, prune_layers: Sequence[int], keep_ratio: float,
                           num_layers: int, max_len: int = 128) -> tuple[tuple[int, ...], tuple[int, ...]]:
    r"""Token counts (n_att, n_ffn) per executed layer that the authors' code runs on a padded input.

    Every input is padded to ``max_len``; at each pruning layer (1-based) it keeps
    :math:`\lceil r (N - 1) \rceil` non-[CLS] tokens (r = ``keep_ratio``, the fraction *kept*, 0.7),
    plus [CLS] plus the fused token, so :math:`N \leftarrow \lceil r(N-1) \rceil + 2`.

    Args:
        exit_layer: e in [1, L].  prune_layers: 1-based layers that prune (authors: 4, 7, 10).
        keep_ratio: r in (0, 1].  num_layers: L.  max_len: padded length (128).
    Returns:
        (n_att, n_ffn), each a tuple of length e.

    Deviation (F4): when nothing would be pruned (:math:`\lceil r(N-1) \rceil = N - 1`, only for tiny N or
    r = 1) we add no fused token, so N never grows; at max_len = 128 and r = 0.7 this never happens.
    The ceiling is taken of the float product, as the authors' Python does.
    """
    e, N, layers, r = _authors_args(exit_layer, prune_layers, keep_ratio, num_layers, max_len)
    att, ffn = [], []
    for l in range(1, e + 1):
        att.append(N)
        if l in layers:
            kept = math.ceil(r * (N - 1))          # non-[CLS] tokens kept
            if kept < N - 1:
                N = kept + 2                       # [CLS] + kept + fused token
        ffn.append(N)
    return tuple(att), tuple(ffn)


def authors_sample_flops(exit_layer: int, prune_layers: Sequence[int], keep_ratio: float,
                         num_layers: int, hidden: int, max_len: int = 128) -> SampleFlops:
    r"""One sample's executed and full MACs in the authors' accounting, the summands of their Eq. (15) ratio.

    executed = :math:`\sum_{l=1}^{e}` :func:`authors_layer_macs` at the padded lengths of
    :func:`authors_padded_lengths`; full = :math:`L \cdot` ``authors_layer_macs(max_len, max_len, D)``
    for every sample, whatever its real length. Fused token and exit heads are not counted.

    Args:
        exit_layer: e.  prune_layers: 1-based pruning layers.  keep_ratio: fraction kept (0.7).
        num_layers: L.  hidden: D.  max_len: padded length (128).
    Returns:
        :class:`SampleFlops` in MACs: ``executed``, ``full`` and the ``per_layer`` summands of executed.
    """
    att, ffn = authors_padded_lengths(exit_layer, prune_layers, keep_ratio, num_layers, max_len)
    D = _int("hidden", hidden)
    per_layer = tuple(authors_layer_macs(a, f, D) for a, f in zip(att, ffn))
    return SampleFlops(executed=sum(per_layer), per_layer=per_layer,
                       full=operator.index(num_layers) * authors_layer_macs(max_len, max_len, D))


# ----------------------------------------------------------------------------- the authors' loop, as it runs
def authors_code_lengths(exit_layer: int, prune_layers: Sequence[int], keep_ratio: float, num_layers: int,
                         max_len: int = 128, fused: bool = True) -> tuple[int, ...]:
    r"""The lengths the authors' code records per executed layer (``left_tokens + 1``).

    On an input padded to ``max_len``: W tokens enter a layer; a non-pruning layer records W; a
    pruning layer keeps :math:`k = \lceil r (W - 1) \rceil` non-[CLS] tokens and records k + 1
    ([CLS] and the kept tokens: the fused token is **not** in the record), while the next layer
    runs on W = k + 2 (k + 1 with ``fused=False``). Nothing depends on the sample's real length.

    Args:
        exit_layer: e in [1, L].  prune_layers: 1-based pruning layers.  keep_ratio: r, fraction kept.
        num_layers: L.  max_len: padded length (128).  fused: pruning appends a fused token.
    Returns:
        e recorded lengths; at 128, layers 4/7/10, r = 0.7: 128 ×3, 90, 91 ×2, 64, 65 ×2, 46, 47 ×2.

    Deviation (F8): the ceiling of the float product, as the authors' Python; when nothing would be pruned
    (k = W - 1) their layer returns early and records W, as here.
    """
    e, W, layers, r = _authors_args(exit_layer, prune_layers, keep_ratio, num_layers, max_len)
    recorded = []
    for l in range(1, e + 1):
        k = math.ceil(r * (W - 1)) if l in layers else W - 1            # left_tokens
        recorded.append(k + 1)
        if k < W - 1:
            W = k + 1 + int(fused)
    return tuple(recorded)


def authors_code_sample_macs(exit_layer: int, prune_layers: Sequence[int], keep_ratio: float,
                             num_layers: int, hidden: int, max_len: int = 128,
                             fused: bool = True) -> SampleFlops:
    r"""One sample's executed and full cost exactly as the authors' evaluation loop adds them up (MACs).

    With :math:`a(n) = 2Dn^2 + 4D^2n` (attention), :math:`f(n) = 8D^2n` (FFN) and :math:`n_1..n_e`
    the recorded lengths of :func:`authors_code_lengths`:

    .. math:: \mathrm{executed} = a(\mathrm{max\_len}) + \sum_{i=1}^{e}
              \begin{cases} f(n_i) & i = L \\ a(n_i) + f(n_i) & i < L \end{cases}, \qquad
              \mathrm{full} = L\,[a(\mathrm{max\_len}) + f(\mathrm{max\_len})]

    Step i charges layer i's FFN and, read as the next layer's, an attention block at :math:`n_i`.
    Three consequences: (1) a sample exiting at e < L is charged one attention block of layer e + 1
    that never runs; (2) at a pruning layer the FFN is charged at k + 1 tokens while it runs on
    k + 2 (the fused token), and so is the next layer's attention; (3) from the layer after that,
    the fused token is counted. Heads and the fusion product are not counted.

    Args:
        exit_layer: e.  prune_layers, keep_ratio, num_layers, max_len, fused: as in
            :func:`authors_code_lengths`.  hidden: D.
    Returns:
        :class:`SampleFlops` in MACs; ``per_layer[i - 1]`` is step i's charge (step 1 with layer 1's attention).

    Deviation (F8): the authors hard-code the last layer as index 11 (12 layers); here it is L.
    """
    rec = authors_code_lengths(exit_layer, prune_layers, keep_ratio, num_layers, max_len, fused)
    D, L, n0 = _int("hidden", hidden), _int("num_layers", num_layers), _int("max_len", max_len)
    attention = lambda n: 2 * D * n * n + 4 * D * D * n                  # noqa: E731
    ffn = lambda n: 8 * D * D * n                                       # noqa: E731
    steps = [ffn(n) if i == L else attention(n) + ffn(n)                # layer i's FFN (+ layer i+1's attention)
             for i, n in enumerate(rec, start=1)]
    per_layer = (attention(n0) + steps[0], *steps[1:])                  # + layer 1's attention
    return SampleFlops(executed=sum(per_layer), full=L * (attention(n0) + ffn(n0)), per_layer=per_layer)
