"""Wall-clock honesty for MPEE: FLOPs speed-up ρ (Eq. 15) beside the measured wall-clock speed-up.

For each setting (threshold F, R_ee) it times, interleaved in one process on the same inputs:

* **full**: the plain BERT classifier (our encoder, all L layers, every token, the last exit head),
* **MPEE**: ``model.infer`` with real token removal and sample exits (trace building included),

at batch size 1 (one sentence at a time, as the paper) and batched, and prints
``wall speed-up = t_full / t_mpee`` next to ``ρ = Σ full FLOPs / Σ executed FLOPs`` and their ratio
(target at batch 1: wall ≥ 0.8 ρ). Both are ratios measured in the same run, so machine noise
largely cancels; each timing is the median over ``--reps`` interleaved repetitions.

    python tools/bench_mpee.py --model weights/minilm-l6 --texts $GLUE_DIR/SST-2/dev.tsv
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpee_ref.mpee import load_mpee  # noqa: E402


def read_texts(path: Path, n: int) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0].strip() for line in lines[:n]]


@torch.inference_mode()
def full_classifier(model, enc) -> torch.Tensor:
    """Plain BERT + the last exit head: what MPEE is compared against."""
    h = model.bert(enc.input_ids, enc.attention_mask, enc.token_type_ids).last_hidden_state   # (B, T, D)
    return model.exits[-1](h[:, 0])                                                          # (B, C)


def time_batches(fn, batches) -> float:
    start = time.perf_counter()
    for b in batches:
        fn(b)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "weights" / "minilm-l6"),
                    help="MPEE folder or converted encoder folder (untrained heads)")
    ap.add_argument("--texts", default=str(REPO.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"))
    ap.add_argument("-n", type=int, default=128, help="sentences (default %(default)s)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--settings", default="1.0:0.0,0.0:0.3,0.0:0.5,0.62:0.3,0.66:0.3,0.69:0.3",
                    help="comma-separated F:R_ee pairs (default %(default)s)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_mpee(args.model)
    texts = read_texts(Path(args.texts), args.n)
    tok = model.tokenizer
    singles = [tok([t]) for t in texts]
    batched = [tok(texts[i:i + args.batch_size]) for i in range(0, len(texts), args.batch_size)]
    L = model.bert_config.num_hidden_layers
    print(f"model {args.model} (L={L}), {len(texts)} sentences from {args.texts}, {args.threads} threads, "
          f"median of {args.reps} interleaved reps\n")
    print("| F | R_ee | batch | mean exit layer | mean tokens/layer | ρ (FLOPs) | full ms | MPEE ms | "
          "wall speed-up | wall / ρ |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting in args.settings.split(","):
        F, r = (float(x) for x in setting.split(":"))
        for name, batches in (("1", singles), (str(args.batch_size), batched)):
            out = [s for b in batches for s in model.infer(b, threshold=F, r_ee=r).samples]
            rho = sum(s.flops.full for s in out) / sum(s.flops.executed for s in out)
            exit_mean = statistics.mean(s.exit_layer for s in out)
            tok_mean = statistics.mean(statistics.mean(s.tokens_per_layer) for s in out)
            full_t, mpee_t = [], []
            time_batches(lambda b: full_classifier(model, b), batches[:4])       # warm-up
            time_batches(lambda b: model.infer(b, threshold=F, r_ee=r), batches[:4])
            for _ in range(args.reps):                         # interleaved: noise hits both alike
                full_t.append(time_batches(lambda b: full_classifier(model, b), batches))
                mpee_t.append(time_batches(lambda b: model.infer(b, threshold=F, r_ee=r), batches))
            tf, tm = statistics.median(full_t), statistics.median(mpee_t)
            speed = tf / tm
            print(f"| {F} | {r} | {name} | {exit_mean:.2f} | {tok_mean:.1f} | {rho:.2f} | "
                  f"{1000 * tf / len(texts):.2f} | {1000 * tm / len(texts):.2f} | {speed:.2f} | "
                  f"{speed / rho:.2f} |", flush=True)
    print("\nms columns are per sentence. wall / ρ ≥ 0.8 at batch 1 is the target.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
