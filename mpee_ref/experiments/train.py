r"""``python -m mpee_ref train``: fine-tune MPEE (Eq. 14) or the plain baseline on a GLUE task.

Defaults follow §4.4 where it says something, and are flags everywhere (each flag is one field of
:class:`TrainArgs`, with its help text there: :mod:`~mpee_ref.experiments.flags`):

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
  ``--mode plain --set token_exit=true`` keeps token pruning on in that forward pass (L14 in
  docs/interpretation/layer_exit_and_losses.md).
* ``--device`` (default ``cpu``; ``cuda``, ``cuda:1``, ``mps``): where the model, every batch and every
  tensor of a step live. An unavailable device is a one-line error.

How the code reads: :func:`train_model` is set-up (:func:`set_up`: the run folder, the model from
:func:`build_model`, data, optimiser, a resumed state), the epoch loop (:func:`run_epochs`, one
:func:`train_step` at a time, the loss from :func:`loss_of`) and the finish (:func:`finish`: final dev
evaluation, ``final/``, ``train_summary.json``). The parts fixed at set-up are one :class:`TrainRun`, what
changes per step one :class:`TrainState`; both are passed explicitly. Checkpoint files:
:mod:`~mpee_ref.experiments.checkpointing`; several processes: :mod:`~mpee_ref.experiments.distributed`;
progress, ``log.jsonl`` and Ctrl-C: :mod:`~mpee_ref.experiments.monitor`.

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
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA, where ``--device cuda`` means
``cuda:<LOCAL_RANK>``; ``find_unused_parameters=True`` because the teacher and, in plain mode, heads
1..L-1 get no gradient); ``--batch-size`` is per process; only rank 0 writes files; dev predictions are
gathered from all ranks before the metric is computed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import TaskSpec, get_task, read_glue
from ..io import read_config
from ..io.atomic import atomic_text
from ..baselines import BaselineTrainOutput
from ..baselines.registry import METHODS, get_method
from ..losses import eq13_kd_loss
from ..mpee import MPEEModel, load_mpee
from . import distributed
from .batching import EncodedDataset, EpochBatchSampler, collate, encode_examples
from .checkpointing import STATE_FORMAT, latest_checkpoint, load_train_state, save_checkpoint
from .distributed import DistContext
from .evaluate import run_inference, summarize
from .families import Model, build_baseline, config_dict, load_trained, method_name, num_labels, save_final, \
    summarize_baseline
from .flags import add_flags, arg, command_parser, from_flags, resolve_device
from .loading import require_classes
from .monitor import InterruptFlag, Progress, RunLog
from .options import MODES, PRESETS, build_config, check_cli_numbers, parse_overrides, parse_pairs, typed_fields
from .runs import (RUN_FILE, Diverged, Interrupted, RunLock, check_numbers, check_resume, clean_temporaries,
                   finite_json, jsonable_args, model_fingerprint, outputs_finite, prepare_fresh, resume_point,
                   run_identity, samples_finite, weights_finite)


METHOD_CHOICES = ("mpee", *sorted(METHODS))


@dataclass(frozen=True)
class TrainArgs:
    """Everything ``train`` needs; each field is one flag of ``python -m mpee_ref train``."""

    task: str = arg(help="GLUE task, e.g. sst-2")
    data_dir: str = arg(help="GLUE root or a folder with train.tsv/dev.tsv")
    out: str = arg(help="output folder (checkpoints, log.jsonl, final/)")
    model: str | None = arg(None, "converted encoder folder (or an MPEE folder); not needed with --resume")
    mode: str = arg("mpee", "mpee (Eq. 14) or plain (the baseline)", choices=MODES)
    method: str = arg("mpee", "mpee, or a baseline on the same backbone, data and FLOPs counter (docs/BASELINES.md)",
                      choices=METHOD_CHOICES)
    stage: str | None = arg(None, "a two-stage baseline's stage: deebert backbone|ramps, fastbert backbone|distill "
                                  "(default: the first; a later stage starts from the earlier stage's final/ and "
                                  "needs --freeze-backbone)")
    options: dict[str, Any] = arg(dict, "a field of the baseline's config (repeatable), e.g. head_norm=true, "
                                        "retention=0.9,0.8,0.7,0.6,0.5,0.4", flag="--option", metavar="KEY=VALUE",
                                  parse=partial(parse_pairs, flag="--option"))
    preset: str = arg("paper", "MPEEConfig preset the run starts from", choices=PRESETS)
    ablate: tuple[str, ...] = arg((), "Table 2 ablation (repeatable): att-memory, ee-fusion, ee-memory, wsd, "
                                      "layer-ee, token-ee", metavar="COMPONENT")
    overrides: dict[str, Any] = arg(dict, "any MPEEConfig field (repeatable)", flag="--set", metavar="KEY=VALUE",
                                    parse=parse_overrides)
    lr: float = arg(2e-5, "peak learning rate (paper: 2e-5)")
    head_lr_mult: float = arg(1.0, "exit heads and teacher train at lr * this (docs L10)")
    freeze_backbone: bool = arg(False, "train only the exit heads and the teacher (the second stage of two-stage "
                                       "training: --model is then a fine-tuned model, e.g. a plain run's final/)")
    freeze_layers: int = arg(0, "freeze the embeddings and layers 1..K with their exit heads (weights and the "
                                "heads' running statistics); the layers above K, their heads and the teacher "
                                "train: re-tunes the top of a jointly trained model (docs L13). 0: nothing frozen")
    distill_from: str | None = arg(None, "a fine-tuned model folder (e.g. a plain run's final/) whose last layer "
                                         "teaches every exit: the loss gains --distill-weight * sum_l tau^2 "
                                         "KL(teacher || exit l) at tau = --distill-tau (docs L11; not in the paper)")
    distill_weight: float = arg(1.0, "weight of the --distill-from term")
    distill_tau: float = arg(1.0, "temperature tau of the --distill-from term")
    batch_size: int = arg(32, "training batch size per process")
    epochs: int = arg(3, "passes over the training set")
    max_steps: int | None = arg(None, "total optimiser steps (overrides --epochs for the schedule)")
    max_seq_length: int = arg(128, "truncation length in tokens")
    warmup_ratio: float = arg(0.06, "share of the steps with a linear warm-up (then linear decay to 0)")
    weight_decay: float = arg(0.0, "AdamW weight decay (0: Adam, as the paper)")
    max_grad_norm: float = arg(1.0, "clip the global gradient norm (0: off)")
    seed: int = arg(42, "seeds the heads' initialisation, dropout and the batch order")
    max_train_examples: int | None = arg(None, "train on the first N examples only")
    max_eval_examples: int | None = arg(None, "evaluate on the first N dev examples only")
    eval_every: int = arg(0, "dev evaluation every N steps (0: at the end of each epoch only)")
    eval_batch_size: int = arg(32, "batch size of the dev evaluations")
    save_every: int = arg(0, "checkpoint every N steps (0: at the end of each epoch only)")
    log_every: int = arg(10, "log.jsonl (and the non-terminal progress line) every N steps")
    resume: bool = arg(False, "continue from the newest checkpoint in --out")
    stop_after_steps: int | None = arg(None, "save a checkpoint and stop after this many steps (resumable)")
    progress: bool = arg(True, "no progress line on stderr")
    deterministic: bool = arg(True, "do not call torch.use_deterministic_algorithms(True) (CPU kernels used here "
                                    "are deterministic anyway; on CUDA this allows faster non-deterministic kernels)")
    device: str = arg("cpu", "torch device: cpu, cuda (cuda:<LOCAL_RANK> under torchrun), cuda:1, mps")

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
        for name in ("distill_weight", "distill_tau"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not isinstance(self.freeze_layers, int) or self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be an int >= 0, got {self.freeze_layers!r}")
        if self.freeze_layers and self.method != "mpee":
            raise ValueError(f"--freeze-layers: MPEE only (--method {self.method} names its parameters otherwise)")
        if self.distill_from is not None and self.method != "mpee":
            raise ValueError(f"--distill-from: MPEE only; --method {self.method} has its own loss")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.model is None and not self.resume:
            raise ValueError("model: a model folder is required unless resuming")
        self._check_method()
        check_numbers(self)                  # finite lr / grad norm, eval_every >= 0... (runs.py)


    def _check_method(self) -> None:
        """--method X takes --stage/--option; MPEE's --mode/--preset/--ablate/--set do not apply to it."""
        if self.method == "mpee":
            if self.stage is not None or self.options:
                raise ValueError("stage/--option: only for a baseline (--method); MPEE takes --preset/--set")
            return
        spec = get_method(self.method)
        mpee_only = {"mode": self.mode != "mpee", "preset": self.preset != "paper", "ablate": bool(self.ablate),
                     "set": bool(self.overrides)}
        used = [k for k, v in mpee_only.items() if v]
        if used:
            raise ValueError(f"--{used[0]}: an MPEE option; --method {spec.name} takes --option KEY=VALUE instead")
        if self.stage is not None and self.stage not in spec.stages:
            raise ValueError(f"stage: {spec.name} has stages {spec.stages or '(one stage: no --stage)'}, "
                             f"got {self.stage!r}")
        if self.stage is not None and self.stage != spec.stages[0] and not self.freeze_backbone:
            raise ValueError(f"stage {self.stage}: trains {spec.name}'s classifiers on the frozen backbone of its "
                             f"first stage: add --freeze-backbone (and --model <first stage>/final)")


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """LR multiplier: ``step/warmup`` while warming up, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)   # never 0: the first step already moves the weights
    return max(0.0, (total - step) / max(1, total - warmup))


def frozen_by_layers(name: str, k: int) -> bool:
    """Whether ``--freeze-layers k`` freezes parameter ``name``: the embeddings (``bert.embeddings.*``),
    encoder layers 1..k (``bert.encoder.layer.{0..k-1}.*``) and their exit heads (``exits.{0..k-1}.*``)."""
    if k <= 0:
        return False
    if name.startswith("bert.embeddings."):
        return True
    for prefix in ("bert.encoder.layer.", "exits."):
        if name.startswith(prefix):
            return int(name[len(prefix):].split(".", 1)[0]) < k
    return False


def param_groups(model: Model, lr: float, head_lr_mult: float, freeze_backbone: bool = False,
                 freeze_layers: int = 0) -> list[dict[str, Any]]:
    """Optimiser groups: the backbone (``bert.*``) at ``lr``; the exit heads and the teacher of Eq. 12
    (a baseline's classifiers, ``heads.*``) at ``lr * head_lr_mult`` (docs L10). The schedule scales both
    alike. ``freeze_backbone`` leaves the backbone out (and sets its ``requires_grad`` to False): the second
    stage of two-stage training. ``freeze_layers = k`` leaves out what :func:`frozen_by_layers` names and
    stops the running statistics of heads 1..k (momentum 0), so those exits decide exactly as before (L13)."""
    if freeze_layers:
        layers = len(model.exits)
        if freeze_layers >= layers:
            raise ValueError(f"freeze_layers: the model has {layers} layers; freeze at most {layers - 1} "
                             f"(got {freeze_layers}; --freeze-backbone trains the heads alone)")
        for head in list(model.exits)[:freeze_layers]:
            if head.norm is not None:
                head.norm.momentum = 0.0     # batch statistics still standardise in training; averages stay
    backbone, heads = [], []
    for n, p in model.named_parameters():
        if (freeze_backbone and n.startswith("bert.")) or frozen_by_layers(n, freeze_layers):
            p.requires_grad_(False)
        else:
            (backbone if n.startswith("bert.") else heads).append(p)
    groups = [{"params": backbone, "lr": lr}] if backbone else []
    return groups + [{"params": heads, "lr": lr * head_lr_mult}]


# ============================================================================ the model family
# A run's model and loss come from these two functions only: another family (the baselines of
# mpee_ref/baselines, whose forward returns an output with ``.loss``) plugs in here.
def build_model(args: TrainArgs, num_labels: int) -> Model:
    """The model a fresh run starts from: ``args.model``'s encoder with exit heads configured by
    ``--preset``, ``--ablate``, ``--set`` and ``--mode`` (heads initialised with ``args.seed``); or the
    baseline of ``--method`` with its ``--stage`` and ``--option`` values (:mod:`.families`)."""
    folder = Path(args.model)
    if args.method != "mpee":
        options = typed_fields(get_method(args.method).config, args.options, "--option")
        return build_baseline(args.method, folder, args.seed, num_labels, args.stage, options)
    cfg = build_config(num_labels, read_config(folder).num_hidden_layers, preset=args.preset, ablate=args.ablate,
                       overrides=args.overrides, mode=args.mode)
    return load_mpee(folder, seed=args.seed, **cfg.to_dict())


def loss_of(out: Any, labels: torch.Tensor, mode: str) -> torch.Tensor:
    """The loss one step minimises: Eq. 14 (``mpee``), CE on the last layer's head only (``plain``), or
    a baseline's own loss (its output's ``loss``)."""
    if isinstance(out, BaselineTrainOutput):
        return out.loss
    if mode == "plain":
        return F.cross_entropy(out.logits[-1], labels)
    return out.loss.total


# ============================================================================ distillation from a fine-tuned model (L11)
def load_distill_teacher(folder: str | Path, student: Model, device: torch.device) -> MPEEModel:
    """The frozen teacher of ``--distill-from``: an MPEE folder (a ``--mode plain`` run's ``final/``, or any
    MPEE model) with the student's classes and tokenizer, in eval mode, every parameter frozen."""
    teacher = load_trained(folder)
    if not isinstance(teacher, MPEEModel):
        raise ValueError(f"--distill-from: {folder} holds a baseline ({method_name(teacher)}); give an MPEE or "
                         f"plain run's final/")
    if num_labels(teacher) != num_labels(student):
        raise ValueError(f"--distill-from: {folder} has {num_labels(teacher)} classes, the student "
                         f"{num_labels(student)}")
    def reads(m: Model) -> tuple[bytes, bool]:                  # what maps a text to token ids
        return m.tokenizer.vocab_file.read_bytes(), m.tokenizer.do_lower_case
    if reads(teacher) != reads(student):
        raise ValueError(f"--distill-from: {folder} has another vocab.txt or casing than the student; both must "
                         f"read the same token ids")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.to(device).eval()


@torch.no_grad()
def distill_targets(teacher: MPEEModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, C)``: the teacher's prediction logits with every token kept and every layer run (its exit L,
    or its final classifier), no dropout; draws no random numbers, so resumed runs stay bit-identical."""
    cfg = dataclasses.replace(teacher.mpee_config, token_exit=False)
    out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], config=cfg)
    return out.memories[-1] if out.final_logits is None else out.final_logits


def distill_loss(out: Any, mode: str, targets: torch.Tensor, weight: float, tau: float) -> torch.Tensor:
    r"""The ``--distill-from`` term (L11): Eq. (13)'s per-exit :math:`\tau^2\,\mathrm{KL}` with the fine-tuned
    model's logits ``targets`` ``(B, C)`` in place of the ensemble teacher t, in the usual KD direction
    KL(teacher ‖ student), summed over the students and weighted:

    .. math:: w \sum_l \tau^2\, \mathrm{KL}\big(\mathrm{softmax}(t_{ext}/\tau) \,\|\,
              \mathrm{softmax}(C_{zm}^l/\tau)\big)

    The students are what the loss trains: every memory :math:`C_{zm}^l` (the final classifier's logits in
    exit L's place when there is one) for ``mpee``; the last head alone for ``plain``."""
    students = out.logits[-1:] if mode == "plain" else out.loss_inputs              # (1 or L, B, C)
    return weight * eq13_kd_loss(students, targets, tau, "teacher_student").sum()


# ============================================================================ run and state
@dataclass(frozen=True)
class TrainRun:
    """What one training run fixes at set-up (the optimiser and the model change inside, not the fields)."""

    args: TrainArgs
    spec: TaskSpec
    out: Path
    dist: DistContext
    identity: dict[str, Any]               # run_identity (runs.py): stored in run.json and every checkpoint
    model: Model
    teacher: MPEEModel | None              # the frozen --distill-from model (L11), or None
    net: torch.nn.Module                   # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: EpochBatchSampler
    train_data: EncodedDataset
    dev_data: EncodedDataset
    probe_batch: dict[str, torch.Tensor]   # 8 training examples on the device: the pre-checkpoint NaN probe
    total: int                             # optimiser steps of the whole run
    resumed_from: Path | None              # the checkpoint folder a resumed run loaded (kept until the end)
    log: RunLog
    progress: Progress
    interrupt: InterruptFlag
    command: str | None


@dataclass
class TrainState:
    """What changes while training."""

    step: int                              # optimiser steps done
    seen: int                              # training examples seen, all ranks together
    elapsed0: float                        # training seconds before this process (resumed runs)
    t_start: float = 0.0                   # time.perf_counter() when this process's loop started
    saved_step: int = -1                   # the step of this process's newest checkpoint (-1: none yet)
    saved_path: Path | None = None         # and its folder (rank 0)

    def training_time(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t_start


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a ``--resume`` run continues from, and its ``train_state.pt``."""

    folder: Path
    state: dict[str, Any]


# ============================================================================ set-up
def train_model(args: TrainArgs, command: str | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune; returns the summary also written to ``out/train_summary.json`` (rank 0).

    ``overwrite``: start afresh in an ``out`` that holds another or a finished run (its files are
    deleted first); without it such a folder is refused (see :mod:`~mpee_ref.experiments.runs`).
    """
    spec = _check_request(args, overwrite)
    ctx = distributed.setup(resolve_device(args.device))
    prev_det = torch.are_deterministic_algorithms_enabled()
    if args.deterministic:       # (its first call imports torch._inductor: seconds, once per process)
        torch.use_deterministic_algorithms(True, warn_only=ctx.device.type == "cuda")
    interrupt = InterruptFlag().install()
    lock: RunLock | None = None
    log = RunLog(None)
    try:
        identity = run_identity(args, model_fingerprint(args.model) if args.model is not None else None)
        lock = _claim_folder(args, ctx, identity, overwrite)
        run, state = set_up(args, spec, ctx, identity, command, interrupt)
        log = run.log
        stopped = run_epochs(run, state)
        run.progress.close()
        return finish(run, state) if stopped is None else stop(run, state, stopped)
    finally:
        if args.deterministic:
            torch.use_deterministic_algorithms(prev_det)
        interrupt.restore()
        log.close()
        if lock is not None:
            lock.release()
        distributed.teardown(ctx)


def _check_request(args: TrainArgs, overwrite: bool) -> TaskSpec:
    """Refuse what no run can do (a regression task, a missing model folder, --overwrite with --resume)."""
    spec = require_classes(get_task(args.task))
    if args.model is not None and not Path(args.model).is_dir():
        raise ValueError(f"--model: {args.model} is not a folder")
    if args.distill_from is not None and not Path(args.distill_from).is_dir():
        raise ValueError(f"--distill-from: {args.distill_from} is not a folder")
    if overwrite and args.resume:
        raise ValueError("--overwrite starts a run afresh, --resume continues one: pass only one of them")
    return spec


def _claim_folder(args: TrainArgs, ctx: DistContext, identity: dict[str, Any], overwrite: bool) -> RunLock | None:
    """Rank 0 locks ``out`` and checks (or, with ``overwrite``, clears) it; every rank stops if it refuses."""
    lock, refusal = None, None
    if ctx.is_writer:                                            # one writer: lock and folder checks
        try:
            lock = RunLock(Path(args.out)).acquire()
            if not args.resume:
                prepare_fresh(Path(args.out), identity, overwrite)
            clean_temporaries(Path(args.out))
        except (ValueError, OSError) as e:
            refusal = e
    if distributed.any_rank(refusal is not None, ctx):          # every rank stops, none waits forever
        if lock is not None:
            lock.release()
        raise refusal or ValueError(f"{args.out}: refused by rank 0 (see its error)")
    return lock


def _resume_point(args: TrainArgs, identity: dict[str, Any], ctx: DistContext) -> ResumePoint:
    """The newest checkpoint, refused if it belongs to another run; the run's start model joins ``identity``."""
    folder = resume_point(Path(args.out))
    state = load_train_state(folder)
    note = check_resume(state, folder, identity, args)
    if note and ctx.is_writer:
        print(note, file=sys.stderr)
    if state["world_size"] != ctx.world:
        raise ValueError(f"--resume: checkpoint was written by {state['world_size']} processes, now {ctx.world}")
    if "identity" in state:
        identity["model"] = json.loads(state["identity"])["model"]      # the run's start model
    return ResumePoint(folder, state)


def _read_data(args: TrainArgs, spec: TaskSpec, model: Model) -> tuple[EncodedDataset, EncodedDataset]:
    """The (train, dev) splits, tokenised with the model's tokenizer."""
    train_ex = read_glue(spec.name, args.data_dir, "train")[:args.max_train_examples]
    dev_ex = read_glue(spec.name, args.data_dir, "dev")[:args.max_eval_examples]
    return (encode_examples(model.tokenizer, train_ex, args.max_seq_length),
            encode_examples(model.tokenizer, dev_ex, args.max_seq_length))


def _on_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def set_up(args: TrainArgs, spec: TaskSpec, ctx: DistContext, identity: dict[str, Any], command: str | None,
           interrupt: InterruptFlag) -> tuple[TrainRun, TrainState]:
    """Model, data, optimiser and schedule (restored on ``--resume``), in the order that keeps resumed
    runs bit-identical; rank 0 writes ``run.json`` for a fresh run and opens ``log.jsonl``."""
    resume = _resume_point(args, identity, ctx) if args.resume else None
    model = load_trained(resume.folder) if resume else build_model(args, spec.num_labels)
    if num_labels(model) != spec.num_labels:
        raise ValueError(f"model: has {num_labels(model)} classes, task {spec.name} has {spec.num_labels}")
    teacher = load_distill_teacher(args.distill_from, model, ctx.device) if args.distill_from else None
    train_data, dev_data = _read_data(args, spec, model)
    out = Path(args.out)
    if ctx.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        if resume is None:
            atomic_text(out / RUN_FILE, json.dumps({"identity": identity, "command": command}, indent=2) + "\n")
    model.to(ctx.device).train()
    pad = model.bert_config.pad_token_id
    probe = _on_device(collate(train_data, list(range(min(8, len(train_data)))), pad), ctx.device)
    sampler = EpochBatchSampler(len(train_data), args.batch_size, args.seed, ctx.rank, ctx.world)
    total = args.max_steps or args.epochs * len(sampler)
    warmup = int(round(args.warmup_ratio * total))
    optimizer = torch.optim.AdamW(param_groups(model, args.lr, args.head_lr_mult, args.freeze_backbone,
                                               args.freeze_layers),
                                  betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(linear_schedule, total=total, warmup=warmup))
    state = _restore(resume, optimizer, scheduler, args, ctx)
    net: torch.nn.Module = model
    if ctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=True)
    log = RunLog(out / "log.jsonl" if ctx.is_writer else None)
    progress = Progress(total, args.progress and ctx.is_writer, args.log_every)
    run = TrainRun(args, spec, out, ctx, identity, model, teacher, net, optimizer, scheduler, sampler, train_data,
                   dev_data, probe, total, resume.folder if resume else None, log, progress, interrupt, command)
    return run, state


def _restore(resume: ResumePoint | None, optimizer: torch.optim.Optimizer, scheduler: Any, args: TrainArgs,
             ctx: DistContext) -> TrainState:
    """Optimiser, schedule, this rank's RNG and the step of a resumed run; a fresh run seeds dropout."""
    if resume is None:
        torch.manual_seed(args.seed + ctx.rank)
        return TrainState(step=0, seen=0, elapsed0=0.0)
    optimizer.load_state_dict(resume.state["optimizer"])
    scheduler.load_state_dict(resume.state["scheduler"])
    torch.set_rng_state(resume.state["rng_cpu"][ctx.rank])
    step = int(resume.state["step"])
    return TrainState(step=step, seen=step * args.batch_size * ctx.world, elapsed0=float(resume.state["elapsed_s"]))


# ============================================================================ the epoch loop
def run_epochs(run: TrainRun, state: TrainState) -> str | None:
    """Train until ``run.total`` steps; returns why it stopped early ("interrupted", "stop_after_steps")
    or None. Without ``--eval-every`` the dev set is evaluated at the end of each epoch but the last; a
    checkpoint is saved there too (the last epoch's is the final model)."""
    state.t_start = time.perf_counter()
    run.log.write({"event": "start", "step": state.step, "total_steps": run.total, "world_size": run.dist.world,
                   "resumed_from": str(run.resumed_from) if run.resumed_from else None, "command": run.command})
    while state.step < run.total:
        epoch, first = divmod(state.step, len(run.sampler))
        for batch_idx in run.sampler.batches(epoch, first):
            loss = train_step(run, state, batch_idx)
            stopped = _after_step(run, state, epoch, loss)
            if stopped is not None:
                return stopped
            if state.step >= run.total:
                break
        if state.step < run.total and state.step % len(run.sampler) == 0:   # end of an epoch
            if not run.args.eval_every:
                evaluate_dev(run, state, "epoch")
            save(run, state)
    return None


def train_step(run: TrainRun, state: TrainState, batch_idx: list[int]) -> float:
    """One optimiser step on ``batch_idx``; returns the loss (mean over ranks). NaN/Inf stop the run."""
    args = run.args
    batch = _on_device(collate(run.train_data, batch_idx, run.model.bert_config.pad_token_id), run.dist.device)
    targets = distill_targets(run.teacher, batch) if run.teacher is not None else None          # (B, C)
    try:
        out = run.net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                      labels=batch["labels"] if args.mode == "mpee" else None)
    except ValueError as e:                                       # "scores contain NaN" (Eq. 7)...
        if "NaN" not in str(e):
            raise
        raise Diverged(_diverged(run, state, str(e))) from None
    loss = loss_of(out, batch["labels"], args.mode)
    if targets is not None:
        loss = loss + distill_loss(out, args.mode, targets, args.distill_weight, args.distill_tau)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if args.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    state.step += 1
    state.seen += len(batch_idx) * run.dist.world
    loss_v = distributed.all_mean(float(loss.detach()), run.dist)
    if not math.isfinite(loss_v):
        raise Diverged(_diverged(run, state, f"loss {loss_v}"))
    if not weights_finite(run.model.parameters()):
        raise Diverged(_diverged(run, state, "weights hold NaN/Inf after the optimiser step"))
    return loss_v


def _after_step(run: TrainRun, state: TrainState, epoch: int, loss: float) -> str | None:
    """Progress, the log, periodic evaluation and checkpoint; whether to stop here (and why)."""
    args, step = run.args, state.step
    run.progress.update(step, loss, state.seen)
    if step % args.log_every == 0 or step == 1:
        run.log.write({"event": "train", "step": step, "epoch": epoch, "loss": loss,
                       "lr": run.scheduler.get_last_lr()[0]})
    if args.eval_every and step % args.eval_every == 0 and step < run.total:
        evaluate_dev(run, state, "periodic")
    if args.save_every and step % args.save_every == 0 and step < run.total:
        save(run, state)
    if distributed.any_rank(run.interrupt.raised, run.dist):
        return "interrupted"
    if args.stop_after_steps is not None and step >= args.stop_after_steps and step < run.total:
        return "stop_after_steps"
    return None


def evaluate_dev(run: TrainRun, state: TrainState, tag: str, **overrides: Any) -> dict[str, Any]:
    """The dev metrics and ρ (each rank runs every world-th example; gathered in order), logged."""
    idx = list(range(run.dist.rank, len(run.dev_data), run.dist.world))
    samples = run_inference(run.model, run.dev_data, run.args.eval_batch_size, indices=idx, **overrides)
    samples = distributed.gather_in_order(idx, samples, run.dist)
    if not samples_finite(samples):
        raise Diverged(_diverged(run, state, f"the model's {tag} dev outputs hold NaN/Inf"))
    if isinstance(run.model, MPEEModel):
        res = summarize(samples, run.dev_data.labels, run.spec.name, run.model, run.args.max_seq_length, "ours",
                        **overrides)
    else:
        res = summarize_baseline(samples, run.dev_data.labels, run.spec.name, run.model)
    res.pop("config")
    run.log.write({"event": "eval", "tag": tag, "step": state.step, **res})
    return res


def save(run: TrainRun, state: TrainState) -> Path | None:
    """A checkpoint at the current step (once per step; refused if the model's outputs are not finite)."""
    if state.saved_step == state.step:                           # already saved at this step in this run
        return state.saved_path
    reason = outputs_finite(run.model, run.probe_batch)          # draws no random numbers
    if distributed.any_rank(reason is not None, run.dist):
        raise Diverged(_diverged(run, state, reason or "another rank's outputs hold NaN/Inf"))
    rng = distributed.gather_rng(run.dist)
    path = None
    if run.dist.is_writer:
        path = save_checkpoint(run.out, run.model, {
            "format": STATE_FORMAT, "step": state.step, "world_size": run.dist.world,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "rng_cpu": rng, "elapsed_s": state.training_time(),
            "args": json.dumps(jsonable_args(run.args)), "identity": json.dumps(run.identity)},
            protect=run.resumed_from)
        run.log.write({"event": "checkpoint", "step": state.step, "path": str(path)})
    distributed.barrier(run.dist)
    state.saved_step, state.saved_path = state.step, path
    return path


def _diverged(run: TrainRun, state: TrainState, reason: str) -> str:
    last = latest_checkpoint(run.out) if run.dist.is_writer else None
    return (f"{run.out}: training diverged at step {state.step} ({reason}); nothing was saved after it; "
            + (f"the last finite checkpoint is {last}" if last else "no checkpoint was written")
            + "; lower --lr or check the data")


# ============================================================================ finish
def stop(run: TrainRun, state: TrainState, why: str) -> dict[str, Any]:
    """An early stop: save a checkpoint; an interruption then exits (``Interrupted``), otherwise return."""
    path = save(run, state)
    if run.dist.is_writer:
        print(f"{why}: checkpoint at step {state.step} in {path}; continue with --resume", file=sys.stderr)
    if why == "interrupted":
        raise Interrupted(run.interrupt.signum)
    return {"stopped": why, "step": state.step, "checkpoint": str(path) if path else None}


def finish(run: TrainRun, state: TrainState) -> dict[str, Any]:
    """Final dev evaluation (and, for MPEE, without layer exits), then ``final/``, ``train_summary.json``."""
    train_time = state.training_time()
    final = evaluate_dev(run, state, "final")
    mpee = run.args.mode == "mpee" and isinstance(run.model, MPEEModel)
    extra = evaluate_dev(run, state, "final_no_exit", layer_exit=False) if mpee else None
    if distributed.any_rank(run.interrupt.raised, run.dist):     # Ctrl-C during the final evaluation
        path = save(run, state)
        if run.dist.is_writer:
            print(f"interrupted: checkpoint at step {state.step} in {path}; --resume re-runs the final evaluation",
                  file=sys.stderr)
        raise Interrupted(run.interrupt.signum)
    summary = finite_json({
        "command": run.command, "args": jsonable_args(run.args), "seed": run.args.seed, "mode": run.args.mode,
        "world_size": run.dist.world, "steps": state.step, "examples_seen": state.seen,
        "training_time_s": train_time, "machine": _machine(run.dist.device),
        "method": method_name(run.model), "model_config": config_dict(run.model), "final_dev": final, "final_dev_no_exit": extra,
        "run": run.identity})
    if run.dist.is_writer:
        _write_final(run, summary)
        run.log.write({"event": "done", "step": state.step, "training_time_s": train_time})
        if run.resumed_from is not None and latest_checkpoint(run.out) != run.resumed_from:
            shutil.rmtree(run.resumed_from, ignore_errors=True)  # the resumed-from checkpoint, kept until now
    distributed.barrier(run.dist)
    return summary


def _machine(device: torch.device) -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "device": str(device)}


def _write_final(run: TrainRun, summary: dict[str, Any]) -> None:
    """``out/final/`` (the model, its summary and task) and ``out/train_summary.json``."""
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    task = {"task": run.spec.name, "label_names": list(run.spec.label_names)}
    save_final(run.model, run.out / "final",
               {"train_summary.json": text, "task.json": json.dumps(task, indent=2) + "\n"})
    atomic_text(run.out / "train_summary.json", text)


# ============================================================================ CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = command_parser(subparsers, "train", "fine-tune MPEE (Eq. 14) or the plain baseline on a GLUE task", __doc__)
    add_flags(p, TrainArgs)
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds another or a finished run (deletes its files)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    return p


def run(args: argparse.Namespace) -> int:
    """The ``train`` command; ValueError/OSError reach ``__main__`` (one line, exit 2)."""
    try:
        check_cli_numbers(args.threads)
        get_task(args.task)
        summary = train_model(from_flags(TrainArgs, args),
                              command=shlex.join([sys.executable, "-m", "mpee_ref", *sys.argv[1:]]),
                              overwrite=args.overwrite)
    except KeyboardInterrupt as e:
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    if "final_dev" in summary and int(os.environ.get("RANK", "0")) == 0:
        m = ", ".join(f"{k} {v:.4f}" for k, v in summary["final_dev"]["metrics"].items())
        print(f"done: {summary['steps']} steps in {summary['training_time_s']:.0f} s; dev {m}, "
              f"rho {summary['final_dev']['rho']:.2f}x; model in {Path(args.out) / 'final'}", file=sys.stderr)
    return 0
