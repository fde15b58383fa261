"""Sequential token-wise early exiting, Eqs. (5)-(8) §3.1: class attention, its memory, top-m, fusion."""
from .equations import (FUSED_MEMORIES, FUSIONS, MEMORY_ALIGNMENTS, R_EE_MEANINGS, PruneResult, all_token_attention,
                        eq05_class_attention, eq06_attention_memory, eq07_num_kept, eq07_top_m,
                        eq08_fuse, padded_widths, prune_tokens)

__all__ = ["eq05_class_attention", "all_token_attention", "eq06_attention_memory", "eq07_num_kept",
           "eq07_top_m", "eq08_fuse", "PruneResult", "prune_tokens", "padded_widths",
           "R_EE_MEANINGS", "FUSIONS", "FUSED_MEMORIES", "MEMORY_ALIGNMENTS"]
