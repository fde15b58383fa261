"""GLUE data (``glue``: task specs and TSV readers) and the paper's metrics (``metrics``, §4.2)."""
from .glue import (PAPER_TASKS, TASKS, Example, ReadReport, TaskSpec, get_task, read_glue, read_glue_file,
                   read_glue_with_report, resolve_split_path)
from .metrics import (accuracy, compute_metrics, f1_binary, matthews_corrcoef, pearson, rank_average,
                      spearman)

__all__ = ["PAPER_TASKS", "TASKS", "Example", "ReadReport", "TaskSpec", "get_task", "read_glue",
           "read_glue_file", "read_glue_with_report", "resolve_split_path", "accuracy", "compute_metrics",
           "f1_binary", "matthews_corrcoef", "pearson", "rank_average", "spearman"]
