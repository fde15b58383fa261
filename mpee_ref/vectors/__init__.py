"""The porting kit's runner: load tests/vectors, run a port's adapter, apply the tolerance rules.

``python -m mpee_ref.vectors check --adapter my_port.py [--precision float32]`` (docs/PORTING.md).
Only NumPy and ``safetensors.numpy`` are imported.
"""
from .check import EntryResult, GoldenVectors, TensorResult, check_entry, compare, load_adapter, main, report, run

__all__ = ["EntryResult", "GoldenVectors", "TensorResult", "check_entry", "compare", "load_adapter", "main",
           "report", "run"]
