"""Convert a Hugging Face BERT checkpoint folder into mpee_ref's on-disk format.

The conversion is an explicit key table (:func:`expected_shapes`), built from the config: 5 embedding
tensors, 16 tensors per layer, 2 pooler tensors. Our module's parameter names *are* HF ``BertModel``
names without a prefix (see ``mpee_ref/encoder/model.py``), so the table maps a name to itself; the
work is in accepting the layouts found in the wild and refusing everything else loudly:

* keys with a ``bert.`` prefix (``BertFor*`` models) or none (``BertModel``, sentence-transformers);
* task heads ``classifier.*`` (``BertForSequenceClassification``), ``cls.*`` (``BertForPreTraining``,
  ``BertForMaskedLM``) and ``qa_outputs.*`` are **dropped** (the early-exit classifiers of MPEE are
  trained from scratch, like the authors' code does);
* old TF-port names ``LayerNorm.gamma`` / ``LayerNorm.beta`` are renamed ``.weight`` / ``.bias``;
* buffers ``embeddings.position_ids`` / ``embeddings.token_type_ids`` are ignored;
* fp16 / bf16 / fp64 tensors are cast to fp32 (the report says so);
* missing, unexpected, mis-shaped or non-float tensors raise ONE ``ValueError`` naming the file and
  listing every problem.

Output folder (see ``weights/README.md``): ``model.safetensors`` (fp32, our names, metadata
``{"format": "mpee_ref", "format_version": "1", ...}``), ``config.json`` (``BertConfig.to_dict()`` +
``architectures`` + tokenizer options ``do_lower_case`` / ``strip_accents``) and ``vocab.txt``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..config import BertConfig, read_json_object

FORMAT = "mpee_ref"
FORMAT_VERSION = "1"
WEIGHTS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"

#: Prefixes a BERT body may sit under in a source checkpoint ("" = bare BertModel keys).
SOURCE_PREFIXES = ("", "bert.", "0.auto_model.", "auto_model.")
#: Task heads that are dropped by design (not errors).
HEAD_PREFIXES = ("classifier.", "cls.", "qa_outputs.")
#: Non-parameter buffers some checkpoints save; ignored.
IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
POOLER_KEYS = ("pooler.dense.weight", "pooler.dense.bias")
_MAX_LISTED = 20


def expected_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """The key table: every tensor of :class:`~mpee_ref.encoder.BertEncoder` and its shape.

    Names equal HF ``BertModel`` state-dict keys without prefix. Order: embeddings, layers, pooler.
    """
    V, P, TV = cfg.vocab_size, cfg.max_position_embeddings, cfg.type_vocab_size
    D, F = cfg.hidden_size, cfg.intermediate_size
    table: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (V, D),
        "embeddings.position_embeddings.weight": (P, D),
        "embeddings.token_type_embeddings.weight": (TV, D),
        "embeddings.LayerNorm.weight": (D,),
        "embeddings.LayerNorm.bias": (D,),
    }
    per_layer = {
        "attention.self.query.weight": (D, D), "attention.self.query.bias": (D,),
        "attention.self.key.weight": (D, D), "attention.self.key.bias": (D,),
        "attention.self.value.weight": (D, D), "attention.self.value.bias": (D,),
        "attention.output.dense.weight": (D, D), "attention.output.dense.bias": (D,),
        "attention.output.LayerNorm.weight": (D,), "attention.output.LayerNorm.bias": (D,),
        "intermediate.dense.weight": (F, D), "intermediate.dense.bias": (F,),
        "output.dense.weight": (D, F), "output.dense.bias": (D,),
        "output.LayerNorm.weight": (D,), "output.LayerNorm.bias": (D,),
    }
    for i in range(cfg.num_hidden_layers):
        for name, shape in per_layer.items():
            table[f"encoder.layer.{i}.{name}"] = shape
    table["pooler.dense.weight"] = (D, D)
    table["pooler.dense.bias"] = (D,)
    return table


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion did besides copying tensors (for logs and the CLI)."""

    source_file: str
    prefix: str                          # the prefix stripped from body keys ("" for bare keys)
    renamed: tuple[str, ...] = ()        # source keys renamed gamma/beta -> weight/bias
    dropped_heads: tuple[str, ...] = ()  # classifier.* / cls.* / qa_outputs.* keys dropped
    ignored_buffers: tuple[str, ...] = ()
    cast_from: tuple[str, ...] = ()      # source dtypes other than float32, cast to float32
    pooler: str = "loaded"               # "loaded" | "initialised" (allow_missing_pooler)

    def summary(self) -> str:
        parts = [f"source {self.source_file}", f"prefix {self.prefix or '(none)'!s}"]
        if self.renamed:
            parts.append(f"renamed {len(self.renamed)} gamma/beta keys")
        if self.dropped_heads:
            parts.append(f"dropped heads {', '.join(self.dropped_heads)}")
        if self.ignored_buffers:
            parts.append(f"ignored buffers {', '.join(self.ignored_buffers)}")
        if self.cast_from:
            parts.append(f"cast {'/'.join(self.cast_from)} -> float32")
        if self.pooler != "loaded":
            parts.append("pooler missing: initialised N(0, 0.02) with seed 0")
        return "; ".join(parts)


def _listing(items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(shown) + more


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; invalid JSON or another JSON value is one ``ValueError`` naming the file
    (:func:`mpee_ref.config.read_json_object`, which the configs use too)."""
    return read_json_object(path, "file")


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, as 64 hex digits (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading sources
def find_weights_file(folder: str | Path) -> Path:
    """``model.safetensors`` if present, else ``pytorch_model.bin``; a clear error otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    for name in (WEIGHTS_NAME, BIN_NAME):
        if (folder / name).is_file():
            return folder / name
    sharded = [n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
               if (folder / n).exists()]
    if sharded:
        raise ValueError(f"{folder / sharded[0]}: sharded checkpoints are not supported; "
                         f"save the model unsharded (max_shard_size larger than the model)")
    present = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} or {BIN_NAME} (found: {', '.join(present) or 'nothing'})")


def read_tensor_file(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file or a ``.bin`` (``torch.load(weights_only=True)``).

    Raises ``ValueError`` naming the file if it is corrupt, truncated or not a flat tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError... : all mean "unreadable"
            raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if path.suffix == ".bin":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError, RuntimeError, EOFError...
            raise ValueError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {e})") from None
        if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                   for k, v in obj.items()):
            raise ValueError(f"{path}: expected a flat dict of name -> tensor, got {type(obj).__name__}")
        return dict(obj)
    raise ValueError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors or .bin")


def read_tokenizer_options(folder: str | Path) -> dict[str, Any]:
    """``{"do_lower_case": bool, "strip_accents": bool | None}`` for the folder's vocabulary.

    Looked up in ``config.json`` (our converted format), then ``tokenizer_config.json`` (HF), else the
    BERT-uncased defaults ``True`` / ``None`` (``None``: strip accents iff lower-casing, as HF does).
    """
    folder = Path(folder)
    opts: dict[str, Any] = {"do_lower_case": True, "strip_accents": None}
    for name in (TOKENIZER_CONFIG_NAME, CONFIG_NAME):  # later file wins
        p = folder / name
        if not p.is_file():
            continue
        d = read_json(p)
        for key in opts:
            if key in d:
                value = d[key]
                if not (isinstance(value, bool) or (key == "strip_accents" and value is None)):
                    raise ValueError(f"{p}: {key} must be true/false, got {value!r}")
                opts[key] = value
    return opts


# ----------------------------------------------------------------------------- normalising
def _rename_old(key: str) -> str:
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def check_state_dict(state: Mapping[str, Tensor], cfg: BertConfig, source: str | Path,
                     extra_problems: list[str] | None = None) -> None:
    """Raise ONE ``ValueError`` naming ``source`` if keys, shapes or dtypes differ from the table."""
    table = expected_shapes(cfg)
    problems = list(extra_problems or [])
    missing = [k for k in table if k not in state]
    unexpected = sorted(k for k in state if k not in table)
    shapes = [f"{k}: shape {tuple(state[k].shape)}, expected {table[k]}"
              for k in table if k in state and tuple(state[k].shape) != table[k]]
    dtypes = [f"{k}: dtype {state[k].dtype} is not a floating-point type"
              for k in table if k in state and not state[k].is_floating_point()]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes ({len(shapes)}): {_listing(shapes)}")
    if dtypes:
        problems.append(f"wrong dtypes ({len(dtypes)}): {_listing(dtypes)}")
    nonfinite = [k for k in table if k in state and state[k].is_floating_point()
                 and not bool(torch.isfinite(state[k]).all())]
    if nonfinite:
        problems.append(f"NaN or Inf values ({len(nonfinite)}): {_listing(nonfinite)}")
    if problems:
        raise ValueError(f"{source}: checkpoint does not match its config "
                         f"(L={cfg.num_hidden_layers}, D={cfg.hidden_size}, F={cfg.intermediate_size}, "
                         f"V={cfg.vocab_size}):\n  " + "\n  ".join(problems))


def normalize_state_dict(raw: Mapping[str, Tensor], cfg: BertConfig, source: str | Path,
                         allow_missing_pooler: bool = False,
                         initializer_range: float = 0.02) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map a source state dict onto the key table; returns fp32 tensors under our names and a report.

    Args:
        raw: source tensors, any of the supported layouts.
        cfg: the checkpoint's config (shapes are checked against it).
        source: file name used in error messages.
        allow_missing_pooler: if the pooler is absent, initialise it (normal(0, initializer_range),
            zero bias, ``torch.Generator`` seed 0) instead of failing.
    """
    table = expected_shapes(cfg)

    def hits(prefix: str) -> int:
        return sum(_rename_old(k[len(prefix):]) in table for k in raw if k.startswith(prefix))

    prefix = max(SOURCE_PREFIXES, key=hits)   # ties keep the earlier (bare) prefix
    state: dict[str, Tensor] = {}
    renamed, dropped, ignored, problems = [], [], [], []
    for key in sorted(raw):
        if key.startswith(HEAD_PREFIXES):
            dropped.append(key)
            continue
        if not key.startswith(prefix):
            state[key] = raw[key]             # reported as unexpected by check_state_dict
            continue
        name = _rename_old(key[len(prefix):])
        if name != key[len(prefix):]:
            renamed.append(key)
        if name in IGNORED_BUFFERS:
            ignored.append(key)
            continue
        if name in state:
            problems.append(f"duplicate tensor for {name} (old and new name both present: {key})")
        state[name] = raw[key]
    pooler = "loaded"
    if allow_missing_pooler and not any(k in state for k in POOLER_KEYS):
        g = torch.Generator().manual_seed(0)
        D = cfg.hidden_size
        state["pooler.dense.weight"] = torch.randn(D, D, generator=g) * initializer_range  # (D, D)
        state["pooler.dense.bias"] = torch.zeros(D)                                        # (D,)
        pooler = "initialised"
    check_state_dict(state, cfg, source, problems)
    cast_from = sorted({str(t.dtype).replace("torch.", "") for t in state.values()} - {"float32"})
    # clone: .bin tensors may share storage (tied weights), which safetensors refuses to save
    out = {k: state[k].detach().to(torch.float32).contiguous().clone() for k in table}
    report = ConversionReport(source_file=str(source), prefix=prefix, renamed=tuple(renamed),
                              dropped_heads=tuple(dropped), ignored_buffers=tuple(ignored),
                              cast_from=tuple(cast_from), pooler=pooler)
    return out, report


@dataclass(frozen=True)
class HFCheckpoint:
    """An HF folder read into memory: config, normalised fp32 tensors, tokenizer options, report."""

    config: BertConfig
    state: dict[str, Tensor]
    tokenizer_options: dict[str, Any]
    report: ConversionReport
    weights_file: Path
    source_sha256: str


def read_hf_folder(folder: str | Path, allow_missing_pooler: bool = False) -> HFCheckpoint:
    """Read and normalise an (unconverted) HF BERT folder; every problem raises ``ValueError``."""
    folder = Path(folder)
    weights = find_weights_file(folder)
    cfg_path = folder / CONFIG_NAME
    cfg = BertConfig.from_json_file(cfg_path)
    raw_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    init_range = raw_cfg.get("initializer_range", 0.02)
    if isinstance(init_range, bool) or not isinstance(init_range, (int, float)) or not 0 < init_range < 1:
        raise ValueError(f"{cfg_path}: initializer_range must be a number in (0, 1), got {init_range!r}")
    raw = read_tensor_file(weights)
    state, report = normalize_state_dict(raw, cfg, weights, allow_missing_pooler, init_range)
    return HFCheckpoint(config=cfg, state=state, tokenizer_options=read_tokenizer_options(folder),
                        report=report, weights_file=weights, source_sha256=sha256_file(weights))


# ----------------------------------------------------------------------------- writing
#: The files of a converted folder; a DST holding anything else is not overwritten without ``overwrite``.
CONVERTED_FILES = (CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME)


def _vocab_lines(path: Path, cfg: BertConfig) -> int:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no vocab.txt next to the checkpoint")
    data = path.read_bytes()
    try:
        n = len(data.decode("utf-8").splitlines())      # as read_vocab counts (universal newlines, as HF)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    if n > cfg.vocab_size:
        raise ValueError(f"{path}: {n} tokens but config vocab_size is {cfg.vocab_size}")
    return n


def check_destination(dst: Path, overwrite: bool = False) -> None:
    """Refuse to replace ``dst`` unless it is absent, empty or a previous mpee_ref conversion.

    A conversion replaces the whole folder, so a DST holding anything else (another HF checkpoint, a
    training run, a home folder) would be lost; ``overwrite=True`` (CLI ``--overwrite``) allows it.
    """
    if overwrite or not dst.exists():
        return
    if not dst.is_dir():
        raise ValueError(f"{dst}: exists and is not a folder; choose another destination")
    names = sorted(p.name for p in dst.iterdir())
    if not names:
        return
    from .checkpoint import is_converted
    try:
        ours = set(names) <= set(CONVERTED_FILES) and is_converted(dst)
    except ValueError:
        ours = False
    if not ours:
        raise ValueError(f"{dst}: holds files that are not a previous mpee_ref conversion "
                         f"({', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); converting replaces the "
                         f"whole folder: choose another destination or pass --overwrite")


def write_converted(dst: str | Path, ckpt: HFCheckpoint, vocab_src: Path, overwrite: bool = False) -> Path:
    """Write ``ckpt`` to ``dst`` in our format: the whole folder is written under a temporary name and
    renamed into place (:func:`~mpee_ref.io.atomic.atomic_folder`), so a reader never sees new weights
    with an old vocabulary or config. See :func:`check_destination` for what ``dst`` may hold."""
    from safetensors.torch import save_file
    from .atomic import atomic_folder
    dst = Path(dst)
    dst = dst.resolve() if dst.is_symlink() else dst       # replace the folder a link points to, keep the link
    _vocab_lines(vocab_src, ckpt.config)
    check_destination(dst, overwrite)
    config = {**ckpt.config.to_dict(), "architectures": ["BertModel"], **ckpt.tokenizer_options}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "source_file": ckpt.weights_file.name, "source_sha256": ckpt.source_sha256,
                "pooler": ckpt.report.pooler}
    with atomic_folder(dst) as tmp:
        shutil.copyfile(vocab_src, tmp / VOCAB_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(ckpt.state, str(tmp / WEIGHTS_NAME), metadata=metadata)
    return dst


def convert_checkpoint(src: str | Path, dst: str | Path, *, allow_missing_pooler: bool = False,
                       overwrite: bool = False) -> Path:
    """Convert the HF BERT folder ``src`` into mpee_ref's format in ``dst``; returns ``dst``.

    Args:
        src: folder with ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``vocab.txt``
            (and optionally ``tokenizer_config.json``).
        dst: output folder, written whole and renamed into place; an existing ``dst`` is replaced only
            if it is empty or a previous mpee_ref conversion, unless ``overwrite``.
        allow_missing_pooler: initialise an absent pooler (seeded) instead of failing.
        overwrite: replace a ``dst`` that holds anything else.
    Raises:
        ValueError / FileNotFoundError naming the offending file and every problem found.
    """
    return convert_checkpoint_with_report(src, dst, allow_missing_pooler=allow_missing_pooler,
                                          overwrite=overwrite)[0]


def convert_checkpoint_with_report(src: str | Path, dst: str | Path, *,
                                   allow_missing_pooler: bool = False,
                                   overwrite: bool = False) -> tuple[Path, ConversionReport]:
    """:func:`convert_checkpoint` that also returns the :class:`ConversionReport`."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: destination equals the source folder; choose another folder")
    check_destination(dst.resolve() if dst.is_symlink() else dst, overwrite)   # before reading GBs
    ckpt = read_hf_folder(src, allow_missing_pooler=allow_missing_pooler)
    return write_converted(dst, ckpt, src / VOCAB_NAME, overwrite), ckpt.report


# ============================================================================ CLI
def add_parser(subparsers: Any) -> None:
    """``python -m mpee_ref convert SRC DST``."""
    p = subparsers.add_parser(
        "convert", help="convert an HF BERT folder into mpee_ref's format",
        description="Convert an HF BERT folder (config.json, model.safetensors or pytorch_model.bin, "
                    "vocab.txt) into DST: model.safetensors (fp32, our names), config.json, vocab.txt. "
                    "Task heads (classifier.*, cls.*) are dropped.")
    p.add_argument("src", help="HF checkpoint folder")
    p.add_argument("dst", help="output folder")
    p.add_argument("--allow-missing-pooler", action="store_true",
                   help="initialise an absent pooler (seeded N(0, initializer_range)) instead of failing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST even if it holds something other than a previous mpee_ref conversion")


def run(args: Any) -> int:
    dst, report = convert_checkpoint_with_report(args.src, args.dst, allow_missing_pooler=args.allow_missing_pooler,
                                                 overwrite=args.overwrite)
    print(f"wrote {dst}: {report.summary()}")
    return 0
