"""Saving and loading baseline models (the methods of :mod:`mpee_ref.baselines.registry`).

A baseline folder is a converted encoder folder (``config.json``, ``vocab.txt``) plus
``baseline_config.json`` (``{"format", "method", "config"}``: the method's name and its config's
fields) and a ``model.safetensors`` with keys ``bert.<HF BertModel name>`` and ``heads.<k>.<parameter>``.
Loading checks names, shapes and dtypes against the model the configs describe before allocating,
and refuses NaN/Inf weights, as :func:`~mpee_ref.mpee.load_mpee` does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..io import load_encoder, load_tokenizer, read_config
from ..io.atomic import atomic_folder
from ..io.checkpoint import check_finite, check_weights_header, read_trained_state, write_encoder_config
from .common import BaselineModel
from .registry import METHODS, MethodSpec, get_method

BASELINE_CONFIG = "baseline_config.json"
FORMAT = "mpee_ref-baseline-1"


def _config(spec: MethodSpec, values: dict[str, Any], source: str) -> Any:
    known = {f.name for f in fields(spec.config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown {spec.config.__name__} field(s) {unknown}; known: {sorted(known)}")
    if isinstance(values.get("retention"), list):
        values = {**values, "retention": tuple(values["retention"])}          # JSON has no tuples
    return spec.config(**values)


def new_baseline(method: str, encoder_folder: str | Path, seed: int = 0, **config: Any) -> BaselineModel:
    """An untrained baseline on a converted encoder: backbone loaded, classifiers initialised with a
    generator seeded with ``seed`` and then, for pooler heads, copied from the backbone's pooler."""
    spec = get_method(method)
    encoder = load_encoder(encoder_folder)
    cfg = _config(spec, dict(config), f"{method} config")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.model(encoder.config, cfg)
    model.bert = encoder
    model.init_heads_from_pooler()
    model.tokenizer = load_tokenizer(encoder_folder)
    return model.train()


def load_baseline(folder: str | Path, **overrides: Any) -> tuple[str, BaselineModel]:
    """(method name, model in eval mode with its tokenizer) from a folder written by :func:`save_baseline`.
    ``overrides`` replace config fields (e.g. ``stage="ramps"`` to continue DeeBERT's training)."""
    folder = Path(folder)
    path = folder / BASELINE_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not a baseline folder written by save_baseline)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}")
    spec = get_method(str(meta.get("method")))
    cfg = _config(spec, {**meta.get("config", {}), **overrides}, str(path))
    bert_config = read_config(folder)
    weights = folder / "model.safetensors"
    check_weights_header(weights, lambda: spec.model(bert_config, cfg), f"the {spec.name} model of {path}")
    state = read_trained_state(folder, bert_config)
    model = spec.model(bert_config, cfg)
    model.load_state_dict(state)
    model.tokenizer = load_tokenizer(folder)
    return spec.name, model.eval()


def method_of(model: BaselineModel) -> MethodSpec:
    """The registered method whose model class ``model`` is."""
    for spec in METHODS.values():
        if type(model) is spec.model:
            return spec
    raise ValueError(f"{type(model).__name__} is not a registered baseline model ({sorted(METHODS)})")


def save_baseline(model: BaselineModel, folder: str | Path, dtype: torch.dtype = torch.float32,
                  extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` as a baseline folder, atomically (a crash never leaves new weights beside an old
    config); NaN/Inf weights are refused. ``extra_files``: more text files (name -> content)."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        write_baseline_files(model, tmp, dtype, extra_files, label=folder)
    return folder


def write_baseline_files(model: BaselineModel, folder: Path, dtype: torch.dtype = torch.float32,
                         extra_files: dict[str, str] | None = None, label: Path | None = None) -> None:
    """The files of a baseline folder, written into the existing (temporary) ``folder``; ``label`` names
    the final folder in errors."""
    spec = method_of(model)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    try:
        check_finite(state, label or folder)
    except ValueError as e:
        raise ValueError(f"refusing to save: {e}") from None
    save_file(state, str(folder / "model.safetensors"), metadata={"format": FORMAT, "method": spec.name})
    write_encoder_config(model.bert_config, getattr(model, "tokenizer", None), folder)
    meta = {"format": FORMAT, "method": spec.name, "config": asdict(model.config)}
    (folder / BASELINE_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
