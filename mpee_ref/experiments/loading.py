"""The one loader of the inference commands (``evaluate``, ``sweep``, ``ablation``, ``diagnose``): a
model folder and a GLUE split, checked against each other, tokenised, on the requested device.

:class:`SplitArgs` is the flags these commands share (added with :func:`~mpee_ref.experiments.flags.add_flags`);
:func:`load_split` turns them into a :class:`LoadedSplit`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..data import TaskSpec, get_task, read_glue
from ..io.convert import read_json
from ..mpee import load_mpee
from ..mpee.checkpoint import MPEE_CONFIG
from .families import Model, is_baseline_folder, load_trained, num_labels
from .batching import EncodedDataset, encode_examples
from .flags import arg, resolve_device
from .options import check_cli_numbers


@dataclass(frozen=True)
class TaskArgs:
    """The GLUE task and where its files are (every command that reads data has these flags)."""

    task: str = arg(help="GLUE task, e.g. sst-2")
    data_dir: str = arg(help="GLUE root or the task folder")


@dataclass(frozen=True)
class SplitArgs(TaskArgs):
    """The model and the data split an inference command reads."""

    model: str = arg(help="an MPEE or baseline folder (train's out/final)")
    split: str = arg("dev", "the GLUE split to read (dev, train, ...)")
    batch_size: int = arg(32, "inference batch size (the paper: 1; batching does not change results)")
    max_seq_length: int = arg(128, "truncation length in tokens")
    max_examples: int | None = arg(None, "use the first N examples only")
    device: str = arg("cpu", "torch device: cpu, cuda, cuda:1, mps")
    threads: int | None = arg(None, "torch.set_num_threads")
    allow_task_mismatch: bool = arg(False, "use the model even if it was trained on another task "
                                           "(task.json / train_summary.json)")


@dataclass(frozen=True)
class LoadedSplit:
    """A model (eval mode, on the requested device, tokenizer attached) and the split it reads."""

    spec: TaskSpec
    folder: Path
    model: Model
    data: EncodedDataset
    is_mpee: bool                          # False: an encoder folder, whose exit heads are untrained, or a baseline
    is_baseline: bool = False              # a baseline folder (train --method X): its knob, not F/R_ee


def model_task(folder: Path) -> str | None:
    """The task a trained MPEE folder was trained on: ``task.json``'s ``task``, else the ``args.task`` of
    ``train_summary.json``; None for a folder that records neither (an encoder folder)."""
    for name, key in (("task.json", ("task",)), ("train_summary.json", ("args", "task"))):
        path = folder / name
        if not path.is_file():
            continue
        d = read_json(path)
        task = d.get(key[0]) if len(key) == 1 else (d.get(key[0]) or {}).get(key[1])
        if not isinstance(task, str):
            raise ValueError(f"{path}: expected a JSON object with a task name, got {task!r:.60}")
        return get_task(task).name
    return None


def require_classes(spec: TaskSpec) -> TaskSpec:
    """Refuse a regression task: the exit test reads class probabilities."""
    if spec.task_type != "classification":
        raise ValueError(f"task: {spec.name} is a regression task; MPEE's entropy exits need classes")
    return spec


def check_model_task(model: Model, spec: TaskSpec, flag: str = "model") -> None:
    """A classification task whose number of classes the model has."""
    require_classes(spec)
    if spec.num_labels != num_labels(model):
        raise ValueError(f"{flag}: has {num_labels(model)} classes, task {spec.name} has {spec.num_labels}")


def load_split(args: SplitArgs, flag: str = "--model", require_mpee: bool = False,
               encoder_note: bool = True, allow_baseline: bool = False) -> LoadedSplit:
    """Check the flags, load ``args.model`` onto ``args.device`` and tokenise ``args.split`` (see the module
    doc). ``flag`` names the model flag in errors; ``require_mpee`` refuses an encoder folder (which gets
    fresh heads for the task's classes, and a note on stderr unless ``encoder_note`` is False)."""
    check_cli_numbers(args.threads, batch_size=args.batch_size, max_examples=args.max_examples)
    device = resolve_device(args.device)
    spec = require_classes(get_task(args.task))
    folder = Path(args.model)
    if not folder.is_dir():
        raise ValueError(f"{flag}: {folder} is not a folder")
    is_mpee, is_baseline = (folder / MPEE_CONFIG).is_file(), is_baseline_folder(folder)
    if is_baseline and not allow_baseline:
        raise ValueError(f"{flag}: {folder} holds a baseline model (train --method); this command needs an MPEE "
                         f"folder (baselines work with evaluate, sweep and compare)")
    if require_mpee and not is_mpee:
        raise ValueError(f"{flag}: {folder} has no {MPEE_CONFIG} (expected a trained MPEE folder)")
    trained_on = model_task(folder)
    if trained_on is not None and trained_on != spec.name and not args.allow_task_mismatch:
        raise ValueError(f"{folder}: the model was trained on {trained_on}, not {spec.name}; its classes mean "
                         f"other things (pass --allow-task-mismatch to use it anyway)")
    examples = read_glue(spec.name, args.data_dir, args.split)[:args.max_examples]
    fresh = not (is_mpee or is_baseline)
    model = (load_mpee(folder, num_labels=spec.num_labels) if fresh else load_trained(folder)).to(device)
    if fresh and encoder_note:
        print(f"note: {folder} is an encoder folder: the exit heads are untrained", file=sys.stderr)
    check_model_task(model, spec, flag)
    data = encode_examples(model.tokenizer, examples, args.max_seq_length)
    return LoadedSplit(spec, folder, model, data, is_mpee, is_baseline)
