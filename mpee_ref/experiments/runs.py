r"""Run folders for ``train``: identity, one writer at a time, fresh / resume / overwrite, divergence.

A run folder (``--out``) holds ``run.json`` (the run's identity), ``log.jsonl``, ``checkpoint-<step>/``
(model + ``train_state.pt``), and at the end ``final/`` and ``train_summary.json``. The rules, each
with its test in tests/test_faults.py and its line in docs/RELIABILITY.md:

* **Identity.** :func:`run_identity` is everything that decides the trained weights: every
  :class:`~mpee_ref.experiments.train.TrainArgs` field except the operational ones
  (:data:`OPERATIONAL`), with ``model`` and ``data_dir`` replaced by the sha256 of the files read,
  plus the code version. It is stored in ``run.json``, in every checkpoint's ``train_state.pt`` and in
  the summary. ``--resume`` compares it with the checkpoint's and refuses a difference, naming the
  fields; a different code version is reported, not refused (a doc edit must not strand a long run;
  bit-identity is promised for the same code only).
* **One writer.** :class:`RunLock` holds an exclusive ``flock`` on ``out/.lock`` (which records the
  PID) for the whole run; a second ``train`` into the same folder is refused. The kernel drops the
  lock when the process dies, so a SIGKILLed run never leaves a stale lock.
* **Fresh start.** Without ``--resume``, a folder holding a finished run (``final/``,
  ``train_summary.json``), an unfinished one (``checkpoint-*``) or the ``run.json`` of another run is
  refused unless ``--overwrite``, which first deletes those files (and only those).
* **Resume.** ``--resume`` with no checkpoint is refused (it says whether the run is finished or was
  never checkpointed) instead of silently starting from scratch.
* **Divergence.** :class:`Diverged` (a ``ValueError``: one line, exit 2) is raised when the loss or
  a weight is NaN/Inf after a step, or when the model's outputs on a batch are not finite before a
  checkpoint or in an evaluation; nothing is saved after that point, so the newest checkpoint on disk is
  the last finite one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, Iterable

import torch

from ..data.glue import resolve_split_path
from ..io.atomic import remove_stale_siblings
from ..io.convert import CONFIG_NAME, find_weights_file, read_json, sha256_file

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
#: TrainArgs fields that do not change the trained weights (may differ on --resume).
OPERATIONAL = ("out", "resume", "overwrite", "progress", "eval_every", "eval_batch_size", "save_every",
               "log_every", "stop_after_steps", "max_eval_examples", "deterministic", "device")
#: Files and folders of a run that --overwrite deletes.
RUN_ENTRIES = ("final", "train_summary.json", "log.jsonl", RUN_FILE)


class Diverged(ValueError):
    """Training produced NaN/Inf; the newest checkpoint on disk is the last finite one."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during training; a checkpoint was saved (exit status 128 + signal)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# ============================================================================ identity
def code_version() -> str:
    """``<package version>+<sha256 of the package's .py sources, 12 hex>``."""
    import mpee_ref
    root = Path(mpee_ref.__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return f"{mpee_ref.__version__}+{h.hexdigest()[:12]}"


def model_fingerprint(folder: str | Path) -> dict[str, str]:
    """The model folder a run starts from: its path and the sha256 of its weights and config."""
    folder = Path(folder)
    weights = find_weights_file(folder)
    return {"path": str(folder.resolve()), "weights_sha256": sha256_file(weights),
            "config_sha256": sha256_file(folder / CONFIG_NAME)}


def data_fingerprint(task: str, data_dir: str | Path) -> dict[str, str]:
    """The train and dev files a run reads: path and sha256 of each."""
    out: dict[str, str] = {"path": str(Path(data_dir).resolve())}
    for split in ("train", "dev"):
        out[f"{split}_sha256"] = sha256_file(resolve_split_path(task, data_dir, split))
    return out


def jsonable_args(args: Any) -> dict[str, Any]:
    """A TrainArgs as JSON types (tuples become lists)."""
    return json.loads(json.dumps(asdict(args)))


def argument_defaults(args: Any) -> dict[str, Any]:
    """The default values (as JSON) of the fields of the dataclass ``args`` that have one. A field added
    to TrainArgs after a checkpoint was written is missing from its identity: that run used the default."""
    out = {}
    for f in fields(args):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return json.loads(json.dumps(out))


def run_identity(args: Any, model_info: dict[str, str] | None) -> dict[str, Any]:
    """Everything that decides the trained weights (see the module doc). ``model_info`` None: not known
    (``--resume`` without ``--model``); the model is then taken from the checkpoint and not compared."""
    ident = {k: v for k, v in jsonable_args(args).items() if k not in OPERATIONAL}
    ident["model"] = model_info
    if getattr(args, "distill_from", None):                  # the --distill-from teacher (L11), by content
        ident["distill_from"] = model_fingerprint(args.distill_from)
    ident["data_dir"] = data_fingerprint(args.task, args.data_dir)
    ident["code_version"] = code_version()
    return ident


def identity_diff(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ (code_version excluded; ``model`` only if known now; paths of model
    and data are informative: their contents, by sha256, are compared)."""
    diff: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if key == "code_version" or (key == "model" and b is None):
            continue
        if key in ("model", "data_dir", "distill_from") and isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if k != "path"}
            b = {k: v for k, v in b.items() if k != "path"}
        if a != b:
            diff[key] = (saved.get(key), now.get(key))
    return diff


def format_diff(diff: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r:.80} then, {b!r:.80} now" for k, (a, b) in diff.items())


# ============================================================================ lock
class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<out>/.lock`` (the file records the holder's PID)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"{self.path.parent}: another train (PID {holder}) is writing this run folder; "
                             f"wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:         # the file stays: deleting it would let two writers lock two inodes
            os.close(self.fd)
            self.fd = None


# ============================================================================ fresh / resume
def prepare_fresh(out: Path, identity: dict[str, Any], overwrite: bool) -> list[str]:
    """Check that a new run may start in ``out`` (see the module doc); with ``overwrite`` delete the old
    run's files. Returns what was deleted."""
    from .checkpointing import checkpoints
    ckpts = checkpoints(out)
    finished = [n for n in ("final", "train_summary.json") if (out / n).exists()]
    other = None
    if (out / RUN_FILE).is_file():
        saved = read_json(out / RUN_FILE).get("identity", {})
        other = format_diff(identity_diff(saved, identity)) or None
    if not overwrite:
        if finished:
            raise ValueError(f"{out}: holds a finished run ({', '.join(finished)}); pass --overwrite to replace "
                             f"it, or choose another --out")
        if ckpts:
            raise ValueError(f"{out}: holds an unfinished run ({ckpts[-1][1].name}); continue it with --resume, "
                             f"or pass --overwrite to start over")
        if other:
            raise ValueError(f"{out / RUN_FILE}: this folder belongs to another run ({other}); pass --overwrite "
                             f"to replace it, or choose another --out")
    removed = []
    for _, p in ckpts:
        shutil.rmtree(p)
        removed.append(p.name)
    for name in RUN_ENTRIES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed + clean_temporaries(out)


def clean_temporaries(out: Path) -> list[str]:
    """Remove the temporary dot-folders of ``final/`` and ``checkpoint-*/`` (``.final.tmp-*``,
    ``.checkpoint-7.tmp-*``...) that a killed writer left behind; called while holding the run lock, so no
    live writer owns them."""
    return [p.name for p in remove_stale_siblings(out, "final", "checkpoint-*")]


def resume_point(out: Path) -> Path:
    """The newest checkpoint to resume from; ``ValueError`` saying why there is none."""
    if (out / "final").exists() or (out / "train_summary.json").exists():
        raise ValueError(f"--resume: {out} holds a finished run (final/); nothing to resume (pass --overwrite "
                         f"without --resume to train it again)")
    from .checkpointing import checkpoints
    ckpts = checkpoints(out)
    if ckpts:
        return ckpts[-1][1]
    raise ValueError(f"--resume: no checkpoint under {out}; nothing to resume (start the run without --resume)")


def check_resume(saved_state: dict[str, Any], ckpt: Path, identity: dict[str, Any], args: Any) -> str | None:
    """Refuse a resume whose identity differs from the checkpoint's; returns a note (or None).

    Checkpoints written before identities existed hold only ``args``: those are compared field by field.
    """
    if "identity" in saved_state:
        saved = json.loads(saved_state["identity"])
        saved = {**{k: v for k, v in argument_defaults(args).items() if k in identity}, **saved}
        diff = identity_diff(saved, identity)
        note = None
        if saved.get("code_version") != identity["code_version"]:
            note = (f"note: {ckpt} was written by mpee_ref {saved.get('code_version')}, this is "
                    f"{identity['code_version']}; resuming (bit-identity holds for the same code only)")
    else:
        old = json.loads(saved_state["args"])
        now = jsonable_args(args)
        keys = [k for k in now if k not in OPERATIONAL and k in old and not (k == "model" and now[k] is None)]
        diff = {k: (old[k], now[k]) for k in keys if old[k] != now[k]}
        note = f"note: {ckpt} predates run identities; compared its saved arguments only"
    if diff:
        raise ValueError(f"--resume: {ckpt} belongs to a different run; differing fields (checkpoint vs now): "
                         f"{format_diff(diff)}")
    return note


# ============================================================================ finiteness
def weights_finite(params: Iterable[torch.Tensor]) -> bool:
    """Whether every parameter is free of NaN/Inf (one device sync)."""
    flags = [torch.isfinite(p.detach()).all() for p in params]
    return bool(torch.stack(flags).all()) if flags else True


def outputs_finite(model: Any, batch: dict[str, torch.Tensor]) -> str | None:
    """Run the model on ``batch`` (eval mode, no grad) and return a reason if its logits are not finite.

    Weights can be finite yet so large that every output is NaN (``--lr 1e30``): this probe, run before
    each checkpoint, keeps such a model off the disk. It draws no random numbers (eval mode: no dropout),
    so resumed runs stay bit-identical.
    """
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if not bool(torch.isfinite(out.logits).all()):
            return "the exit classifiers' logits hold NaN/Inf"
    except ValueError as e:              # e.g. "scores contain NaN" from the token ranking (Eq. 7)
        if "NaN" not in str(e):
            raise
        return str(e)
    finally:
        model.train(was)
    return None


def samples_finite(samples: Iterable[Any]) -> bool:
    return all(math.isfinite(p) for s in samples for p in s.probabilities)


def finite_json(x: Any) -> Any:
    """``x`` with NaN/Inf floats replaced by None, so the JSON written is standard (no ``Infinity``)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    return x


def check_numbers(args: Any) -> None:
    """Refuse NaN/Inf and out-of-range numeric training flags (``--lr inf``, ``--eval-every -1``...)."""
    for f in fields(args):                  # every float flag, including ones added later
        v = getattr(args, f.name)
        if str(f.type).startswith("float") and v is not None and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, got {v!r}")
    for name in ("weight_decay", "max_grad_norm"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)!r}")
    for name in ("eval_every", "save_every"):
        v = getattr(args, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be an int >= 0 (0: once per epoch), got {v!r}")
    if isinstance(args.seed, bool) or not isinstance(args.seed, int) or args.seed < 0:
        raise ValueError(f"--seed must be an int >= 0, got {args.seed!r}")

