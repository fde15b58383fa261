r"""``python -m mpee_ref train``: fine-tune MPEE (Eq. 14) or the plain baseline on a GLUE task.

Defaults follow §4.4 where it says something, and are flags everywhere:

* **Optimiser**: "Adam, learning rate 2e-5" -> ``torch.optim.AdamW`` with ``weight_decay=0`` (that is
  Adam), betas (0.9, 0.999), eps 1e-8.
* **Schedule** (paper: nothing; our choice, flag ``--warmup-ratio``): linear warm-up over the first 6% of
  the steps, then linear decay to 0 (RoBERTa's GLUE recipe; the authors' code uses HF's linear schedule
  with no warm-up: ``--warmup-ratio 0``).
* **Gradient clipping** (paper: nothing): global norm 1.0 as HF ``run_glue`` (which the authors' code
  inherits); ``--max-grad-norm 0`` turns it off.
* Batch 32 per step (paper: 64/128 on a GPU; ``--batch-size``), 3 epochs, max_seq_length 128, seed 42
  (authors' defaults). β = 0.5, λ = 0.9, R_ee, F come from :class:`~mpee_ref.mpee.MPEEConfig`.
* ``--mode plain`` is the baseline: the same model with token exits, sample exits, distillation and
  the classifier memory off (:data:`~mpee_ref.experiments.options.PLAIN_SWITCHES`), trained with CE on
  the last layer's head only; heads 1..L-1 and the teacher get no gradient and stay as initialised.

Reproducibility: ``torch.manual_seed(seed + rank)`` before the first step (dropout; model initialisation
is seeded separately by ``load_mpee(seed=seed)``, identical on every rank),
``torch.use_deterministic_algorithms(True)`` while training, and the seeded sampler of
:mod:`~mpee_ref.experiments.batching`. A checkpoint (``out/checkpoint-<step>/``: the model via
``save_mpee`` plus ``train_state.pt`` with optimiser, scheduler, every rank's RNG state and the step,
read back with ``weights_only=True``) is written to a temporary folder and renamed into place, so a
crash leaves the previous checkpoint whole. ``--resume`` continues from the newest one to the same
parameters an uninterrupted run reaches. Ctrl-C (or SIGTERM) finishes the current step, saves a
checkpoint, exits 130 (143). Run identity, the folder lock, ``--overwrite`` and divergence checks:
:mod:`~mpee_ref.experiments.runs` (docs/RELIABILITY.md lists every fault case and its test).

DDP: under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` set) the model is wrapped in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA; ``find_unused_parameters=True`` because the
teacher and, in plain mode, heads 1..L-1 get no gradient); ``--batch-size`` is per process; only rank 0
writes files; dev predictions are gathered from all ranks before the metric is computed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data import get_task, read_glue
from ..io.atomic import atomic_folder
from ..mpee import MPEEModel, load_mpee, save_mpee
from ..mpee.checkpoint import write_mpee_files
from .batching import EpochBatchSampler, collate, encode_examples
from .evaluate import run_inference, summarize
from .options import MODES, PRESETS, build_config, check_cli_numbers, parse_overrides
from .runs import (RUN_FILE, Diverged, Interrupted, RunLock, check_numbers, check_resume, clean_temporaries,
                   finite_json, load_train_state_file, model_fingerprint, outputs_finite, prepare_fresh,
                   resume_point, run_identity, samples_finite, weights_finite)

STATE_FILE = "train_state.pt"
STATE_FORMAT = "mpee_ref-train-state-1"


@dataclass(frozen=True)
class TrainArgs:
    """Everything ``train`` needs (the CLI flags, one to one)."""

    task: str
    data_dir: str
    out: str
    model: str | None = None               # converted encoder (or MPEE) folder; None only with resume
    mode: str = "mpee"                     # "mpee" (Eq. 14) or "plain" (baseline)
    preset: str = "paper"
    ablate: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    lr: float = 2e-5
    head_lr_mult: float = 1.0              # exit heads and teacher train at lr * head_lr_mult (docs L10)
    freeze_backbone: bool = False          # train only the exit heads and teacher (two-stage, docs L10)
    batch_size: int = 32                   # per process
    epochs: int = 3
    max_steps: int | None = None           # total optimiser steps (overrides epochs for the schedule)
    max_seq_length: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    eval_every: int = 0                    # dev evaluation every N steps (0: at the end of each epoch only)
    eval_batch_size: int = 32
    save_every: int = 0                    # checkpoint every N steps (0: at the end of each epoch only)
    log_every: int = 10
    resume: bool = False
    stop_after_steps: int | None = None    # save a checkpoint and stop after this many steps (resumable)
    progress: bool = True
    deterministic: bool = True             # torch.use_deterministic_algorithms(True) while training

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        for name in ("batch_size", "epochs", "max_seq_length", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_steps", "max_train_examples", "max_eval_examples", "stop_after_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be None or >= 1, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.head_lr_mult > 0:
            raise ValueError(f"head_lr_mult must be > 0, got {self.head_lr_mult!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.model is None and not self.resume:
            raise ValueError("model: a model folder is required unless resuming")
        check_numbers(self)                  # finite lr / grad norm, eval_every >= 0... (runs.py)


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """LR multiplier: ``step/warmup`` while warming up, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)   # never 0: the first step already moves the weights
    return max(0.0, (total - step) / max(1, total - warmup))


# ============================================================================ distributed helpers
def _dist_setup() -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, created): initialise the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world <= 1:
        return 0, 1, device, False
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        created = True
    return dist.get_rank(), dist.get_world_size(), device, created


def _all_mean(x: float, world: int, device: torch.device) -> float:
    if world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def _any(flag: bool, world: int, device: torch.device) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _gather_rng(world: int) -> list[torch.Tensor]:
    state = torch.get_rng_state()
    if world == 1:
        return [state]
    out = [torch.empty_like(state) for _ in range(world)]
    dist.all_gather_object(out, state)
    return out


# ============================================================================ checkpoints
def latest_checkpoint(out: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``out`` (temporary folders are ignored)."""
    found = []
    for p in Path(out).glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if p.is_dir() and step.isdigit() and (p / STATE_FILE).is_file():
            found.append((int(step), p))
    return max(found)[1] if found else None


def save_checkpoint(out: Path, model: MPEEModel, state: dict[str, Any], keep_last: int = 1,
                    protect: Path | None = None) -> Path:
    """Write ``out/checkpoint-<step>/`` whole under a temporary name and rename it into place (an existing
    folder of that name is replaced, never kept); prune older ones, except ``protect`` (the folder a
    resumed model was loaded from: its tokenizer reads ``vocab.txt`` there). NaN/Inf weights are refused."""
    final = out / f"checkpoint-{state['step']}"
    if not weights_finite(model.parameters()):
        raise Diverged(f"{final}: refusing to save a checkpoint whose weights hold NaN/Inf")
    try:
        with atomic_folder(final) as tmp:
            write_mpee_files(model, tmp, label=final)
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
    """``folder/train_state.pt`` (``weights_only=True``); a damaged file is one ``ValueError`` naming it."""
    return load_train_state_file(folder / STATE_FILE, STATE_FORMAT)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ============================================================================ progress
class _Progress:
    """A ``\\r``-updated line on stderr (a full line every ``log_every`` steps when not a terminal)."""

    def __init__(self, total: int, enabled: bool, log_every: int):
        self.total, self.enabled, self.log_every = total, enabled, log_every
        self.tty = sys.stderr.isatty()
        self.t0, self.seen0 = time.perf_counter(), None

    def update(self, step: int, loss: float, seen: int) -> None:
        if not self.enabled:
            return
        if self.seen0 is None:
            self.seen0, self.t0 = seen, time.perf_counter()
            return
        dt = time.perf_counter() - self.t0
        rate = (seen - self.seen0) / dt if dt > 0 else 0.0
        steps_per_s = rate / max(1, seen / max(1, step))
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        line = f"step {step}/{self.total} | loss {loss:.4f} | {rate:.1f} ex/s | ETA {eta_s}"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif step % self.log_every == 0 or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)


# ============================================================================ training
def _prepare_model(args: TrainArgs, num_labels: int, identity: dict[str, Any]
                   ) -> tuple[MPEEModel, dict[str, Any] | None, Path | None]:
    if args.resume:
        ckpt = resume_point(Path(args.out))
        state = load_train_state(ckpt)
        note = check_resume(state, ckpt, identity, args)
        if note and int(os.environ.get("RANK", "0")) == 0:
            print(note, file=sys.stderr)
        return load_mpee(ckpt), state, ckpt
    folder = Path(args.model)
    from ..io import read_config
    L = read_config(folder).num_hidden_layers
    cfg = build_config(num_labels, L, preset=args.preset, ablate=args.ablate, overrides=args.overrides,
                       mode=args.mode)
    return load_mpee(folder, seed=args.seed, **cfg.to_dict()), None, None


def param_groups(model: MPEEModel, lr: float, head_lr_mult: float,
                 freeze_backbone: bool = False) -> list[dict[str, Any]]:
    """Optimiser groups: the backbone (``bert.*``) at ``lr``; the exit heads and the teacher of Eq. 12
    at ``lr * head_lr_mult`` (docs L10). The schedule scales both alike. ``freeze_backbone`` leaves the
    backbone out (and sets its ``requires_grad`` to False): the second stage of two-stage training."""
    heads = [p for n, p in model.named_parameters() if not n.startswith("bert.")]
    backbone = [p for n, p in model.named_parameters() if n.startswith("bert.")]
    if freeze_backbone:
        for p in backbone:
            p.requires_grad_(False)
        return [{"params": heads, "lr": lr * head_lr_mult}]
    return [{"params": backbone, "lr": lr}, {"params": heads, "lr": lr * head_lr_mult}]


def _loss(out: Any, labels: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "plain":
        return F.cross_entropy(out.logits[-1], labels)          # the last layer's head only
    return out.loss.total                                        # Eq. 14


def train_model(args: TrainArgs, command: str | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune; returns the summary also written to ``out/train_summary.json`` (rank 0).

    ``overwrite``: start afresh in an ``out`` that holds another or a finished run (its files are
    deleted first); without it such a folder is refused (see :mod:`~mpee_ref.experiments.runs`).
    """
    spec = get_task(args.task)
    if spec.task_type != "classification":
        raise ValueError(f"task: {spec.name} is a regression task; MPEE's entropy exits need classes")
    if args.model is not None and not Path(args.model).is_dir():
        raise ValueError(f"--model: {args.model} is not a folder")
    if overwrite and args.resume:
        raise ValueError("--overwrite starts a run afresh, --resume continues one: pass only one of them")
    rank, world, device, created = _dist_setup()
    out = Path(args.out)
    prev_det = torch.are_deterministic_algorithms_enabled()
    if args.deterministic:       # (its first call imports torch._inductor: seconds, once per process)
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    interrupted = {"n": 0, "signum": signal.SIGINT}

    def on_sigint(signum: int, frame: Any) -> None:             # SIGINT and SIGTERM alike
        interrupted["n"] += 1
        interrupted["signum"] = signum
        if interrupted["n"] > 1:
            raise Interrupted(signum)

    old_handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old_handlers[sig] = signal.signal(sig, on_sigint)
        except ValueError:                                       # not the main thread
            pass
    log = None
    lock = None
    try:
        identity = run_identity(args, model_fingerprint(args.model) if args.model is not None else None)
        refusal: Exception | None = None
        if rank == 0:                                            # one writer: lock and folder checks
            try:
                lock = RunLock(out).acquire()
                if not args.resume:
                    prepare_fresh(out, identity, overwrite)
                clean_temporaries(out)
            except (ValueError, OSError) as e:
                refusal = e
        if _any(refusal is not None, world, device):             # every rank stops, none waits forever
            raise refusal or ValueError(f"{out}: refused by rank 0 (see its error)")
        model, state, ckpt = _prepare_model(args, spec.num_labels, identity)
        if state is not None and "identity" in state:
            identity["model"] = json.loads(state["identity"])["model"]      # the run's start model
        if model.mpee_config.num_labels != spec.num_labels:
            raise ValueError(f"model: has {model.mpee_config.num_labels} classes, task {spec.name} has "
                             f"{spec.num_labels}")
        train_ex = read_glue(spec.name, args.data_dir, "train")[:args.max_train_examples]
        dev_ex = read_glue(spec.name, args.data_dir, "dev")[:args.max_eval_examples]
        train_data = encode_examples(model.tokenizer, train_ex, args.max_seq_length)
        dev_data = encode_examples(model.tokenizer, dev_ex, args.max_seq_length)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if state is None:
                _atomic_text(out / RUN_FILE, json.dumps({"identity": identity, "command": command}, indent=2) + "\n")
        model.to(device).train()
        probe_batch = {k: v.to(device) for k, v in collate(train_data, list(range(min(8, len(train_data)))),
                                                           model.bert_config.pad_token_id).items()}
        sampler = EpochBatchSampler(len(train_data), args.batch_size, args.seed, rank, world)
        total = args.max_steps or args.epochs * len(sampler)
        warmup = int(round(args.warmup_ratio * total))
        optimizer = torch.optim.AdamW(param_groups(model, args.lr, args.head_lr_mult, args.freeze_backbone),
                                      betas=(0.9, 0.999),
                                      eps=1e-8, weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, total, warmup))
        step, elapsed0 = 0, 0.0
        if state is not None:
            if state["world_size"] != world:
                raise ValueError(f"--resume: checkpoint was written by {state['world_size']} processes, "
                                 f"now {world}")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng_cpu"][rank])
            step, elapsed0 = int(state["step"]), float(state["elapsed_s"])
        else:
            torch.manual_seed(args.seed + rank)
        net: Any = model
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        log = (out / "log.jsonl").open("a", encoding="utf-8") if rank == 0 else None

        def write_log(record: dict[str, Any]) -> None:
            if log is not None:
                log.write(json.dumps(finite_json(record), allow_nan=False) + "\n")
                log.flush()

        def evaluate(tag: str, **overrides: Any) -> dict[str, Any]:
            idx = list(range(rank, len(dev_data), world))
            samples = run_inference(model, dev_data, args.eval_batch_size, indices=idx, **overrides)
            if world > 1:
                parts: list[Any] = [None] * world
                dist.all_gather_object(parts, list(zip(idx, samples)))
                samples = [s for _, s in sorted((p for part in parts for p in part), key=lambda x: x[0])]
            if not samples_finite(samples):
                raise Diverged(diverged(f"the model's {tag} dev outputs hold NaN/Inf"))
            res = summarize(samples, dev_data.labels, spec.name, model, args.max_seq_length, "ours", **overrides)
            res.pop("config")
            write_log({"event": "eval", "tag": tag, "step": step, **res})
            return res

        def diverged(reason: str) -> str:
            last = latest_checkpoint(out) if rank == 0 else None
            return (f"{out}: training diverged at step {step} ({reason}); nothing was saved after it; "
                    + (f"the last finite checkpoint is {last}" if last else "no checkpoint was written")
                    + "; lower --lr or check the data")

        saved_at = {"step": -1, "path": None}

        def checkpoint() -> Path | None:
            if saved_at["step"] == step:                         # already saved at this step in this run
                return saved_at["path"]
            reason = outputs_finite(model, probe_batch)          # draws no random numbers
            if _any(reason is not None, world, device):
                raise Diverged(diverged(reason or "another rank's outputs hold NaN/Inf"))
            rng = _gather_rng(world)
            path = None
            if rank == 0:
                path = save_checkpoint(out, model, {
                    "format": STATE_FORMAT, "step": step, "world_size": world,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng_cpu": rng, "elapsed_s": elapsed0 + time.perf_counter() - t_start,
                    "args": json.dumps(_jsonable(args)), "identity": json.dumps(identity)}, protect=ckpt)
                write_log({"event": "checkpoint", "step": step, "path": str(path)})
            if world > 1:
                dist.barrier()
            saved_at.update(step=step, path=path)
            return path

        progress = _Progress(total, args.progress and rank == 0, args.log_every)
        t_start = time.perf_counter()
        seen = step * args.batch_size * world
        if rank == 0:
            write_log({"event": "start", "step": step, "total_steps": total, "world_size": world,
                       "resumed_from": str(ckpt) if ckpt else None, "command": command})
        stopped = None
        while step < total and stopped is None:
            epoch, first = divmod(step, len(sampler))
            for batch_idx in sampler.batches(epoch, first):
                batch = {k: v.to(device) for k, v in collate(train_data, batch_idx,
                                                             model.bert_config.pad_token_id).items()}
                try:
                    out_ = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                               labels=batch["labels"] if args.mode == "mpee" else None)
                except ValueError as e:                           # "scores contain NaN" (Eq. 7)...
                    if "NaN" not in str(e):
                        raise
                    raise Diverged(diverged(str(e))) from None
                loss = _loss(out_, batch["labels"], args.mode)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                seen += len(batch_idx) * world
                loss_v = _all_mean(float(loss.detach()), world, device)
                if not math.isfinite(loss_v):
                    raise Diverged(diverged(f"loss {loss_v}"))
                if not weights_finite(model.parameters()):
                    raise Diverged(diverged("weights hold NaN/Inf after the optimiser step"))
                progress.update(step, loss_v, seen)
                if step % args.log_every == 0 or step == 1:
                    write_log({"event": "train", "step": step, "epoch": epoch, "loss": loss_v,
                               "lr": scheduler.get_last_lr()[0]})
                if args.eval_every and step % args.eval_every == 0 and step < total:
                    evaluate("periodic")
                if args.save_every and step % args.save_every == 0 and step < total:
                    checkpoint()
                if _any(interrupted["n"] > 0, world, device):
                    stopped = "interrupted"
                elif args.stop_after_steps is not None and step >= args.stop_after_steps and step < total:
                    stopped = "stop_after_steps"
                if stopped or step >= total:
                    break
            if stopped is None and step < total and step % len(sampler) == 0:   # end of an epoch
                if not args.eval_every:
                    evaluate("epoch")
                checkpoint()
        progress.close()
        if stopped is not None:
            path = checkpoint()
            if rank == 0:
                print(f"{stopped}: checkpoint at step {step} in {path}; continue with --resume", file=sys.stderr)
            if stopped == "interrupted":
                raise Interrupted(interrupted["signum"])
            return {"stopped": stopped, "step": step, "checkpoint": str(path) if path else None}
        train_time = elapsed0 + time.perf_counter() - t_start
        final = evaluate("final")
        extra = evaluate("final_no_exit", layer_exit=False) if args.mode == "mpee" else None
        if _any(interrupted["n"] > 0, world, device):           # Ctrl-C during the final evaluation
            path = checkpoint()
            if rank == 0:
                print(f"interrupted: checkpoint at step {step} in {path}; --resume re-runs the final evaluation",
                      file=sys.stderr)
            raise Interrupted(interrupted["signum"])
        summary = {"command": command, "args": _jsonable(args), "seed": args.seed, "mode": args.mode,
                   "world_size": world, "steps": step, "examples_seen": seen,
                   "training_time_s": train_time,
                   "machine": {"platform": platform.platform(), "python": platform.python_version(),
                               "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                               "cpu_count": os.cpu_count(), "device": str(device)},
                   "mpee_config": model.mpee_config.to_dict(), "final_dev": final, "final_dev_no_exit": extra,
                   "run": identity}
        summary = finite_json(summary)
        if rank == 0:
            text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
            task = {"task": spec.name, "label_names": list(spec.label_names)}
            save_mpee(model, out / "final", torch.float32,
                      extra_files={"train_summary.json": text, "task.json": json.dumps(task, indent=2) + "\n"})
            _atomic_text(out / "train_summary.json", text)
            write_log({"event": "done", "step": step, "training_time_s": train_time})
            if ckpt is not None and latest_checkpoint(out) != ckpt:
                shutil.rmtree(ckpt, ignore_errors=True)          # the resumed-from checkpoint, kept until now
        if world > 1:
            dist.barrier()
        return summary
    finally:
        if args.deterministic:
            torch.use_deterministic_algorithms(prev_det)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if log is not None:
            log.close()
        if lock is not None:
            lock.release()
        if created:
            dist.destroy_process_group()


def _jsonable(args: TrainArgs) -> dict[str, Any]:
    d = asdict(args)
    d["ablate"] = list(d["ablate"])
    d["overrides"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["overrides"].items()}
    return d


# ============================================================================ CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="fine-tune MPEE (Eq. 14) or the plain baseline on a GLUE task",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="converted encoder folder (or an MPEE folder)")
    p.add_argument("--task", required=True)
    p.add_argument("--data-dir", required=True, help="GLUE root or a folder with train.tsv/dev.tsv")
    p.add_argument("--out", required=True, help="output folder (checkpoints, log.jsonl, final/)")
    p.add_argument("--mode", choices=MODES, default="mpee", help="mpee (Eq. 14) or plain (baseline)")
    p.add_argument("--preset", choices=PRESETS, default="paper")
    p.add_argument("--ablate", action="append", default=[], metavar="COMPONENT",
                   help="Table 2 ablation (repeatable): att-memory, ee-fusion, ee-memory, wsd, layer-ee, token-ee")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_",
                   help="any MPEEConfig field (repeatable)")
    d = TrainArgs(task="", data_dir="", out="", model="")
    for flag, typ in (("lr", float), ("head-lr-mult", float), ("batch-size", int), ("epochs", int), ("max-steps", int),
                      ("max-seq-length", int), ("warmup-ratio", float), ("weight-decay", float),
                      ("max-grad-norm", float), ("seed", int), ("max-train-examples", int),
                      ("max-eval-examples", int), ("eval-every", int), ("eval-batch-size", int),
                      ("save-every", int), ("log-every", int), ("stop-after-steps", int)):
        p.add_argument(f"--{flag}", type=typ, default=getattr(d, flag.replace("-", "_")))
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the exit heads and the teacher (the second stage of two-stage training: "
                        "--model is then a fine-tuned model, e.g. a plain run's final/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds another or a finished run (deletes its files)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-deterministic", action="store_true",
                   help="do not call torch.use_deterministic_algorithms(True) (CPU kernels used here are "
                        "deterministic anyway; on CUDA this allows faster non-deterministic kernels)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    return p


def run(args: argparse.Namespace) -> int:
    """The ``train`` command; ValueError/OSError reach ``__main__`` (one line, exit 2)."""
    try:
        check_cli_numbers(args.threads)
        get_task(args.task)
        targs = TrainArgs(
            task=args.task, data_dir=args.data_dir, out=args.out, model=args.model, mode=args.mode,
            preset=args.preset, ablate=tuple(args.ablate), overrides=parse_overrides(args.set_), lr=args.lr,
            head_lr_mult=args.head_lr_mult, freeze_backbone=args.freeze_backbone,
            batch_size=args.batch_size, epochs=args.epochs, max_steps=args.max_steps,
            max_seq_length=args.max_seq_length, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
            max_grad_norm=args.max_grad_norm, seed=args.seed, max_train_examples=args.max_train_examples,
            max_eval_examples=args.max_eval_examples, eval_every=args.eval_every,
            eval_batch_size=args.eval_batch_size, save_every=args.save_every, log_every=args.log_every,
            resume=args.resume, stop_after_steps=args.stop_after_steps, progress=not args.no_progress,
            deterministic=not args.no_deterministic)
        summary = train_model(targs, command=shlex.join([sys.executable, "-m", "mpee_ref", *sys.argv[1:]]),
                              overwrite=args.overwrite)
    except KeyboardInterrupt as e:
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    if "final_dev" in summary and int(os.environ.get("RANK", "0")) == 0:
        m = ", ".join(f"{k} {v:.4f}" for k, v in summary["final_dev"]["metrics"].items())
        print(f"done: {summary['steps']} steps in {summary['training_time_s']:.0f} s; dev {m}, "
              f"rho {summary['final_dev']['rho']:.2f}x; model in {Path(args.out) / 'final'}", file=sys.stderr)
    return 0
