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
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..io import load_encoder, load_tokenizer, read_config
from .config import MPEEConfig
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
        for key in ("num_labels", "head", "head_norm"):
            if key in config_overrides and config_overrides[key] != getattr(base, key):
                if key == "head_norm" and config_overrides[key]:
                    continue             # adding standardisers to a trained model: they start at mean 0, var 1
                raise ValueError(f"{cfg_path}: {key} is {getattr(base, key)!r} in the trained model; "
                                 f"it cannot be overridden")
        mpee_config = replace(base, **config_overrides)
        new_norms = mpee_config.head_norm and not base.head_norm
        model = MPEEModel(bert_config, mpee_config)
        path = folder / "model.safetensors"
        try:
            state = load_file(str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing (an MPEE folder needs model.safetensors)") from None
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
        expected = model.state_dict()
        missing = sorted(k for k in set(expected) - set(state) if not (new_norms and ".norm.running_" in k))
        unexpected = sorted(set(state) - set(expected))
        shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or shapes:
            raise ValueError(f"{path}: does not match the MPEE model; missing {missing[:10]}"
                             f"{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}, "
                             f"mis-shaped {shapes[:10]}")
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=not new_norms)
    else:
        mpee_config = MPEEConfig(**config_overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MPEEModel(bert_config, mpee_config)
        model.bert = load_encoder(folder)
        model.init_heads_from_pooler()
    model.tokenizer = load_tokenizer(folder)
    return model.eval()


def save_mpee(model: MPEEModel, folder: str | Path, dtype: torch.dtype = torch.float32,
              extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` as an MPEE folder (atomically per file). ``dtype`` float16 halves the size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    _atomic(folder / "model.safetensors",
            lambda p: save_file(state, p, metadata={"format": "mpee_ref-mpee", "format_version": FORMAT_VERSION}))
    config = model.bert_config.to_dict()
    config["architectures"] = ["BertModel"]
    if model.tokenizer is not None:
        config["do_lower_case"] = bool(getattr(model.tokenizer, "do_lower_case", True))
        vocab = getattr(model.tokenizer, "vocab_file", None)
        if vocab is not None and Path(vocab).resolve() != (folder / "vocab.txt").resolve():
            data = Path(vocab).read_text(encoding="utf-8")
            _atomic(folder / "vocab.txt", lambda p: Path(p).write_text(data, encoding="utf-8"))
    _atomic(folder / "config.json", lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    _atomic(folder / MPEE_CONFIG,
            lambda p: Path(p).write_text(json.dumps(model.mpee_config.to_dict(), indent=2) + "\n"))
    for name, text in (extra_files or {}).items():
        _atomic(folder / name, lambda p, t=text: Path(p).write_text(t, encoding="utf-8"))
    return folder


def _atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)            # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
