"""Saving and loading MPEE models.

An MPEE folder is a converted encoder folder (``config.json``, ``vocab.txt``; see weights/README.md)
plus ``mpee_config.json`` (an :class:`MPEEConfig`) and a ``model.safetensors`` whose keys are
``bert.<HF BertModel name>``, ``exits.<l-1>.<head parameter>`` and ``teacher.<parameter>``.

:func:`load_mpee` also accepts a plain converted encoder folder (no ``mpee_config.json``): the
backbone is loaded, every pooler head is initialised from the pretrained pooler (as the authors do),
the exit classifiers and the teacher get BERT's initialisation, normal(0, 0.02), drawn from a
generator seeded with ``seed`` so the same folder always gives the same untrained model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..io import load_encoder, load_tokenizer, read_config
from ..io.atomic import atomic_folder
from ..io.checkpoint import check_finite, check_weights_header, read_trained_state, write_encoder_config
from .config import PARAMETER_FIELDS, MPEEConfig
from .model import MPEEModel

MPEE_CONFIG = "mpee_config.json"
FORMAT_VERSION = "1"


def load_mpee(folder: str | Path, seed: int = 0, **config_overrides: Any) -> MPEEModel:
    """Load an MPEE model (eval mode, tokenizer attached) from ``folder``.

    Args:
        folder: an MPEE folder written by :func:`save_mpee`, or any converted encoder folder.
        seed: seeds the initialisation of untrained heads (encoder folders only).
        config_overrides: :class:`MPEEConfig` fields (e.g. ``threshold=0.2, r_ee=0.4``); for an
            encoder folder ``num_labels`` sets the number of classes (default 2). ``num_labels``,
            ``head`` and ``head_norm`` of a trained model are fixed, except that ``head_norm=True`` may
            be added to a model trained without it (fresh standardisers: two-stage training, docs L10).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    bert_config = read_config(folder)
    cfg_path = folder / MPEE_CONFIG
    if cfg_path.exists():
        base = MPEEConfig.from_json_file(cfg_path)
        for key in PARAMETER_FIELDS:
            if key in config_overrides and config_overrides[key] != getattr(base, key):
                if key == "head_norm" and config_overrides[key]:
                    continue             # adding standardisers to a trained model: they start at mean 0, var 1
                raise ValueError(f"{cfg_path}: {key} is {getattr(base, key)!r} in the trained model; "
                                 f"it cannot be overridden")
        mpee_config = replace(base, **config_overrides)
        new_norms = mpee_config.head_norm and not base.head_norm
        path = folder / "model.safetensors"
        # keys, shapes, dtypes: before allocating; standardisers added to a trained model start fresh
        check_mpee_weights_file(path, bert_config, mpee_config, may_miss=(".norm.running_",) if new_norms else ())
        state = read_trained_state(folder, bert_config)
        model = MPEEModel(bert_config, mpee_config)
        model.load_state_dict(state, strict=not new_norms)
    else:
        mpee_config = MPEEConfig(**config_overrides)
        encoder = load_encoder(folder)           # validated (keys, shapes, dtypes, finite) before any allocation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MPEEModel(bert_config, mpee_config)
        model.bert = encoder
        model.init_heads_from_pooler()
    model.tokenizer = load_tokenizer(folder)
    return model.eval()


def check_mpee_weights_file(path: Path, bert_config: Any, mpee_config: MPEEConfig,
                            may_miss: tuple[str, ...] = ()) -> None:
    """:func:`~mpee_ref.io.checkpoint.check_weights_header` against the MPEE model the configs describe."""
    check_weights_header(path, lambda: MPEEModel(bert_config, mpee_config),
                         f"the MPEE model of its config.json/{MPEE_CONFIG}", may_miss)


def save_mpee(model: MPEEModel, folder: str | Path, dtype: torch.dtype = torch.float32,
              extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` as an MPEE folder. ``dtype`` float16 halves the size.

    The whole folder is written under a temporary name and renamed into place, so a reader (or a
    crash) never sees new weights next to an old config. An existing ``folder`` is replaced only if it
    is empty or an MPEE folder; NaN/Inf weights are refused (a diverged model is never saved).
    """
    folder = Path(folder)
    folder = folder.resolve() if folder.is_symlink() else folder
    if folder.exists():
        names = {p.name for p in folder.iterdir()} if folder.is_dir() else {"?"}
        if names and not (folder / MPEE_CONFIG).is_file():
            raise ValueError(f"{folder}: exists and is not an MPEE folder (no {MPEE_CONFIG}); save_mpee replaces "
                             f"the whole folder: choose a new or empty folder")
    with atomic_folder(folder) as tmp:
        write_mpee_files(model, tmp, dtype, extra_files, label=folder)
    return folder


def write_mpee_files(model: MPEEModel, folder: Path, dtype: torch.dtype = torch.float32,
                     extra_files: dict[str, str] | None = None, label: Path | None = None) -> None:
    """The files of an MPEE folder, written into the existing (temporary) ``folder``; ``label`` names
    the final folder in the error raised for NaN/Inf weights."""
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    try:
        check_finite(state, label or folder)
    except ValueError as e:
        raise ValueError(f"refusing to save: {e}") from None
    save_file(state, str(folder / "model.safetensors"),
              metadata={"format": "mpee_ref-mpee", "format_version": FORMAT_VERSION})
    write_encoder_config(model.bert_config, model.tokenizer, folder)
    (folder / MPEE_CONFIG).write_text(json.dumps(model.mpee_config.to_dict(), indent=2) + "\n", encoding="utf-8")
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
