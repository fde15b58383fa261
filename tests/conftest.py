"""Shared test fixtures and the Hypothesis profile.

* Hypothesis runs derandomized (same examples every run) with no deadline and a small example budget,
  so the whole suite stays fast and reproducible on 2 cores.
* ``minilm_dir`` is the converted real checkpoint (``python -m mpee_ref fetch-weights`` writes it).
  Locally a missing folder skips the test with a message; with ``MPEE_REQUIRE_WEIGHTS=1`` (set by
  ``.ci/run``) it fails instead, so CI can never go green by skipping the real-weight tests.
* ``glue_dir`` is ``../shared/data/glue`` (or ``$MPEE_GLUE_DIR``); tests that need it skip without it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import HealthCheck, settings

# Tests run tiny tensors, where intra-op threading costs more than it gains (measured 3-5x slower with
# 2 threads on the 2-core CI machine); one thread also makes timings and reductions reproducible.
torch.set_num_threads(1)

settings.register_profile(
    "mpee", derandomize=True, deadline=None, max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mpee"))

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _require_or_skip(path: Path, what: str, how: str) -> Path:
    if path.exists():
        return path
    msg = f"{what} not found at {path}; {how}"
    if os.environ.get("MPEE_REQUIRE_WEIGHTS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = Path(os.environ.get("MPEE_MINILM_DIR", REPO / "weights" / "minilm-l6"))
    return _require_or_skip(path / "model.safetensors", "converted MiniLM-L6 checkpoint",
                            "run `python -m mpee_ref fetch-weights` first").parent


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    path = Path(os.environ.get("MPEE_GLUE_DIR", REPO.parent / "shared" / "data" / "glue"))
    if not path.exists():
        pytest.skip(f"GLUE data not found at {path} (set MPEE_GLUE_DIR)")
    return path
