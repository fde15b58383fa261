"""The four-stage training schedule, the best measured for MPEE on SST-2 (docs/RESULTS.md, "Plain loss on
the top, exits on the frozen result"), as one resumable command.

1. ``plain``: the plain fine-tuned backbone (``--mode plain``: the last head's cross-entropy, no exits);
2. ``joint``: MPEE (Eq. 14, the exit-head recipe: ``--preset recipe --head-lr-mult``) on every parameter,
   starting from stage 1;
3. ``top``: the plain loss on layers K+1..L, with the embeddings, layers 1..K and their exit heads frozen
   (``--freeze-layers K``, docs/interpretation/layer_exit_and_losses.md L13), so exits 1..K decide exactly
   as after stage 2 while the top returns towards plain fine-tuning (``--prune-top``: with tokens exiting
   in its forward pass, ``--set token_exit=true``, L14);
4. ``heads``: the exit heads above K and the teacher (Eq. 14) on the stage-3 model frozen whole
   (``--freeze-backbone --freeze-layers K``), so those exits read the new features.

::

    python tools/four_stage.py --task sst-2 --data-dir $GLUE_DIR --out runs/sst2-4s/s0 --seed 0 \\
        --max-seq-length 64 [--plain runs/sst2-full/plain-s0/final] [--dry-run]

Each stage is one ``python -m mpee_ref train`` command, printed before it runs, writing ``OUT/<stage>/``.
A finished stage (``final/`` and ``train_summary.json`` present) is skipped and one with a checkpoint is
resumed, so running the same command again continues an interrupted schedule. ``--plain DIR`` uses an
existing model folder (a plain run's ``final/``) as stage 1. The model to evaluate is
``OUT/heads/final``; the script ends by printing the ``sweep`` command for it. On SST-2 the best
operating points measured have the first token exit after layer 3 (``sweep ... --set prune_layers=3,4,5``,
docs/RESULTS.md, "Token exits from layer 3 instead of layer 2").
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpee_ref.__main__ import main as mpee_cli  # noqa: E402

STAGES = ("plain", "joint", "top", "heads")


@dataclass(frozen=True)
class Stage:
    name: str
    out: Path
    argv: tuple[str, ...]            # ``python -m mpee_ref`` arguments, without --resume

    @property
    def done(self) -> bool:
        return (self.out / "final" / "model.safetensors").is_file() and (self.out / "train_summary.json").is_file()

    @property
    def resumable(self) -> bool:
        return any(self.out.glob("checkpoint-*"))


def plan(args: argparse.Namespace) -> list[Stage]:
    """The four ``train`` commands (the first left out when ``--plain`` gives stage 1's model)."""
    out = Path(args.out)
    common = ["--task", args.task, "--data-dir", args.data_dir, "--lr", str(args.lr), "--warmup-ratio", "0",
              "--max-seq-length", str(args.max_seq_length), "--batch-size", str(args.batch_size),
              "--seed", str(args.seed), "--threads", str(args.threads), "--save-every", str(args.save_every)]
    for flag in ("max_train_examples", "max_eval_examples", "max_steps"):
        if getattr(args, flag) is not None:
            common += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    k = str(args.freeze_layers)
    heads = ("--preset", "recipe", "--head-lr-mult", str(args.head_lr_mult))
    plain_model = Path(args.plain) if args.plain else out / "plain" / "final"

    def stage(name: str, model: Path | str, *flags: str) -> Stage:
        return Stage(name, out / name, ("train", "--model", str(model), *flags, "--out", str(out / name), *common))

    stages = [
        stage("plain", args.model, "--preset", "paper", "--mode", "plain", "--epochs", str(args.plain_epochs)),
        stage("joint", plain_model, *heads, "--epochs", str(args.epochs)),
        stage("top", out / "joint" / "final", "--preset", "recipe", "--mode", "plain", "--freeze-layers", k,
              *(("--set", "token_exit=true") if args.prune_top else ()), "--epochs", str(args.epochs)),
        stage("heads", out / "top" / "final", *heads, "--freeze-backbone", "--freeze-layers", k,
              "--epochs", str(args.epochs)),
    ]
    return stages[1:] if args.plain else stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", required=True, help="folder for the four stage folders")
    ap.add_argument("--model", default=str(REPO / "weights" / "minilm-l6"), help="the pretrained backbone")
    ap.add_argument("--plain", default=None, help="an existing plain run's final/ folder: skip stage 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5, help="backbone learning rate of every stage")
    ap.add_argument("--head-lr-mult", type=float, default=20.0, help="exit heads and teacher, stages 2 and 4")
    ap.add_argument("--freeze-layers", type=int, default=2, help="K: layers (and exits) frozen in stages 3-4")
    ap.add_argument("--prune-top", action="store_true",
                    help="stage 3 with token pruning on (--set token_exit=true, L14 in the interpretation docs)")
    ap.add_argument("--plain-epochs", type=int, default=3, help="stage 1")
    ap.add_argument("--epochs", type=int, default=1, help="stages 2, 3 and 4 each")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=300)
    ap.add_argument("--max-train-examples", type=int, default=None)
    ap.add_argument("--max-eval-examples", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None, help="per stage (overrides the epochs' schedule)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    args = ap.parse_args(argv)
    if args.plain and not (Path(args.plain) / "model.safetensors").is_file():
        print(f"error: --plain: {args.plain} has no model.safetensors (give a train run's final/ folder)",
              file=sys.stderr)
        return 2

    for stage in plan(args):
        if stage.done:
            print(f"[{stage.name}] done, skipped: {stage.out / 'final'}")
            continue
        resume = ("--resume",) if stage.resumable else ()
        print(f"[{stage.name}] $ python -m mpee_ref {shlex.join(stage.argv + resume)}", flush=True)
        if args.dry_run:
            continue
        rc = mpee_cli(list(stage.argv + resume))
        if rc != 0:
            print(f"error: stage {stage.name!r} failed (exit {rc}); fix it and run the same command again",
                  file=sys.stderr)
            return rc
    final = Path(args.out) / "heads" / "final"
    print(f"model: {final}\nnext: python -m mpee_ref sweep --model {final} --task {args.task} "
          f"--data-dir {args.data_dir} --max-seq-length {args.max_seq_length} --out {Path(args.out) / 'heads' / 'sweep'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
