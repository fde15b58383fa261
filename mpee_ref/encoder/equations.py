r"""The BERT encoder as the paper writes it: Eqs. (1)-(4), §2 "Preliminaries".

Every function here is pure (tensors in, tensors out, no module state) so that it can be read next
to the paper, tested on its own and ported function by function. ``mpee_ref/encoder/model.py`` only wires
them to the checkpoint's parameters.

Shape legend (used in every shape comment of the package)::

    B   batch size                    T   tokens in the sequence (N + 1 with [CLS]; shrinks under Eq. 8)
    D   hidden size d                 H   attention heads
    dh  head size d_h = d / H         I   FFN inner size, HF's intermediate_size (4d in the paper)
    L   layers                        C   classes (J in Eq. 9)
    V   vocabulary size

(F is never a size: it is the entropy threshold of the exit test.)

Paper notation <-> code:

    Z_{l-1}, h^{l-1}        hidden states entering layer l           ``h``        (B, T, D)
    W_h^Q, W_h^K, W_h^V     per-head slices of query/key/value       ``w_q``...   (D, D) = H slices of (dh, D)
    W^o                     output projection                        ``w_o``      (D, D)
    \tilde Z_l              MHSA sub-layer output (after Add & Norm) ``z_tilde``  (B, T, D)
    W_1, b_1, W_2, b_2      FFN projections (Eq. 4)                  ``w_1``...   (I, D), (D, I)

Conventions (departures from the printed math are flagged ``Deviation (ID):`` in each docstring, the
ID an entry of docs/interpretation/encoder.md):

* Weights are stored as in PyTorch/HF checkpoints, ``(out_features, in_features)``, so
  ``Z W`` of the paper is ``z @ w.T`` here.
* BERT is *post*-LayerNorm: each sub-layer is ``LayerNorm(x + Sublayer(x))``. The paper's
  ``Transformer^l`` (Eq. 1) hides the residuals and LayerNorms; we write them out.
* The padding mask is additive: ``0`` for a real key, ``finfo(dtype).min`` for a padded key, the
  constant HF BERT uses, so a padded key receives probability exactly 0 after softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import Tensor


# ----------------------------------------------------------------------------- building blocks
def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    r"""Affine map :math:`x W^\top + b` with a PyTorch-layout weight ``(out, in)``.

    Args:
        x: ``(..., in)``.  weight: ``(out, in)``.  bias: ``(out,)`` or None.
    Returns:
        ``(..., out)``.
    """
    # nnf.linear computes exactly x @ weight.T + bias (one fused addmm); tests/test_eq04_ffn.py checks
    # it against the written-out ``x @ weight.T + bias``.
    return nnf.linear(x, weight, bias)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    r"""LayerNorm over the last axis, biased variance, as in BERT:

    .. math:: \mathrm{LN}(x) = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    Args:
        x: ``(..., D)``.  weight (gamma), bias (beta): ``(D,)``.  eps: BERT uses 1e-12.
    Returns:
        ``(..., D)``.
    """
    # Same arithmetic as the explicit formula above (checked in the tests); the fused kernel
    # keeps the reference path as fast as HF's.
    return nnf.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    r"""GELU, :math:`\sigma` of Eq. (4): :math:`x\,\Phi(x) = \tfrac12 x (1 + \mathrm{erf}(x/\sqrt2))`.

    ``approximate="tanh"`` gives the tanh form (HF's ``gelu_new``); BERT checkpoints use the erf form.
    """
    return nnf.gelu(x, approximate=approximate)


def attention_mask_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    r"""Turn a ``(B, T)`` 1/0 key mask into the additive bias added to :math:`QK^\top/\sqrt{d_h}`.

    Returns:
        ``(B, 1, 1, T)``: 0 where the key is a real token, ``torch.finfo(dtype).min`` where padded.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, T), got shape {tuple(attention_mask.shape)}")
    keep = attention_mask.to(dtype)                                       # (B, T)
    return ((1.0 - keep) * torch.finfo(dtype).min)[:, None, None, :]      # (B, 1, 1, T)


def padding_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor | None:
    r""":func:`attention_mask_bias`, or None when no key is padded.

    With no padded key the bias is all zeros; skipping it (as HF does) saves adding zeros to every
    ``(B, H, T, T)`` score tensor (3-8% of a MiniLM forward at batch 32 x 128, tools/bench_encoder.py).
    """
    if bool(attention_mask.bool().all()):
        return None
    return attention_mask_bias(attention_mask, dtype)                     # (B, 1, 1, T)


def embeddings(input_ids: Tensor, token_type_ids: Tensor, position_ids: Tensor,
               word: Tensor, position: Tensor, token_type: Tensor,
               ln_weight: Tensor, ln_bias: Tensor, eps: float) -> Tensor:
    r"""The input of Eq. (1): :math:`h^0 = \mathrm{LN}(E_{word}[x] + E_{pos}[p] + E_{type}[s])`.

    The paper starts from "the sequence token X" and leaves the embedding layer implicit.

    Args:
        input_ids, token_type_ids: ``(B, T)`` int64.  position_ids: ``(B, T)`` or ``(1, T)``.
        word ``(V, D)``, position ``(P, D)``, token_type ``(S, D)``: embedding tables.
    Returns:
        h^0: ``(B, T, D)``.
    """
    # nnf.embedding(ids, table) is the row lookup table[ids] (index_select, cheaper than advanced indexing)
    x = (nnf.embedding(input_ids, word) + nnf.embedding(position_ids, position)
         + nnf.embedding(token_type_ids, token_type))                                # (B, T, D)
    return layer_norm(x, ln_weight, ln_bias, eps)                               # (B, T, D)


# ----------------------------------------------------------------------------- Eq. (3)
def eq03_attention(q: Tensor, k: Tensor, v: Tensor, mask_bias: Tensor | None,
                   dropout_p: float = 0.0, training: bool = False) -> tuple[Tensor, Tensor]:
    r"""Eq. (3), §2: scaled dot-product attention of every head at once.

    .. math:: \mathrm{HA}_h(Z_{l-1}) = \mathrm{softmax}\Big(\frac{Q_h K_h^T}{\sqrt{d_h}}\Big) V_h

    Args:
        q, k, v: ``(B, H, T, dh)``: :math:`Q_h, K_h, V_h` for all heads h.
        mask_bias: ``(B, 1, 1, T)`` additive key mask (see :func:`attention_mask_bias`) or None.
        dropout_p, training: attention-probability dropout (BERT applies it during fine-tuning).
    Returns:
        context ``(B, H, T, dh)``: :math:`\mathrm{HA}_h` for every head;
        probs ``(B, H, T, T)``: the softmax, *before* dropout (Eq. 5 reads its [CLS] row).

    Deviation (E3-1): the padding mask is not in the printed equation; without it padded keys would
    receive attention. Dropout on the probabilities is BERT's, not the paper's.
    """
    dh = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(dh)                       # (B, H, T, T)
    if mask_bias is not None:
        scores = scores + mask_bias                                        # (B, H, T, T)
    probs = torch.softmax(scores, dim=-1)                                  # (B, H, T, T)
    dropped = nnf.dropout(probs, p=dropout_p, training=training) if training and dropout_p > 0 else probs
    context = dropped @ v                                                  # (B, H, T, dh)
    return context, probs


# ----------------------------------------------------------------------------- Eq. (2)
def eq02_mhsa(z: Tensor, w_q: Tensor, b_q: Tensor, w_k: Tensor, b_k: Tensor,
              w_v: Tensor, b_v: Tensor, w_o: Tensor, b_o: Tensor, num_heads: int,
              mask_bias: Tensor | None, dropout_p: float = 0.0,
              training: bool = False) -> tuple[Tensor, Tensor]:
    r"""Eq. (2), §2: multi-head self-attention.

    .. math:: \mathrm{MHSA}(Z_{l-1}) = \mathrm{Concat}[\mathrm{HA}_1(Z_{l-1}); \dots; \mathrm{HA}_H(Z_{l-1})]\,W^o

    with :math:`Q_h = Z_{l-1}W_h^Q`, :math:`K_h = Z_{l-1}W_h^K`, :math:`V_h = Z_{l-1}W_h^V`,
    :math:`W_h^{\{Q,K,V\}} \in \mathbb{R}^{d \times d_h}`. Head h owns rows
    ``h*dh:(h+1)*dh`` of the stored ``(D, D)`` weights (HF's layout).

    Args:
        z: ``(B, T, D)``.  w_*: ``(D, D)``; b_*: ``(D,)``.  num_heads: H.
        mask_bias: ``(B, 1, 1, T)`` or None.
    Returns:
        out ``(B, T, D)`` (before the residual), probs ``(B, H, T, T)``.

    Deviation (E2-1): the projections carry biases (b^Q, b^K, b^V, b^o), as BERT has; the paper omits them.
    """
    B, T, D = z.shape
    H = num_heads
    dh = D // H

    def heads(x: Tensor) -> Tensor:                                        # (B, T, D) -> (B, H, T, dh)
        return x.view(B, T, H, dh).transpose(1, 2)

    q = heads(linear(z, w_q, b_q))                                         # (B, H, T, dh)
    k = heads(linear(z, w_k, b_k))                                         # (B, H, T, dh)
    v = heads(linear(z, w_v, b_v))                                         # (B, H, T, dh)
    context, probs = eq03_attention(q, k, v, mask_bias, dropout_p, training)  # (B, H, T, dh), (B, H, T, T)
    concat = context.transpose(1, 2).reshape(B, T, D)                      # (B, T, D): Concat[HA_1; ...; HA_H]
    return linear(concat, w_o, b_o), probs                                 # (B, T, D), (B, H, T, T)


# ----------------------------------------------------------------------------- Eq. (4)
def eq04_ffn(z_tilde: Tensor, w_1: Tensor, b_1: Tensor, w_2: Tensor, b_2: Tensor,
             approximate: str = "none") -> Tensor:
    r"""Eq. (4), §2: position-wise feed-forward network.

    .. math:: \mathrm{FFN}(\tilde Z_l) = \sigma(\tilde Z_l W_1 + b_1) W_2 + b_2

    Args:
        z_tilde: ``(B, T, D)`` MHSA sub-layer output (possibly after token pruning, Eq. 8).
        w_1 ``(I, D)``, b_1 ``(I,)``, w_2 ``(D, I)``, b_2 ``(D,)``.
        approximate: ``"none"`` (erf GELU, BERT) or ``"tanh"``.
    Returns:
        ``(B, T, D)`` (before the residual).
    """
    inner = gelu(linear(z_tilde, w_1, b_1), approximate)                   # (B, T, I)
    return linear(inner, w_2, b_2)                                         # (B, T, D)


# ----------------------------------------------------------------------------- Eq. (1)
def eq01_attention_sublayer(h: Tensor, p: dict[str, Tensor], num_heads: int, eps: float,
                            mask_bias: Tensor | None, hidden_dropout_p: float = 0.0,
                            attn_dropout_p: float = 0.0,
                            training: bool = False) -> tuple[Tensor, Tensor]:
    r"""First half of Eq. (1): :math:`\tilde Z_l = \mathrm{LN}(h^{l-1} + \mathrm{MHSA}(h^{l-1}))`.

    Token pruning (Eqs. 5-8) acts on this output, between the two halves of the layer.

    Args:
        h: ``(B, T, D)``.  p: the layer's tensors under short names (``w_q``, ``b_q``, ..., ``ln1_w``,
            ``ln1_b``), as :meth:`mpee_ref.encoder.model.BertLayer.params` returns them.
    Returns:
        z_tilde ``(B, T, D)``, probs ``(B, H, T, T)``.
    """
    attn, probs = eq02_mhsa(h, p["w_q"], p["b_q"], p["w_k"], p["b_k"], p["w_v"], p["b_v"],
                            p["w_o"], p["b_o"], num_heads, mask_bias, attn_dropout_p, training)
    attn = nnf.dropout(attn, p=hidden_dropout_p, training=training)          # (B, T, D)
    return layer_norm(h + attn, p["ln1_w"], p["ln1_b"], eps), probs        # (B, T, D), (B, H, T, T)


def eq01_ffn_sublayer(z_tilde: Tensor, p: dict[str, Tensor], eps: float,
                      hidden_dropout_p: float = 0.0, training: bool = False,
                      approximate: str = "none") -> Tensor:
    r"""Second half of Eq. (1): :math:`Z^l = \mathrm{LN}(\tilde Z_l + \mathrm{FFN}(\tilde Z_l))`.

    Args:
        z_tilde: ``(B, T', D)`` (T' = T, or fewer tokens after Eq. 8).
    Returns:
        ``(B, T', D)``: :math:`h^l`, the layer output.
    """
    ffn = eq04_ffn(z_tilde, p["w_1"], p["b_1"], p["w_2"], p["b_2"], approximate)   # (B, T', D)
    ffn = nnf.dropout(ffn, p=hidden_dropout_p, training=training)                    # (B, T', D)
    return layer_norm(z_tilde + ffn, p["ln2_w"], p["ln2_b"], eps)                  # (B, T', D)


def eq01_transformer_layer(h: Tensor, p: dict[str, Tensor], num_heads: int, eps: float,
                           mask_bias: Tensor | None,
                           approximate: str = "none") -> tuple[Tensor, Tensor]:
    r"""Eq. (1), §2, inference mode: one post-LN BERT layer.

    .. math:: Z^l = \mathrm{Transformer}^l(h_{[CLS]}^{l-1}, h_1^{l-1}, \dots, h_N^{l-1})

    written out as :math:`\tilde Z_l = \mathrm{LN}(h + \mathrm{MHSA}(h))`,
    :math:`Z^l = \mathrm{LN}(\tilde Z_l + \mathrm{FFN}(\tilde Z_l))`.

    Args:
        h: ``(B, T, D)``.  p: layer tensors (see :func:`eq01_attention_sublayer`).
    Returns:
        h^l ``(B, T, D)``, probs ``(B, H, T, T)``.

    Deviation (E1-1): the paper's ``Transformer^l`` does not show BERT's residual connections and
    post-LayerNorms (the original BERT/Transformer layer); we write them out.
    """
    z_tilde, probs = eq01_attention_sublayer(h, p, num_heads, eps, mask_bias)     # (B, T, D), (B, H, T, T)
    return eq01_ffn_sublayer(z_tilde, p, eps, approximate=approximate), probs     # (B, T, D)
