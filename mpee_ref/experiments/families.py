r"""The two model families ``train``, ``evaluate``, ``sweep`` and ``compare`` handle: MPEE
(:class:`~mpee_ref.mpee.MPEEModel`) and the baselines (:mod:`mpee_ref.baselines`, chosen with
``--method``). Everything that differs between them is here, so the loops stay family-blind:

* a folder's family is decided by its files (``baseline_config.json``: a baseline; otherwise MPEE or
  a converted encoder): :func:`load_trained`;
* a fresh baseline run starts from an encoder folder (:func:`~mpee_ref.baselines.checkpoint.new_baseline`)
  or, for a later stage of a two-stage method, from the earlier stage's ``final/``: :func:`build_baseline`;
* files: :func:`write_model_files` (checkpoints), :func:`save_final` (``final/``);
* :func:`summarize_baseline`: the dev summary of a baseline (metric, ρ, exits, tokens per layer), the
  same keys as MPEE's where they mean the same thing.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ..baselines import BaselineModel
from ..baselines.checkpoint import BASELINE_CONFIG, load_baseline, method_of, new_baseline, write_baseline_files
from ..baselines.registry import get_method
from ..data import compute_metrics, get_task
from ..flops import eq15_speedup
from ..io.atomic import atomic_folder
from ..mpee import MPEEModel, load_mpee
from ..mpee.checkpoint import write_mpee_files

Model = MPEEModel | BaselineModel


def is_baseline_folder(folder: str | Path) -> bool:
    return (Path(folder) / BASELINE_CONFIG).is_file()


def load_trained(folder: str | Path, **overrides: Any) -> Model:
    """The model in ``folder``: a baseline folder (``baseline_config.json``) or an MPEE/encoder folder."""
    if is_baseline_folder(folder):
        return load_baseline(folder, **overrides)[1]
    return load_mpee(folder, **overrides)


def method_name(model: Model) -> str:
    return "mpee" if isinstance(model, MPEEModel) else method_of(model).name


def num_labels(model: Model) -> int:
    return model.mpee_config.num_labels if isinstance(model, MPEEModel) else model.num_labels


def config_dict(model: Model) -> dict[str, Any]:
    return model.mpee_config.to_dict() if isinstance(model, MPEEModel) else asdict(model.config)


def build_baseline(method: str, folder: str | Path, seed: int, num_labels: int, stage: str | None,
                   options: dict[str, Any]) -> BaselineModel:
    """A fresh run's baseline: from an encoder folder (classifiers seeded with ``seed``), or from a
    baseline folder of the same method (a later training stage, e.g. DeeBERT's off-ramps)."""
    spec = get_method(method)
    staged = {"stage": stage} if stage is not None else {}
    if is_baseline_folder(folder):
        trained, model = load_baseline(folder, **options, **staged)
        if trained != spec.name:
            raise ValueError(f"{folder}: holds a {trained} model, --method is {spec.name}")
        if model.num_labels != num_labels:
            raise ValueError(f"{folder}: has {model.num_labels} classes, the task has {num_labels}")
        return model.train()
    return new_baseline(spec.name, folder, seed=seed, num_labels=num_labels, **options, **staged)


def write_model_files(model: Model, folder: Path, label: Path | None = None) -> None:
    """The model's files into the existing (temporary) ``folder`` (a training checkpoint)."""
    if isinstance(model, MPEEModel):
        write_mpee_files(model, folder, label=label)
    else:
        write_baseline_files(model, folder, label=label)


def save_final(model: Model, folder: Path, extra_files: dict[str, str]) -> None:
    """``final/``: the model (float32) and ``extra_files``, written whole or not at all."""
    with atomic_folder(folder) as tmp:
        write_model_files(model, tmp, label=folder)
        for name, text in extra_files.items():
            (tmp / name).write_text(text, encoding="utf-8")


def evaluate_baseline(model: BaselineModel, data: Any, task: str, batch_size: int,
                      setting: float | None = None) -> dict[str, Any]:
    """:func:`summarize_baseline` of one pass over ``data`` at the knob value ``setting`` (None: the
    model's config), with the throughput (examples per second)."""
    from .evaluate import run_inference
    spec = method_of(model)
    if setting is not None and spec.knob is None:
        raise ValueError(f"--setting: {spec.name} has no knob to set")
    kwargs = {} if setting is None else spec.infer_kwargs(setting, model.bert_config.num_hidden_layers)
    t0 = time.perf_counter()
    samples = run_inference(model, data, batch_size, **kwargs)
    seconds = time.perf_counter() - t0
    result = summarize_baseline(samples, data.labels, task, model)
    result.update(setting={spec.knob: setting} if setting is not None else None, wall_time_s=seconds,
                  examples_per_s=len(samples) / seconds)
    return result


def summarize_baseline(samples: Sequence[Any], labels: Sequence[int], task: str, model: BaselineModel) -> dict[str, Any]:
    """Metrics, ρ (Eq. 15), exit layers and real tokens per layer of a baseline's finished ``samples``."""
    if len(samples) != len(labels) or not samples:
        raise ValueError(f"samples/labels: need equal, non-zero lengths, got {len(samples)} and {len(labels)}")
    L = model.bert_config.num_hidden_layers
    exits = [s.exit_layer for s in samples]
    reached = [sum(1 for s in samples if len(s.tokens_per_layer) > l) for l in range(L)]
    tokens = [sum(s.tokens_per_layer[l] for s in samples if len(s.tokens_per_layer) > l) for l in range(L)]
    return {
        "task": get_task(task).name, "method": method_of(model).name, "n_examples": len(samples),
        "metrics": compute_metrics(task, [s.prediction for s in samples], list(labels)),
        "rho": eq15_speedup([s.flops.full for s in samples], [s.flops.executed for s in samples]),
        "mean_exit_layer": sum(exits) / len(exits),
        "exit_layer_counts": {str(l): exits.count(l) for l in range(1, L + 1)},
        "samples_per_layer": reached,
        "mean_tokens_per_layer": [tokens[l] / reached[l] if reached[l] else None for l in range(L)],
        "flops": {"convention": "ours", "executed": sum(s.flops.executed for s in samples),
                  "full": sum(s.flops.full for s in samples)},
        "config": asdict(model.config),
    }
