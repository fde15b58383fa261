"""Layer-wise early exiting, Eqs. (9)-(10) and the entropy exit test: pure equations and the exit head."""
from .equations import (eq09_exit_logits, eq09_pooled_exit_logits, eq10_classifier_memory,
                        eq10_probabilities, exit_entropy, fold_standardisation, should_exit,
                        standardise_cls)
from .heads import HEAD_KINDS, ExitHead, HeadStandardiser

__all__ = ["eq09_exit_logits", "eq09_pooled_exit_logits", "eq10_classifier_memory", "eq10_probabilities",
           "exit_entropy", "should_exit", "standardise_cls", "fold_standardisation", "ExitHead",
           "HEAD_KINDS", "HeadStandardiser"]
