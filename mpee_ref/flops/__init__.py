"""FLOPs accounting and the acceleration ratio rho, Eq. (15)."""
from .equations import (SampleFlops, authors_code_lengths, authors_code_sample_macs, authors_layer_macs, authors_padded_lengths, authors_sample_flops,
                        eq15_layer_flops, eq15_speedup, fusion_flops, full_model_flops, head_flops,
                        sample_flops)

__all__ = ["SampleFlops", "authors_code_lengths", "authors_code_sample_macs", "authors_layer_macs", "authors_padded_lengths", "authors_sample_flops",
           "eq15_layer_flops", "eq15_speedup", "fusion_flops", "full_model_flops", "head_flops",
           "sample_flops"]
