"""Command-line flags derived from dataclasses (mpee_ref/experiments/flags.py) and ``--device``."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from mpee_ref.__main__ import main
from mpee_ref.experiments import TrainArgs
from mpee_ref.experiments.ablation import train_args_from_cli
from mpee_ref.experiments.flags import add_flags, from_flags, resolve_device
from mpee_ref.experiments.loading import SplitArgs

REQUIRED = dict(task="sst-2", data_dir="D", out="O")


def _parser(cls: type, **kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add_flags(p, cls, **kw)
    return p


def _argv(args: TrainArgs) -> list[str]:
    """The command line that means ``args`` (written here by hand, independently of add_flags)."""
    out: list[str] = []
    for f in dataclasses.fields(args):
        v, flag = getattr(args, f.name), "--" + f.name.replace("_", "-")
        if f.name == "overrides":
            out += [x for k, val in v.items() for x in ("--set", f"{k}={val}")]
        elif f.name == "options":
            out += [x for k, val in v.items() for x in ("--option", f"{k}={val}")]
        elif f.name == "ablate":
            out += [x for c in v for x in ("--ablate", c)]
        elif isinstance(v, bool):
            out += [] if v == f.default else [f"--no-{flag[2:]}" if f.default else flag]
        elif v is not None:
            out += [flag, str(v)]
    return out


def test_every_train_args_field_has_a_flag_and_the_defaults_round_trip():
    p = _parser(TrainArgs)
    dests = {a.dest for a in p._actions}
    assert {f.name for f in dataclasses.fields(TrainArgs)} <= dests
    assert all(a.help for a in p._actions)                              # every flag documented
    got = from_flags(TrainArgs, p.parse_args(["--task", "sst-2", "--data-dir", "D", "--out", "O", "--model", "M"]))
    assert got == TrainArgs(model="M", **REQUIRED)


def test_every_train_args_field_round_trips_a_non_default_value():
    changed = TrainArgs(model="M", mode="plain", preset="recipe", ablate=("wsd", "ee-fusion"),
                        overrides={"threshold": 0.2, "prune_layers": (2, 3)}, lr=1e-3, head_lr_mult=10.0,
                        freeze_backbone=True, freeze_layers=2, distill_from="T", distill_weight=0.5, distill_tau=2.0, batch_size=8, epochs=2, max_steps=7, max_seq_length=64,
                        warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=0.5, seed=3, max_train_examples=11,
                        max_eval_examples=12, eval_every=5, eval_batch_size=4, save_every=6, log_every=2,
                        resume=True, stop_after_steps=4, progress=False, deterministic=False, device="cuda:1",
                        **REQUIRED)
    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainArgs) if f.name not in BASELINE_FIELDS}
    assert all(getattr(changed, k) != v for k, v in defaults.items())         # every field is off its default
    assert from_flags(TrainArgs, _parser(TrainArgs).parse_args(_argv(changed))) == changed
    baseline = TrainArgs(model="M", method="deebert", stage="ramps", freeze_backbone=True,
                         options={"head_norm": "true", "entropy_threshold": "0.2"}, **REQUIRED)
    assert all(getattr(baseline, k) != getattr(changed, k) for k in BASELINE_FIELDS)   # the MPEE-only run's
    assert from_flags(TrainArgs, _parser(TrainArgs).parse_args(_argv(baseline))) == baseline


BASELINE_FIELDS = ("method", "stage", "options")          # --method X: only with MPEE's options at default


def test_flag_names_of_the_train_command_are_kept():
    p = _parser(TrainArgs)
    flags = {s for a in p._actions for s in a.option_strings}
    assert {"--set", "--ablate", "--no-progress", "--no-deterministic", "--freeze-backbone", "--resume", "--lr",
            "--head-lr-mult", "--max-steps", "--stop-after-steps", "--device"} <= flags
    with pytest.raises(SystemExit):
        p.parse_args(["--task", "sst-2", "--data-dir", "D", "--out", "O", "--mode", "fancy"])     # choices kept


def test_defaults_can_be_replaced_per_command_and_fields_skipped():
    p = _parser(SplitArgs, defaults={"batch_size": 1}, skip=("model",))
    ns = p.parse_args(["--task", "sst-2", "--data-dir", "D"])
    assert not hasattr(ns, "model")
    args = from_flags(SplitArgs, ns, model="X")
    assert (args.model, args.batch_size, args.split, args.device) == ("X", 1, "dev", "cpu")


def test_ablation_train_args_are_parsed_by_the_train_flags():
    a = train_args_from_cli("E", "sst-2", "D", "O", "--no-deterministic --head-lr-mult 3 --mode plain")
    assert a == TrainArgs(model="E", task="sst-2", data_dir="D", out="O", deterministic=False, head_lr_mult=3.0,
                          mode="plain")
    with pytest.raises(ValueError, match="--device not allowed here"):
        train_args_from_cli("E", "sst-2", "D", "O", "--device cuda")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="--device cuda:99: "):
        resolve_device("cuda:99")          # no CUDA here: "not available"; with CUDA: "has N CUDA device(s)"


@pytest.mark.parametrize("command", ["train", "evaluate", "sweep"])
def test_an_unavailable_device_is_one_line_before_any_work(command, tmp_path, capsys):
    argv = [command, "--model", str(tmp_path), "--task", "sst-2", "--data-dir", str(tmp_path), "--device", "cuda:99"]
    rc = main(argv + (["--out", str(tmp_path / "o")] if command != "evaluate" else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --device cuda:99: ")
    assert not (tmp_path / "o").exists()
