"""A NumPy port of mpee_ref (no torch): Eqs. (1)-(15), token pruning, MPEE inference and the loss forward.

It exists to show, and test, that the reference can be ported: it passes the golden vectors in
tests/vectors (docs/PORTING.md) and matches the torch model on real weights. Only NumPy (and
``safetensors.numpy`` for loading) is imported.
"""
from .equations import (PruneResult, all_token_attention, attention_mask_bias, embeddings, eq01_attention_sublayer,
                        eq01_ffn_sublayer, eq01_transformer_layer, eq02_mhsa, eq03_attention, eq04_ffn,
                        eq05_class_attention, eq06_attention_memory, eq07_num_kept, eq07_top_m, eq08_fuse,
                        eq09_exit_logits, eq09_pooled_exit_logits, eq10_classifier_memory, eq10_probabilities,
                        ce_exit_weights, eq11_cross_entropy, eq12_teacher, eq13_kd_loss, eq14_total_loss,
                        exit_entropy, gelu, layer_norm, linear, log_softmax, padded_widths, prune_tokens, should_exit, softmax)
from .flops import (authors_code_sample_macs, authors_layer_macs, eq15_layer_flops, eq15_speedup, fusion_flops,
                    head_flops, sample_flops)
from .model import BertNumpy, LayerTraceNumpy, LossNumpy, MPEENumpy, PaddedLayerNumpy, SampleResultNumpy

__all__ = [name for name in dir() if not name.startswith("_")]
