"""The BERT encoder module: parameters under HF's names, computation from ``equations.py``.

Module attribute paths equal HF ``BertModel`` state-dict keys (``embeddings.word_embeddings.weight``,
``encoder.layer.{i}.attention.self.query.weight``, ..., ``pooler.dense.weight``), so a converted
checkpoint loads with a plain ``load_state_dict``. ``nn.Linear``/``nn.Embedding``/``nn.LayerNorm``
serve only as parameter holders: every forward computation calls a pure function of
``mpee_ref.encoder.equations``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import BertConfig
from . import equations as eq


@dataclass(frozen=True)
class EncoderOutput:
    """What :class:`BertEncoder` returns.

    Attributes:
        last_hidden_state: ``(B, T, D)`` output of the last layer.
        hidden_states: ``L + 1`` tensors ``(B, T, D)`` (embeddings, then each layer) if requested.
        attentions: ``L`` tensors ``(B, H, T, T)`` of attention probabilities (Eq. 3) if requested.
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


class _Holder(nn.Module):
    """An empty module used only to reproduce HF's nested parameter names."""


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout_p = cfg.hidden_dropout_prob

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        position_ids = torch.arange(T, device=input_ids.device)[None, :]       # (1, T), broadcast over B
        h = eq.embeddings(input_ids, token_type_ids, position_ids,
                          self.word_embeddings.weight, self.position_embeddings.weight,
                          self.token_type_embeddings.weight, self.LayerNorm.weight,
                          self.LayerNorm.bias, self.cfg.layer_norm_eps)          # (B, T, D)
        return nn.functional.dropout(h, self.dropout_p, self.training)


class BertLayer(nn.Module):
    """One encoder layer, Eq. (1), split where MPEE prunes tokens (after MHSA, before the FFN)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        D, Fi = cfg.hidden_size, cfg.intermediate_size
        self.attention = _Holder()
        self.attention.add_module("self", _Holder())
        self.attention.self.query = nn.Linear(D, D)
        self.attention.self.key = nn.Linear(D, D)
        self.attention.self.value = nn.Linear(D, D)
        self.attention.output = _Holder()
        self.attention.output.dense = nn.Linear(D, D)
        self.attention.output.LayerNorm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.intermediate = _Holder()
        self.intermediate.dense = nn.Linear(D, Fi)
        self.output = _Holder()
        self.output.dense = nn.Linear(Fi, D)
        self.output.LayerNorm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.approximate = "none" if cfg.hidden_act == "gelu" else "tanh"

    def params(self) -> dict[str, Tensor]:
        """The layer's tensors under the short names the equations use."""
        a, o = self.attention, self.output
        return {
            "w_q": a.self.query.weight, "b_q": a.self.query.bias,
            "w_k": a.self.key.weight, "b_k": a.self.key.bias,
            "w_v": a.self.value.weight, "b_v": a.self.value.bias,
            "w_o": a.output.dense.weight, "b_o": a.output.dense.bias,
            "ln1_w": a.output.LayerNorm.weight, "ln1_b": a.output.LayerNorm.bias,
            "w_1": self.intermediate.dense.weight, "b_1": self.intermediate.dense.bias,
            "w_2": o.dense.weight, "b_2": o.dense.bias,
            "ln2_w": o.LayerNorm.weight, "ln2_b": o.LayerNorm.bias,
        }

    def attention_sublayer(self, h: Tensor, mask_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """h ``(B, T, D)`` -> (Z~_l ``(B, T, D)``, probs ``(B, H, T, T)``)."""
        c = self.cfg
        return eq.eq01_attention_sublayer(h, self.params(), c.num_attention_heads, c.layer_norm_eps,
                                          mask_bias, c.hidden_dropout_prob,
                                          c.attention_probs_dropout_prob, self.training)

    def ffn_sublayer(self, z_tilde: Tensor) -> Tensor:
        """Z~_l ``(B, T', D)`` -> h^l ``(B, T', D)``."""
        c = self.cfg
        return eq.eq01_ffn_sublayer(z_tilde, self.params(), c.layer_norm_eps, c.hidden_dropout_prob,
                                    self.training, self.approximate)

    def forward(self, h: Tensor, mask_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        z_tilde, probs = self.attention_sublayer(h, mask_bias)     # (B, T, D), (B, H, T, T)
        return self.ffn_sublayer(z_tilde), probs                   # (B, T, D)


class BertEncoder(nn.Module):
    """BERT (embeddings, L post-LN layers, pooler) with HF parameter names.

    Call ``encoder(input_ids, attention_mask=None, token_type_ids=None)`` for an
    :class:`EncoderOutput`; ``output_attentions=True`` / ``output_hidden_states=True`` add the
    per-layer attention probabilities / hidden states.
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = _Holder()
        self.encoder.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.pooler = _Holder()
        self.pooler.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        """BERT's initialisation (normal(0, 0.02), zero bias, LayerNorm 1/0), for untrained models."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    def check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None,
                     token_type_ids: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Validate shapes/values and fill defaults; raises ``ValueError`` naming the problem."""
        c = self.config
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (B, T) integer tensor, got "
                             f"{getattr(input_ids, 'shape', type(input_ids))}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be int64/int32, got {input_ids.dtype}")
        B, T = input_ids.shape
        if T == 0 or B == 0:
            raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
        if T > c.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings "
                             f"({c.max_position_embeddings})")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= c.vocab_size:
            raise ValueError(f"input_ids out of range [0, {c.vocab_size}): min {lo}, max {hi}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if tuple(t.shape) != (B, T):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {(B, T)} like input_ids")
        bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
        if bad.numel() > 0:
            raise ValueError(f"attention_mask must contain only 0 and 1, got value(s) "
                             f"{bad.unique()[:5].tolist()}")
        if not bool(attention_mask[:, 0].bool().all()):
            raise ValueError("attention_mask[:, 0] must be 1: the first token ([CLS]) is always real")
        tt_lo, tt_hi = int(token_type_ids.min()), int(token_type_ids.max())
        if tt_lo < 0 or tt_hi >= c.type_vocab_size:
            raise ValueError(f"token_type_ids out of range [0, {c.type_vocab_size}): min {tt_lo}, max {tt_hi}")
        return input_ids.long(), attention_mask, token_type_ids.long()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, output_attentions: bool = False,
                output_hidden_states: bool = False) -> EncoderOutput:
        input_ids, attention_mask, token_type_ids = self.check_inputs(input_ids, attention_mask,
                                                                      token_type_ids)
        h = self.embeddings(input_ids, token_type_ids)                   # (B, T, D)
        # None when nothing is padded; tests/test_encoder_model.py checks both paths
        mask_bias = eq.padding_bias(attention_mask, h.dtype)             # (B, 1, 1, T) or None
        hidden, attentions = [h], []
        for layer in self.layers:
            h, probs = layer(h, mask_bias)                               # (B, T, D), (B, H, T, T)
            hidden.append(h)
            attentions.append(probs)
        return EncoderOutput(
            last_hidden_state=h,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
