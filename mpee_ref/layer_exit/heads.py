"""The EE classifier of Eq. (9) as a module: parameters under checkpoint-style names.

``ExitHead(head="pooler")`` (default) holds ``pooler.dense.{weight,bias}`` (D x D, a BERT pooler)
and ``classifier.{weight,bias}`` (C x D); ``ExitHead(head="tanh")`` holds ``dense.{weight,bias}``
(C x D), the literal bounded form. With ``norm=True`` (the ``head_norm`` recipe switch, docs L10) a
:class:`HeadStandardiser` (buffers ``norm.running_mean``, ``norm.running_var``) standardises h_CLS first;
:meth:`ExitHead.folded` folds it into the first weight for inference. The computation is
:mod:`mpee_ref.layer_exit.equations`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from . import equations as eq

HEAD_KINDS = ("pooler", "tanh")


class _Holder(nn.Module):
    """An empty module used only to reproduce the nested name ``pooler.dense``."""


class HeadStandardiser(nn.Module):
    r"""Per-feature standardisation of h_CLS (:func:`~mpee_ref.layer_exit.equations.standardise_cls`).

    Training (B > 1): batch statistics, running averages updated with ``momentum`` (as
    ``BatchNorm1d(D, affine=False)``; unbiased variance in the running average). Eval, or a training
    batch of one sample: the running averages. No trainable parameters.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = float(eps), float(momentum)
        self.register_buffer("running_mean", torch.zeros(hidden_size))     # (D,)
        self.register_buffer("running_var", torch.ones(hidden_size))       # (D,)

    def forward(self, h_cls: Tensor) -> Tensor:
        if self.training and h_cls.shape[0] > 1:
            return nnf.batch_norm(h_cls, self.running_mean, self.running_var, None, None, True,
                                self.momentum, self.eps)                    # (B, D), updates the buffers
        return eq.standardise_cls(h_cls, self.running_mean, self.running_var, self.eps)  # (B, D)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, momentum={self.momentum}"


class ExitHead(nn.Module):
    r"""One EE classifier (Eq. 9): ``h_CLS (B, D) -> C_z (B, C)``.

    Args:
        hidden_size: D.  num_labels: C.
        head: ``"pooler"``: :math:`W_c\,\mathrm{Dropout}(\tanh(W_p h + b_p)) + b_c` (the authors');
            ``"tanh"``: :math:`\tanh(W h + b)` (Eq. 9 as printed, logits in [-1, 1]).
        dropout_p: dropout before the classifier (``"pooler"``) or on h_CLS before ``dense``
            (``"tanh"``), active in train mode only.
        norm: standardise h_CLS per feature first (:class:`HeadStandardiser`; recipe switch, docs L10).

    Init: every weight normal(0, 0.02), every bias 0 (BERT's initialiser);
    :meth:`init_from_pooler` then copies a pretrained BERT pooler into ``pooler.dense``.
    """

    def __init__(self, hidden_size: int, num_labels: int, head: str = "pooler", dropout_p: float = 0.1,
                 norm: bool = False):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_labels", num_labels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ExitHead {name} must be a positive int, got {value!r}")
        if head not in HEAD_KINDS:
            raise ValueError(f"ExitHead head must be one of {HEAD_KINDS}, got {head!r}")
        if not 0.0 <= float(dropout_p) < 1.0:
            raise ValueError(f"ExitHead dropout_p must be in [0, 1), got {dropout_p!r}")
        self.hidden_size, self.num_labels = hidden_size, num_labels
        self.head, self.dropout_p = head, float(dropout_p)
        self.norm = HeadStandardiser(hidden_size) if norm else None
        if head == "pooler":
            self.pooler = _Holder()
            self.pooler.dense = nn.Linear(hidden_size, hidden_size)
            self.classifier = nn.Linear(hidden_size, num_labels)
        else:
            self.dense = nn.Linear(hidden_size, num_labels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def init_from_pooler(self, weight: Tensor, bias: Tensor) -> None:
        """Copy a pretrained BERT pooler (``pooler.dense.weight`` (D, D), ``.bias`` (D,)) into this head."""
        if self.head != "pooler":
            raise ValueError(f"init_from_pooler needs head='pooler', this head is {self.head!r}")
        D = self.hidden_size
        if tuple(weight.shape) != (D, D):
            raise ValueError(f"pooler weight must be ({D}, {D}), got shape {tuple(weight.shape)}")
        if tuple(bias.shape) != (D,):
            raise ValueError(f"pooler bias must be ({D},), got shape {tuple(bias.shape)}")
        with torch.no_grad():
            self.pooler.dense.weight.copy_(weight)
            self.pooler.dense.bias.copy_(bias)

    def folded(self) -> "ExitHead":
        """An equivalent head without :attr:`norm` (eval-mode outputs equal): the running statistics
        folded into the first affine map (:func:`~mpee_ref.layer_exit.equations.fold_standardisation`)."""
        out = ExitHead(self.hidden_size, self.num_labels, self.head, self.dropout_p).to(
            next(self.parameters()).dtype)
        out.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("norm.")})
        if self.norm is not None:
            first = out.pooler.dense if self.head == "pooler" else out.dense
            w, b = eq.fold_standardisation(first.weight.detach(), first.bias.detach(),
                                           self.norm.running_mean, self.norm.running_var, self.norm.eps)
            with torch.no_grad():
                first.weight.copy_(w)
                first.bias.copy_(b)
        return out.train(self.training)

    def forward(self, h_cls: Tensor) -> Tensor:
        if h_cls.dim() != 2 or h_cls.shape[1] != self.hidden_size:
            raise ValueError(f"h_cls must be (B, {self.hidden_size}), got shape {tuple(h_cls.shape)}")
        if self.norm is not None:
            h_cls = self.norm(h_cls)                                         # (B, D) standardised
        if self.head == "pooler":
            return eq.eq09_pooled_exit_logits(
                h_cls, self.pooler.dense.weight, self.pooler.dense.bias,
                self.classifier.weight, self.classifier.bias,
                dropout_p=self.dropout_p, training=self.training)          # (B, C)
        x = nnf.dropout(h_cls, self.dropout_p, self.training)    # (B, D)
        return eq.eq09_exit_logits(x, self.dense.weight, self.dense.bias)  # (B, C)

    def extra_repr(self) -> str:
        return (f"head={self.head!r}, hidden_size={self.hidden_size}, num_labels={self.num_labels}, "
                f"dropout_p={self.dropout_p}, norm={self.norm is not None}")
