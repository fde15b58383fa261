"""Where an operating point's accuracy goes, exit layer by exit layer (mpee_ref/experiments/breakdown.py).

    python tools/exit_breakdown.py --model runs/sst2-full/tsA-s0/final --task sst-2 --data-dir $GLUE_DIR \
        --threshold 0.4 --r-ee 0 --max-seq-length 64 [--reference runs/sst2-full/plain-s0/final] [--json out.json]

For the samples leaving at each layer: correct predictions of MPEE at (F, R_ee), of the same model with
exits off, and of ``--reference`` (typically the plain fine-tuned backbone, exits off). The gap to the
reference splits into what the early exit costs and what MPEE's training of the backbone costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpee_ref.experiments.breakdown import breakdown_markdown, exit_breakdown  # noqa: E402
from mpee_ref.experiments.evaluate import run_inference  # noqa: E402
from mpee_ref.experiments.loading import SplitArgs, load_split  # noqa: E402
from mpee_ref.io.atomic import atomic_text  # noqa: E402

EXITS_OFF = dict(token_exit=False, layer_exit=False)   # every sample runs every layer with every token


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained MPEE folder (train's out/final)")
    ap.add_argument("--reference", default=None, help="an MPEE folder compared with exits off (e.g. a plain run)")
    ap.add_argument("--task", required=True)
    ap.add_argument("--data-dir", required=True, help="GLUE root or the task folder")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--threshold", type=float, required=True, help="F of the operating point")
    ap.add_argument("--r-ee", type=float, required=True, help="R_ee of the operating point")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    def load(folder: str, flag: str):
        split = SplitArgs(task=args.task, data_dir=args.data_dir, model=folder, split=args.split,
                          batch_size=args.batch_size, max_seq_length=args.max_seq_length,
                          max_examples=args.max_examples, threads=args.threads)
        return load_split(split, flag=flag, require_mpee=True)

    try:
        main_split = load(args.model, "--model")
        ref_split = load(args.reference, "--reference") if args.reference else None
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if ref_split is not None and ref_split.data.input_ids != main_split.data.input_ids:
        print("error: --reference tokenises the split differently from --model (another vocabulary?)",
              file=sys.stderr)
        return 2
    model, data = main_split.model, main_split.data
    at_point = run_inference(model, data, args.batch_size, threshold=args.threshold, r_ee=args.r_ee)
    off = run_inference(model, data, args.batch_size, **EXITS_OFF)
    ref = None if ref_split is None else [s.prediction for s in
                                          run_inference(ref_split.model, data, args.batch_size, **EXITS_OFF)]
    rows = exit_breakdown([s.exit_layer for s in at_point], [s.prediction for s in at_point], data.labels,
                          [s.prediction for s in off], model.bert_config.num_hidden_layers, ref)
    print(f"{args.model} at F {args.threshold}, R_ee {args.r_ee} ({args.task} {args.split}, "
          f"{len(data.labels)} samples)" + (f"; reference {args.reference}" if args.reference else ""))
    print(breakdown_markdown(rows))
    if args.json:
        atomic_text(args.json, json.dumps({"model": args.model, "reference": args.reference,
                                           "threshold": args.threshold, "r_ee": args.r_ee,
                                           "rows": [dataclasses.asdict(r) for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
