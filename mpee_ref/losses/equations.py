r"""The MPEE training objective as the paper writes it: Eqs. (11)-(14), §3.2.

Every ``eqNN_`` function is pure. :func:`mpee_loss` wires them (with the teacher module of
``teacher.py``) into the loss the model trains on: all L exits run, their memories
:math:`C_{zm}^1..C_{zm}^L` are stacked to ``(L, B, C)`` and passed here.

Shapes follow the legend of ``mpee_ref/encoder/equations.py`` (L layers/exits, B batch, C classes);
``k`` is the width of the teacher's attention (k = C by default).

Paper notation <-> code:

    C_zm^l                 EE classifier memory of exit l        ``memories[l-1]``   (B, C)
    I(y)                   one-hot label                          ``labels``          (B,) int
    W_eta, b_eta           teacher attention weight / bias        ``w_eta, b_eta``    (k, C), (k,)
    V                      context vector                         ``v``               (k,)
    eta^l                  attention weight of exit l             ``eta[:, l-1]``     (B, L)
    t                      teacher logits                         ``teacher``         (B, C)
    tau                    distillation temperature (3)           ``tau``

The ``eqNN_`` functions trust their inputs: :func:`mpee_loss` checks the memories and labels
(``checks.py``), ``MPEEConfig`` τ, γ and the KD switches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as nnf
from torch import Tensor

from .checks import check_labels, check_memories

if TYPE_CHECKING:  # pragma: no cover
    from .teacher import WeightedTeacher

KD_DIRECTIONS = ("student_teacher", "teacher_student")
KD_REDUCTIONS = ("batchmean", "mean")
CE_WEIGHTINGS = ("uniform", "depth")


# ----------------------------------------------------------------------------- Eq. (11)
def eq11_cross_entropy(memories: Tensor, labels: Tensor) -> Tensor:
    r"""Eq. (11), §3.2: cross-entropy of every exit, on its memory.

    .. math:: \mathcal{L}_{CE} = -\sum_{l=1}^{L} \mathbb{I}(y) \circ \log(\hat{y}_{z}^{l}),
              \quad \hat y_z^l = \mathrm{softmax}(C_{zm}^l)

    Args:
        memories: ``(L, B, C)`` :math:`C_{zm}^l` stacked over exits.
        labels: ``(B,)`` integer class ids.
    Returns:
        ``(L,)``: the per-exit cross-entropy, averaged over the batch; :math:`\mathcal{L}_{CE}` is
        its sum (taken in :func:`eq14_total_loss`).

    Deviation (L5): the paper writes one sample; we average over the batch (and sum over exits).
    """
    L, B, C = memories.shape
    log_p = torch.log_softmax(memories, dim=-1)                            # (L, B, C): log y_hat
    index = labels.long().view(1, B, 1).expand(L, B, 1)                    # (L, B, 1)
    nll = -log_p.gather(-1, index).squeeze(-1)                             # (L, B): -I(y) o log y_hat
    return nll.mean(dim=1)                                                 # (L,)


def ce_exit_weights(num_exits: int, weighting: str = "uniform", *, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> Tensor:
    r"""The weight :math:`w_l` of exit l's cross-entropy in the sum of Eq. (11).

    .. math:: \text{uniform: } w_l = 1 \qquad
              \text{depth: } w_l = L \, \frac{l}{\sum_{k=1}^{L} k}

    Args:
        num_exits: L.
        weighting: ``"uniform"`` (Eq. 11 as printed, the default) or ``"depth"`` (PABEE's weighted
            average, Zhou et al. 2020, rescaled so that :math:`\sum_l w_l = L` as for ``"uniform"``).
        dtype, device: of the result (:func:`mpee_loss` asks for its CE's, so no copy per step).
    Returns:
        ``(L,)`` weights. In float32 they equal the float64 ones rounded (one correctly rounded
        division of exact integers).

    Deviation (L12): ``"depth"`` is not the paper's; it lets the deeper exits, the last layer above
    all, dominate the backbone's gradient. Off in every preset.
    """
    if weighting not in CE_WEIGHTINGS:
        raise ValueError(f"ce_weighting must be one of {CE_WEIGHTINGS}, got {weighting!r}")
    if weighting == "uniform":
        return torch.ones(num_exits, dtype=dtype, device=device)           # (L,)
    depth = torch.arange(1, num_exits + 1, dtype=dtype, device=device)     # (L,): l
    return num_exits * depth / depth.sum()                                 # (L,)


# ----------------------------------------------------------------------------- Eq. (12)
def eq12_teacher(memories: Tensor, w_eta: Tensor, b_eta: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    r"""Eq. (12), §3.2: the weighted-ensemble teacher, an attention pool over the exits.

    .. math::
        \eta^{l} = \frac{\exp(V^{T} \tanh(W_{\eta}C_{zm}^{l}+b_{\eta}))}
                        {\sum_{l=1}^{L} \exp(V^{T} \tanh(W_{\eta}C_{zm}^{l}+b_{\eta}))},
        \qquad t = \sum_{l=1}^{L} \eta^{l} C_{zm}^{l}

    η is computed per sample (the softmax runs over the L exits, separately for each b).

    Args:
        memories: ``(L, B, C)``.  w_eta: ``(k, C)``.  b_eta: ``(k,)``.  v: ``(k,)``.
    Returns:
        t ``(B, C)`` teacher logits; eta ``(B, L)`` weights, positive, summing to 1 over L.

    Deviation (L6): none in the math. The paper names the weight and bias :math:`W_\alpha, b_\alpha`
    in the text and :math:`W_\eta, b_\eta` in the equation; we use the latter. Whether the
    memories are detached first is :func:`mpee_loss`'s ``detach_teacher_inputs``.
    """
    hidden = torch.tanh(nnf.linear(memories, w_eta, b_eta))                 # (L, B, k): tanh(W_eta C_zm + b_eta)
    scores = hidden @ v                                                    # (L, B): V^T tanh(...)
    eta = torch.softmax(scores, dim=0).transpose(0, 1)                     # (B, L)
    t = torch.einsum("bl,lbc->bc", eta, memories)                          # (B, C): sum_l eta^l C_zm^l
    return t, eta


# ----------------------------------------------------------------------------- Eq. (13)
def eq13_kd_loss(memories: Tensor, teacher: Tensor, tau: float, direction: str = "student_teacher",
                 reduction: str = "batchmean") -> Tensor:
    r"""Eq. (13), §3.2: weighted ensemble self-distillation, one term per exit.

    .. math:: \mathcal{L}_{KD} = \sum_{l=1}^{L} \tau^2\,
              \mathrm{KL}\big(\mathrm{softmax}(C_{zm}^l/\tau) \,\|\, \mathrm{softmax}(t/\tau)\big)

    with :math:`\mathrm{KL}(p \| q) = \sum_c p_c (\log p_c - \log q_c)`, from ``log_softmax``.

    Args:
        memories: ``(L, B, C)`` students :math:`C_{zm}^l`.  teacher: ``(B, C)`` logits t.
        tau: temperature τ > 0 (the paper gives no value; the authors use 3).
        direction: ``"student_teacher"`` KL(student ‖ teacher) as printed (default), or
            ``"teacher_student"`` KL(teacher ‖ student), the authors' (and usual KD) direction.
        reduction: ``"batchmean"`` sum over classes, mean over the batch (a true KL per sample,
            default), or ``"mean"``: mean over batch and classes (PyTorch ``KLDivLoss``'s default,
            the authors'; equals ``"batchmean"`` / C).
    Returns:
        ``(L,)``: :math:`\tau^2 \mathrm{KL}_l`; :math:`\mathcal{L}_{KD}` is its sum.

    Deviation (L7): the paper writes one sample; the batch reduction is ours (switchable).
    """
    C = memories.shape[-1]
    log_s = torch.log_softmax(memories / tau, dim=-1)                      # (L, B, C): log softmax(C_zm/tau)
    log_t = torch.log_softmax(teacher / tau, dim=-1).unsqueeze(0)          # (1, B, C): log softmax(t/tau)
    if direction == "student_teacher":
        kl = (log_s.exp() * (log_s - log_t)).sum(dim=-1)                   # (L, B): KL(student || teacher)
    else:
        kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)                   # (L, B): KL(teacher || student)
    per_exit = kl.mean(dim=1)                                              # (L,)
    if reduction == "mean":
        per_exit = per_exit / C                                            # (L,)
    return tau * tau * per_exit                                            # (L,)


# ----------------------------------------------------------------------------- Eq. (14)
def eq14_total_loss(l_ce: Tensor, l_kd: Tensor | None, *, gamma: float | None = None,
                    teacher_ce: Tensor | None = None, ce_weights: Tensor | None = None) -> Tensor:
    r"""Eq. (14), §3.2: the overall loss.

    .. math:: \mathcal{L} = \mathcal{L}_{CE} + \mathcal{L}_{KD}
              = \sum_l \mathrm{CE}_l + \sum_l \mathrm{KD}_l

    With ``gamma`` set, the authors' weighting instead:
    :math:`\sum_l [(1-\gamma)\mathrm{CE}_l + \gamma \mathrm{KD}_l] + \gamma\,\mathrm{CE}(t, y)`.

    Args:
        l_ce: ``(L,)`` from :func:`eq11_cross_entropy`.
        l_kd: ``(L,)`` from :func:`eq13_kd_loss`, or None (the "w/o WSD" ablation: CE only).
        gamma: None (the paper's sum, default) or γ in [0, 1] (authors: 0.1); needs l_kd and teacher_ce.
        teacher_ce: scalar CE of the teacher logits, only with ``gamma``.
        ce_weights: ``(L,)`` :math:`w_l` multiplying each :math:`\mathrm{CE}_l` (:func:`ce_exit_weights`);
            None = all ones, the paper's sum.
    Returns:
        scalar loss.

    Deviation (L8, L12): ``gamma`` is the authors' form, not the paper's; ``ce_weights`` other than
    ones is ours. Both off by default.
    """
    if ce_weights is not None:
        l_ce = ce_weights.to(l_ce) * l_ce                                  # (L,): w_l CE_l
    if gamma is None:
        return l_ce.sum() if l_kd is None else l_ce.sum() + l_kd.sum()
    return ((1.0 - gamma) * l_ce + gamma * l_kd).sum() + gamma * teacher_ce


# ----------------------------------------------------------------------------- wiring
@dataclass(frozen=True)
class LossTerms:
    """The parts of the MPEE loss.

    Attributes:
        total: scalar, what to call ``backward()`` on.
        ce: ``(L,)`` per-exit CE (Eq. 11).
        kd: ``(L,)`` per-exit τ²·KL (Eq. 13), or None without KD.
        teacher_logits: ``(B, C)`` t (Eq. 12), or None without KD.
        eta: ``(B, L)`` teacher weights (Eq. 12), or None without KD.
        teacher_ce: scalar CE(t, y), set only when it enters the total (``gamma`` given).
    """

    total: Tensor
    ce: Tensor
    kd: Tensor | None = None
    teacher_logits: Tensor | None = None
    eta: Tensor | None = None
    teacher_ce: Tensor | None = None


def mpee_loss(memories: Tensor, labels: Tensor, teacher: "WeightedTeacher | None", *, tau: float = 3.0,
              use_kd: bool = True, kd_direction: str = "student_teacher", kd_reduction: str = "batchmean",
              detach_teacher_inputs: bool = True, detach_teacher_in_kd: bool = False,
              gamma: float | None = None, ce_weighting: str = "uniform") -> LossTerms:
    r"""The MPEE objective, Eqs. (11)-(14): CE of every exit plus self-distillation from the teacher.

    Args:
        memories: ``(L, B, C)`` the memories :math:`C_{zm}^l` of all L exits.
        labels: ``(B,)`` integer class ids.
        teacher: the :class:`~mpee_ref.losses.teacher.WeightedTeacher` (Eq. 12); None only with ``use_kd=False``.
        tau: τ of Eq. (13).  use_kd: False = "w/o WSD" ablation (L = L_CE).
        kd_direction, kd_reduction: see :func:`eq13_kd_loss`.
        detach_teacher_inputs: feed the teacher ``memories.detach()`` (default, as the authors), so
            the KL does not move the students through the teacher's inputs.
        detach_teacher_in_kd: use ``t.detach()`` in the KL (default False, as the authors: the KL is
            how W_η, b_η, V get gradient under Eq. 14; with both detaches on and ``gamma=None`` the
            teacher receives no gradient at all).
        gamma: None = Eq. (14) as printed; a float = the authors' weighting (see :func:`eq14_total_loss`).
        ce_weighting: ``"uniform"`` = Eq. (11) as printed; ``"depth"`` weights exit l's CE by
            :math:`Ll/\sum_k k` (:func:`ce_exit_weights`, deviation L12). ``LossTerms.ce`` stays unweighted.
    Returns:
        :class:`LossTerms`.
    """
    check_memories(memories)
    check_labels(labels, memories.shape[1], memories.shape[2])
    ce = eq11_cross_entropy(memories, labels)                              # (L,)
    weights = ce_exit_weights(len(ce), ce_weighting, dtype=ce.dtype, device=ce.device)  # (L,) w_l
    if not use_kd:
        if gamma is not None:
            raise ValueError(f"gamma={gamma} weights CE against KD; it needs use_kd=True")
        return LossTerms(total=eq14_total_loss(ce, None, ce_weights=weights), ce=ce)
    if teacher is None:
        raise ValueError("teacher must be a WeightedTeacher when use_kd=True, got None")
    inputs = memories.detach() if detach_teacher_inputs else memories     # (L, B, C)
    t, eta = teacher(inputs)                                               # (B, C), (B, L)
    t_kd = t.detach() if detach_teacher_in_kd else t                       # (B, C)
    kd = eq13_kd_loss(memories, t_kd, tau, kd_direction, kd_reduction)     # (L,)
    teacher_ce = None if gamma is None else eq11_cross_entropy(t.unsqueeze(0), labels)[0]  # ()
    total = eq14_total_loss(ce, kd, gamma=gamma, teacher_ce=teacher_ce, ce_weights=weights)
    return LossTerms(total=total, ce=ce, kd=kd, teacher_logits=t, eta=eta, teacher_ce=teacher_ce)
