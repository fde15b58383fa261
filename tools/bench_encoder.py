"""Benchmark: mpee_ref ``BertEncoder`` vs HF ``transformers.BertModel`` (eager attention), same weights.

Both models run in one process, interleaved (ours/HF alternate per repetition, and which of the two
goes first alternates too), after a warm-up, under ``torch.inference_mode()`` with a fixed number of
intra-op threads (2 by default, the project's CPU budget). Each setting reports the median of ``--reps``
repetitions; ratio = ours / HF (target <= 1.05).

Weights, in order of preference:
  * ``--weights DIR`` (default ``weights/minilm-l6``, the converted MiniLM-L6 checkpoint) loaded with
    ``mpee_ref.io.load_encoder``;
  * if that folder is absent, or with ``--random-minilm``, a random MiniLM-shaped model (6 x 384, 12 heads,
    FFN 1536, vocab 30522) built with our ``BertEncoder``;
  * ``--random-bert-base``: a random bert-base-shaped model (12 x 768, 12 heads, FFN 3072).
Our state dict is then copied into HF with ``load_state_dict(strict=True)`` and the two outputs are
compared once before timing (so the benchmark cannot compare different computations).

Usage:
  python tools/bench_encoder.py                         # MiniLM weights, batch 1/32 x length 16/64/128
  python tools/bench_encoder.py --random-bert-base --reps 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpee_ref import BertConfig, BertEncoder  # noqa: E402

MINILM = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536)
BERT_BASE = BertConfig()


def build_models(args: argparse.Namespace) -> tuple[BertEncoder, torch.nn.Module, str]:
    import transformers

    torch.manual_seed(args.seed)
    weights = Path(args.weights)
    if args.random_bert_base:
        ours, source = BertEncoder(BERT_BASE), "random bert-base-shaped (12 x 768, 12 heads, FFN 3072)"
    elif args.random_minilm or not (weights / "model.safetensors").exists():
        ours, source = BertEncoder(MINILM), "random MiniLM-shaped (6 x 384, 12 heads, FFN 1536)"
    else:
        from mpee_ref.io import load_encoder
        ours, source = load_encoder(weights), f"{weights} (mpee_ref.io.load_encoder)"
    ours = ours.float().eval()
    hf_cfg = transformers.BertConfig(**{k: v for k, v in ours.config.to_dict().items() if k != "model_type"})
    hf_cfg._attn_implementation = "eager"
    hf = transformers.BertModel(hf_cfg).eval()
    hf.config._attn_implementation = "eager"
    hf.load_state_dict(ours.state_dict(), strict=True)
    return ours, hf, source


def make_inputs(cfg: BertConfig, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, cfg.vocab_size, (batch, length), generator=gen)   # (B, T)
    ids[:, 0] = 101                                                               # [CLS]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids)}


def run_ours(model: BertEncoder, x: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(x["input_ids"], x["attention_mask"], x["token_type_ids"]).last_hidden_state


def run_hf(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**x).last_hidden_state


def time_once(fn, model, x) -> float:
    t0 = time.perf_counter()
    fn(model, x)
    return (time.perf_counter() - t0) * 1e3


def bench_setting(ours, hf, x, reps: int, warmup: int) -> tuple[list[float], list[float]]:
    """Per-repetition times (ms) of ours and HF; the order within a repetition alternates."""
    for _ in range(warmup):
        run_ours(ours, x)
        run_hf(hf, x)
    t_ours, t_hf = [], []
    for r in range(reps):
        if r % 2 == 0:
            t_ours.append(time_once(run_ours, ours, x))
            t_hf.append(time_once(run_hf, hf, x))
        else:
            t_hf.append(time_once(run_hf, hf, x))
            t_ours.append(time_once(run_ours, ours, x))
    return t_ours, t_hf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(REPO / "weights" / "minilm-l6"),
                    help="converted checkpoint folder (default: weights/minilm-l6)")
    ap.add_argument("--random-minilm", action="store_true", help="random MiniLM-shaped weights")
    ap.add_argument("--random-bert-base", action="store_true", help="random 768/12/3072 weights")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per model and setting")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per model and setting")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        raise ValueError(f"--reps must be >= 1 and --warmup >= 0, got {args.reps} and {args.warmup}")

    import transformers

    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        ours, hf, source = build_models(args)
        x = make_inputs(ours.config, 2, 16, args.seed)
        diff = (run_ours(ours, x) - run_hf(hf, x)).abs().max().item()
        if diff > 1e-4:
            raise RuntimeError(f"ours and HF disagree before timing: max |diff| = {diff:.3g}")
        print(f"# BertEncoder vs HF BertModel (eager), same weights: {source}")
        print(f"# command: python {' '.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
        print(f"# torch {torch.__version__}, transformers {transformers.__version__}, "
              f"python {platform.python_version()}, threads {torch.get_num_threads()}, "
              f"reps {args.reps} (median), warm-up {args.warmup}, fp32, inference_mode; "
              f"pre-check max |diff| = {diff:.2e}")
        print()
        print(f"Median over {args.reps} repetitions:")
        print()
        print("| setting | ours ms | HF ms | ratio ours/HF |")
        print("|---|---:|---:|---:|")
        mins = []
        for batch in args.batches:
            for length in args.lengths:
                x = make_inputs(ours.config, batch, length, args.seed)
                t_ours, t_hf = bench_setting(ours, hf, x, args.reps, args.warmup)
                med_ours, med_hf = statistics.median(t_ours), statistics.median(t_hf)
                print(f"| batch {batch}, length {length} | {med_ours:.2f} | {med_hf:.2f} | "
                      f"{med_ours / med_hf:.3f} |", flush=True)
                mins.append((batch, length, min(t_ours), min(t_hf)))
        # The fastest repetition is the one least disturbed by other processes: on a shared machine
        # its ratio is the more reliable of the two.
        print()
        print("Fastest repetition (min over reps):")
        print()
        print("| setting | ours ms | HF ms | ratio ours/HF |")
        print("|---|---:|---:|---:|")
        for batch, length, m_ours, m_hf in mins:
            print(f"| batch {batch}, length {length} | {m_ours:.2f} | {m_hf:.2f} | {m_ours / m_hf:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
