"""Training checkpoints: ``out/checkpoint-<step>/`` holds the model (``save_mpee``'s files) and
``train_state.pt`` (optimiser, scheduler, every rank's RNG state, the step, the run's arguments and
identity), read back with ``weights_only=True``.

A checkpoint is written whole under a temporary name and renamed into place
(:func:`~mpee_ref.io.atomic.atomic_folder`), so a crash leaves the previous checkpoint whole; NaN/Inf
weights are never saved (:class:`~mpee_ref.experiments.runs.Diverged`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import atomic_folder
from .families import Model, write_model_files
from .runs import Diverged, weights_finite

STATE_FILE = "train_state.pt"
STATE_FORMAT = "mpee_ref-train-state-1"
#: ``train_state.pt`` fields every checkpoint has, with their types.
STATE_FIELDS: tuple[tuple[str, type], ...] = (("step", int), ("world_size", int), ("optimizer", dict),
                                              ("scheduler", dict), ("rng_cpu", list), ("args", str))


def checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out`` by ascending step (temporary dot-folders are ignored)."""
    found = []
    for p in Path(out).glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if p.is_dir() and step.isdigit() and (p / STATE_FILE).is_file():
            found.append((int(step), p))
    return sorted(found)


def latest_checkpoint(out: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``out``; None if there is none."""
    found = checkpoints(out)
    return found[-1][1] if found else None


def save_checkpoint(out: Path, model: Model, state: dict[str, Any], keep_last: int = 1,
                    protect: Path | None = None) -> Path:
    """Write ``out/checkpoint-<step>/`` whole under a temporary name and rename it into place (an existing
    folder of that name is replaced, never kept); prune older ones, except ``protect`` (the folder a
    resumed model was loaded from: its tokenizer reads ``vocab.txt`` there). NaN/Inf weights are refused."""
    final = out / f"checkpoint-{state['step']}"
    if not weights_finite(model.parameters()):
        raise Diverged(f"{final}: refusing to save a checkpoint whose weights hold NaN/Inf")
    try:
        with atomic_folder(final) as tmp:
            write_model_files(model, tmp, label=final)
            torch.save(state, tmp / STATE_FILE)
    except RuntimeError as e:            # torch.save reports a full disk as a RuntimeError
        raise OSError(f"{final}: could not write the checkpoint ({str(e).splitlines()[0]})") from None
    older = sorted((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit() and p != final)
    for _, p in older[:max(0, len(older) - (keep_last - 1))]:
        if protect is None or p.resolve() != protect.resolve():
            shutil.rmtree(p, ignore_errors=True)
    return final


def load_train_state(folder: Path) -> dict[str, Any]:
    """``folder/train_state.pt`` (``weights_only=True``); every failure is one ``ValueError`` naming it."""
    path = folder / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except Exception as e:               # UnpicklingError, RuntimeError (truncated zip), EOFError...
        raise ValueError(f"{path}: not a readable training state ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: format {got!r}, expected {STATE_FORMAT!r}")
    for key, typ in STATE_FIELDS:
        if not isinstance(state.get(key), typ):
            raise ValueError(f"{path}: field {key!r} missing or not a {typ.__name__}")
    return state
