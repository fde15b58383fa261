r"""Layer-wise early exiting as the paper writes it: Eqs. (9)-(10) and the exit test, §3.2.

Every function here is pure (tensors in, tensors out, no module state). ``heads.py`` holds the
exit-head module; the MPEE model wires the rest: after each layer l it computes
``z = head_l(h[:, 0])`` (Eq. 9), ``mem = eq10_classifier_memory(mem, z, lam)`` (Eq. 10),
``ent = exit_entropy(mem)`` and exits the samples where ``should_exit(ent, F)``.

Shapes follow the legend of ``mpee_ref/encoder/equations.py`` (B batch, D hidden, C classes).

Paper notation <-> code:

    h_[CLS]^l            [CLS] hidden state after layer l             ``h_cls``          (B, D)
    W_z^l, b_z^l         literal Eq. (9) head weight / bias           ``weight, bias``   (C, D), (C,)
    (pooler, classifier) the authors' realisation of Eq. (9)          ``w_pool, b_pool`` (D, D), (D,)
                                                                      ``w_cls, b_cls``   (C, D), (C,)
    C_z^l                exit logits of layer l                       ``logits``         (B, C)
    C_zm^l               EE classifier memory                         ``memory``         (B, C)
    \lambda              memory weight (0.9 in §4.4)                  ``lam``
    \hat y_z^l           softmax(C_zm^l)                              ``eq10_probabilities``
    F                    entropy threshold                            ``threshold``

Weights use the PyTorch layout ``(out_features, in_features)``: ``W h`` of the paper is ``h @ w.T``.
The functions trust their inputs: ``MPEEConfig`` checks λ and F, :class:`~mpee_ref.layer_exit.heads.ExitHead`
the shape of h_CLS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor


# ----------------------------------------------------------------------------- Eq. (9)
def eq09_exit_logits(h_cls: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    r"""Eq. (9), §3.2, taken literally: the exit logits of the l-th EE classifier.

    .. math:: C_z^l = \tanh(W_z^l h_{[\text{CLS}]}^l + b_z^l), \quad W_z^l \in \mathbb{R}^{C \times d}

    Args:
        h_cls: ``(B, D)`` the [CLS] hidden state after layer l.
        weight: ``(C, D)`` :math:`W_z^l`.  bias: ``(C,)`` :math:`b_z^l` (the paper writes
            :math:`\mathbb{R}^J`, J = C the number of classes).
    Returns:
        ``(B, C)`` logits, each in ``[-1, 1]``.

    Deviation (L1): none, but this reading bounds the logits to ``[-1, 1]``, so softmax can never be
    confident (for C = 2, max probability e/(e + e^{-1}) ~ 0.881, entropy >= 0.36 nats) and low
    thresholds F never fire. It is the ``head="tanh"`` switch; the default is
    :func:`eq09_pooled_exit_logits` (see docs/interpretation/layer_exit_and_losses.md).
    """
    return torch.tanh(nnf.linear(h_cls, weight, bias))                       # (B, C)


def eq09_pooled_exit_logits(h_cls: Tensor, w_pool: Tensor, b_pool: Tensor, w_cls: Tensor, b_cls: Tensor,
                            dropout_p: float = 0.0, training: bool = False) -> Tensor:
    r"""Eq. (9), §3.2, as the authors realise it: a BERT pooler, then an untied linear classifier.

    .. math:: C_z^l = W_c^l \, \mathrm{Dropout}\big(\tanh(W_p^l h_{[\text{CLS}]}^l + b_p^l)\big) + b_c^l

    The printed :math:`\tanh(W_z^l h + b_z^l)` is read as the pooler :math:`\tanh(W_p h + b_p)`,
    :math:`W_p \in \mathbb{R}^{d \times d}`, followed by the classifier
    :math:`W_c \in \mathbb{R}^{C \times d}`.

    Args:
        h_cls: ``(B, D)``.  w_pool: ``(D, D)``, b_pool: ``(D,)``.  w_cls: ``(C, D)``, b_cls: ``(C,)``.
        dropout_p, training: dropout on the pooled vector (active only when ``training``).
    Returns:
        ``(B, C)`` unbounded logits.

    Deviation (L1): the paper's Eq. (9) has one affine map inside the tanh and nothing after it; we
    add the classifier after the tanh (as the authors' code does) so that logits are unbounded.
    """
    pooled = torch.tanh(nnf.linear(h_cls, w_pool, b_pool))                  # (B, D): tanh(W_p h + b_p)
    if training and dropout_p > 0:
        pooled = nnf.dropout(pooled, p=dropout_p, training=True)             # (B, D)
    return nnf.linear(pooled, w_cls, b_cls)                                  # (B, C)


# ----------------------------------------------------------------------------- Eq. (9) input, recipe switch
def standardise_cls(h_cls: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    r"""Per-feature standardisation of :math:`h_{[\text{CLS}]}^l` before the exit head (``head_norm``).

    .. math:: \bar h = (h_{[\text{CLS}]}^l - \mu^l) \oslash \sqrt{\sigma^{2,l} + \epsilon}

    with :math:`\mu^l, \sigma^{2,l} \in \mathbb{R}^d` the per-feature mean and variance of the
    [CLS] vectors of layer l (batch statistics while training, running averages at inference,
    i.e. ``BatchNorm1d(d, affine=False)``).

    Args:
        h_cls: ``(B, D)``.  mean, var: ``(D,)``.  eps: added to the variance.
    Returns:
        ``(B, D)`` standardised [CLS] vectors.

    Deviation (L10, switch ``head_norm``, off in the paper and authors' presets): the paper feeds :math:`h_{[\text{CLS}]}^l`
    to Eq. (9) directly. On backbones whose shallow [CLS] vector barely varies across inputs (MiniLM-L6:
    cosine ~1.0000 between sentences, per-feature spread ~1e-3 beside outlier features of magnitude ~8)
    a head on the raw vector stays constant. At inference this map is affine and folds into the head's
    first weight (:func:`fold_standardisation`), so the deployed head is Eq. (9) exactly.
    """
    return (h_cls - mean) / torch.sqrt(var + eps)                           # (B, D)


def fold_standardisation(weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor,
                         eps: float) -> tuple[Tensor, Tensor]:
    r"""Fold :func:`standardise_cls` into the affine map that follows it.

    .. math:: W \bar h + b = W' h + b', \qquad W' = W \,\mathrm{diag}(1/\sqrt{\sigma^2 + \epsilon}),
              \quad b' = b - W' \mu

    Args:
        weight: ``(O, D)``, bias: ``(O,)`` the affine map applied to :math:`\bar h` (the pooler's
            :math:`W_p, b_p` for ``head="pooler"``, :math:`W_z, b_z` for ``head="tanh"``).
        mean, var: ``(D,)``.  eps: as in :func:`standardise_cls`.
    Returns:
        ``(W', b')`` with the shapes of ``(weight, bias)``.
    """
    w = weight / torch.sqrt(var + eps)[None, :]                             # (O, D)
    return w, bias - w @ mean                                               # (O, D), (O,)


# ----------------------------------------------------------------------------- Eq. (10)
def eq10_classifier_memory(prev: Tensor | None, logits: Tensor, lam: float) -> Tensor:
    r"""Eq. (10), §3.2: recycling EE classifier memory, kept on the logits.

    .. math:: C_{zm}^{l} = (1-\lambda)C_{zm}^{l-1} + \lambda C_{z}^{l}

    with :math:`C_{zm}^1 = C_z^1` at the first exit (there is no :math:`C_{zm}^0`). Unrolled,
    :math:`C_{zm}^l = (1-\lambda)^{l-1} C_z^1 + \sum_{j=2}^{l} \lambda (1-\lambda)^{l-j} C_z^j`,
    a convex combination of the logits so far. :math:`\lambda = 1` switches the memory off
    (the "w/o EE memory" ablation).

    Args:
        prev: ``(B, C)`` :math:`C_{zm}^{l-1}`, or None at the first exit.
        logits: ``(B, C)`` :math:`C_z^l`.
        lam: :math:`\lambda \in [0, 1]` (0.9 in §4.4).
    Returns:
        ``(B, C)`` :math:`C_{zm}^l`.

    Deviation (L3): the paper does not say how :math:`C_{zm}^1` starts; we (and the authors) use
    :math:`C_{zm}^1 = C_z^1`, which equals a zero :math:`C_{zm}^0` only when :math:`\lambda = 1`.
    """
    if prev is None:
        return logits                                                      # (B, C): C_zm^1 = C_z^1
    return (1.0 - lam) * prev + lam * logits                               # (B, C)


def eq10_probabilities(memory: Tensor) -> Tensor:
    r"""Eq. (10), §3.2: :math:`\hat y_z^l = \mathrm{softmax}(C_{zm}^l)` over the classes.

    Args:
        memory: ``(B, C)``.
    Returns:
        ``(B, C)`` probabilities, rows summing to 1.
    """
    return torch.softmax(memory, dim=-1)                                   # (B, C)


# ----------------------------------------------------------------------------- exit test
def exit_entropy(memory: Tensor) -> Tensor:
    r"""Entropy of the exit distribution (text after Eq. (14), §3.2), in nats.

    .. math:: H(\hat y_z^l) = -\sum_{c=1}^{C} \hat y_{z,c}^l \log \hat y_{z,c}^l,
              \quad \hat y_z^l = \mathrm{softmax}(C_{zm}^l)

    Computed from ``log_softmax`` (``p = exp(log p)``), so it stays finite for logits of any
    magnitude (a class with ``p = 0`` contributes ``0 * finite = 0``), unlike ``exp(logits)``.

    Args:
        memory: ``(B, C)`` :math:`C_{zm}^l`.
    Returns:
        ``(B,)`` entropies in ``[0, ln C]``; not normalised by ``ln C`` (as the authors).
    """
    log_p = torch.log_softmax(memory, dim=-1)                              # (B, C)
    return -(log_p.exp() * log_p).sum(dim=-1)                              # (B,)


def should_exit(entropy: Tensor, threshold: float) -> Tensor:
    r"""The exit test (text after Eq. (14), §3.2): exit where the entropy is below F.

    .. math:: \mathrm{exit}_b = \big[\, H(\hat y_{z,b}^l) < F \,\big]

    Args:
        entropy: ``(B,)`` from :func:`exit_entropy`.
        threshold: F (nats); ``F <= 0`` never exits, ``F > ln C`` always exits.
    Returns:
        ``(B,)`` bool, one decision per sample.

    Deviation (L4): the paper prints "whether the entropy value ... is greater than the preset
    threshold F"; a confident classifier has *low* entropy (§1: exit "when the confidence level is
    higher than the threshold"), and the authors exit when the entropy is below F. The test is
    strict. Exiting every remaining sample at the last layer is the model's job.
    """
    return entropy < threshold                                             # (B,) bool
