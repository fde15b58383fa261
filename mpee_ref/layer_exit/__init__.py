"""Layer-wise early exiting, Eqs. (9)-(10) and the entropy exit test: pure equations and the exit head."""
from .equations import (eq09_exit_logits, eq09_pooled_exit_logits, eq10_classifier_memory,
                        eq10_probabilities, exit_entropy, should_exit)
from .heads import HEAD_KINDS, ExitHead

__all__ = ["eq09_exit_logits", "eq09_pooled_exit_logits", "eq10_classifier_memory", "eq10_probabilities",
           "exit_entropy", "should_exit", "ExitHead", "HEAD_KINDS"]
