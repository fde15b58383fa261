"""Load mpee_ref checkpoints (and, converting in memory, plain HF BERT folders).

A converted folder holds ``config.json``, ``model.safetensors`` (fp32, our names, metadata
``format=mpee_ref``) and ``vocab.txt``; see ``weights/README.md``. Every load validates keys, shapes
and dtypes against the config's key table (:func:`mpee_ref.io.convert.expected_shapes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ..config import BertConfig
from ..encoder import BertEncoder
from .convert import (CONFIG_NAME, FORMAT, FORMAT_VERSION, VOCAB_NAME, WEIGHTS_NAME, check_state_dict,
                      read_hf_folder, read_tensor_file)


def read_config(folder: str | Path) -> BertConfig:
    """The :class:`BertConfig` of a checkpoint folder (converted or HF), from its ``config.json``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    return BertConfig.from_json_file(folder / CONFIG_NAME)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata of ``path`` (``{}`` if none); ``ValueError`` if unreadable."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file, on CPU. ``.bin`` is refused (convert it first)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: load_state_dict_file reads .safetensors only; convert other formats "
                         f"with `python -m mpee_ref convert`")
    return read_tensor_file(path)


def is_converted(folder: str | Path) -> bool:
    """Whether ``folder`` holds a ``model.safetensors`` written by our converter (any version)."""
    p = Path(folder) / WEIGHTS_NAME
    return p.is_file() and read_metadata(p).get("format") == FORMAT


def load_converted_state(folder: str | Path) -> tuple[BertConfig, dict[str, Tensor]]:
    """Config and validated tensors of a converted folder."""
    folder = Path(folder)
    cfg = read_config(folder)
    path = folder / WEIGHTS_NAME
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an mpee_ref checkpoint (metadata format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')!r}, this mpee_ref reads "
                         f"{FORMAT_VERSION!r}; re-run the converter")
    if not (folder / VOCAB_NAME).is_file():
        raise FileNotFoundError(f"{folder / VOCAB_NAME}: missing from the converted folder")
    state = load_state_dict_file(path)
    check_state_dict(state, cfg, path)
    bad = sorted(k for k, v in state.items() if v.dtype != torch.float32)
    if bad:
        raise ValueError(f"{path}: tensors must be float32 in format {FORMAT_VERSION}, got "
                         f"{state[bad[0]].dtype} for {', '.join(bad[:5])}")
    check_vocab_fits(folder, cfg)
    return cfg, state


class _SkipInit(TorchFunctionMode):
    """Turn ``torch.nn.init`` fills into no-ops, in this thread only, while a model is built to receive
    loaded tensors.

    A ``TorchFunctionMode`` lives on the current thread's mode stack, so a model built at the same
    time in another thread is initialised normally (a process-wide patch of ``torch.nn.init`` gave
    such models uninitialised memory). Without it, the first random fill on the meta device costs
    ~1.5 s of one-time imports.
    """

    SKIPPED = (torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_,
               torch.nn.init.zeros_, torch.nn.init.ones_, torch.nn.init.trunc_normal_,
               torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_, torch.Tensor.fill_)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _skip_init() -> _SkipInit:
    """``with _skip_init(): ...`` builds modules without running their initialisers (this thread only)."""
    return _SkipInit()


def check_finite(state: dict[str, Tensor], source: str | Path) -> None:
    """Raise ``ValueError`` naming ``source`` and the first tensors holding NaN or Inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{source}: {len(bad)} tensor(s) hold NaN or Inf values: {', '.join(bad[:5])}"
                         f"{' ...' if len(bad) > 5 else ''}; the model diverged or the file is damaged")


#: safetensors dtype codes accepted in a trained-model folder (cast to float32 on load).
FLOAT_CODES = ("F16", "BF16", "F32", "F64")


def check_weights_header(path: Path, build: Callable[[], torch.nn.Module], what: str,
                         may_miss: tuple[str, ...] = ()) -> None:
    """Compare the tensor names, shapes and dtypes in ``path``'s header with the model ``build()``
    makes (called on the meta device without initialisers: no memory), so a wrong ``config.json``
    (``vocab_size`` 1e9) is refused before anything is allocated. Integer and bool tensors are refused,
    never cast. Keys containing one of ``may_miss`` may be absent. ``what`` names the model in errors
    (e.g. ``"the MPEE model of its config.json/mpee_config.json"``)."""
    with _skip_init(), torch.device("meta"):
        skeleton = build()
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (a trained-model folder needs {WEIGHTS_NAME})") from None
    except Exception as e:                   # SafetensorError, OSError...: all mean unreadable
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    missing = sorted(k for k in set(expected) - set(header) if not any(m in k for m in may_miss))
    unexpected = sorted(set(header) - set(expected))
    shapes = [f"{k}: file {header[k][1]} vs model {v}" for k, v in expected.items()
              if k in header and header[k][1] != v]
    dtypes = [f"{k}: {header[k][0]}" for k in expected if k in header and header[k][0] not in FLOAT_CODES]
    if missing or unexpected or shapes or dtypes:
        raise ValueError(f"{path}: does not match {what}; missing "
                         f"{missing[:10]}{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}, "
                         f"mis-shaped {shapes[:10]}, non-float {dtypes[:10]}")


def read_trained_state(folder: Path, bert_config: BertConfig) -> dict[str, Tensor]:
    """The float32 tensors of ``folder``'s ``model.safetensors`` (header checked beforehand), refused
    when unreadable or holding NaN/Inf; ``vocab.txt``, when present, must fit the embedding."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = folder / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    check_finite(state, path)
    if (folder / VOCAB_NAME).is_file():
        check_vocab_fits(folder, bert_config)
    return {k: v.float() for k, v in state.items()}


def write_encoder_config(bert_config: BertConfig, tokenizer: Any, folder: Path) -> None:
    """``config.json`` (HF BertModel style, with the tokenizer's ``do_lower_case``) and ``vocab.txt``
    (copied from the tokenizer's file) of a trained-model folder."""
    config = {**bert_config.to_dict(), "architectures": ["BertModel"]}
    if tokenizer is not None:
        config["do_lower_case"] = bool(getattr(tokenizer, "do_lower_case", True))
        vocab = getattr(tokenizer, "vocab_file", None)
        if vocab is not None:
            (folder / VOCAB_NAME).write_bytes(Path(vocab).read_bytes())
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def check_vocab_fits(folder: Path, cfg: BertConfig) -> None:
    """``vocab.txt`` may not have more tokens than the embedding has rows (ids would be out of range)."""
    path = folder / VOCAB_NAME
    with open(path, "rb") as f:
        n = sum(1 for _ in f)
    if n > cfg.vocab_size:
        raise ValueError(f"{path}: {n} tokens but {folder / CONFIG_NAME} has vocab_size {cfg.vocab_size}")


def encoder_from_state(cfg: BertConfig, state: dict[str, Tensor],
                       dtype: torch.dtype = torch.float32) -> BertEncoder:
    """A :class:`BertEncoder` in eval mode holding ``state`` (validated beforehand), cast to ``dtype``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    with _skip_init(), torch.device("meta"):   # no wasted random init; tensors are assigned below
        model = BertEncoder(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(dtype).eval()


def load_encoder(folder: str | Path, dtype: torch.dtype = torch.float32, *,
                 allow_missing_pooler: bool = False) -> BertEncoder:
    """Load a :class:`BertEncoder` (eval mode) from a converted folder or an unconverted HF folder.

    Args:
        folder: a folder written by :func:`~mpee_ref.io.convert.convert_checkpoint`, or an HF BERT
            folder (``config.json`` + ``model.safetensors``/``pytorch_model.bin``), converted in memory
            with the same key table.
        dtype: parameter dtype of the returned model (weights are stored in float32).
        allow_missing_pooler: for HF folders only, as in ``convert_checkpoint``.
    Raises:
        FileNotFoundError / ValueError naming the file and every key/shape problem.
    """
    folder = Path(folder)
    if is_converted(folder):
        cfg, state = load_converted_state(folder)
    else:
        ckpt = read_hf_folder(folder, allow_missing_pooler=allow_missing_pooler)
        cfg, state = ckpt.config, ckpt.state
    return encoder_from_state(cfg, state, dtype)
