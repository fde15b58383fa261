"""The MPEE training objective, Eqs. (11)-(14): pure equations, the teacher module, and ``mpee_loss``."""
from .equations import (CE_WEIGHTINGS, KD_DIRECTIONS, KD_REDUCTIONS, LossTerms, ce_exit_weights, eq11_cross_entropy,
                        eq12_teacher, eq13_kd_loss, eq14_total_loss, mpee_loss)
from .checks import check_labels, check_memories
from .teacher import WeightedTeacher

__all__ = ["eq11_cross_entropy", "ce_exit_weights", "eq12_teacher", "eq13_kd_loss", "eq14_total_loss", "LossTerms",
           "mpee_loss", "WeightedTeacher", "CE_WEIGHTINGS", "KD_DIRECTIONS", "KD_REDUCTIONS", "check_labels", "check_memories"]
