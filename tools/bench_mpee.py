"""Wall-clock honesty for MPEE: the FLOPs speed-up ρ (Eq. 15) beside the measured wall-clock speed-up.

For each setting (threshold F, R_ee) it times, on the same inputs and in one process:

* **full**: the plain BERT classifier (our encoder, all L layers, every token, the last exit head),
* **MPEE**: ``model.infer`` with real token removal and sample exits (``trace=False``, as evaluation runs),

at batch size 1 (one input at a time, as the paper) and batched, and prints ``wall speed-up =
t_full / t_MPEE`` beside ``ρ = Σ full FLOPs / Σ executed FLOPs``. The two are timed in alternating passes
over the inputs (full, MPEE, then MPEE, full on the next repetition), so that load from other processes
hits both alike, and each batch counts with its fastest of ``--reps`` repetitions (load only adds time).
Every row states its target:

* batch 1, a trained model on short inputs (default: the demo model on SST-2 dev sentences, ~25 tokens,
  where a layer's time hardly depends on its token count, ``--layer-times``): wall speed-up
  ≥ 0.9 × L / (mean exit layer), the layer-skipping bound; with nothing exiting, MPEE may cost at most
  1.10 × the plain classifier (wall ≥ 1/1.10);
* batch 1, ``--random-bert-base`` (a random 768/12/3072 BERT, 12 layers, built in memory; inputs are SST-2
  dev sentences joined to 128 tokens; token exit only): wall ≥ 0.8 ρ, where compute dominates as in the paper;
* batched: wall ≥ 0.9 ρ.

    python tools/bench_mpee.py                                   # demo model, batch 1 and 32
    python tools/bench_mpee.py --random-bert-base                # bert-base shape, token exit only
    python tools/bench_mpee.py --layer-times [--random-bert-base] # what one layer / head / Eqs. 7-8 cost
    python tools/bench_mpee.py --overhead                        # batch 1, nothing exiting: where time goes
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpee_ref.config import BertConfig  # noqa: E402
from mpee_ref.io.tokenizer import load_tokenizer  # noqa: E402
from mpee_ref.mpee import MPEEConfig, MPEEModel, load_mpee  # noqa: E402
from mpee_ref.encoder.equations import padding_bias  # noqa: E402
from mpee_ref.layer_exit import eq10_classifier_memory  # noqa: E402
from mpee_ref.token_exit import prune_tokens  # noqa: E402

DEMO_SETTINGS = "0:0,0:0.3,0.3:0,0.3:0.3,0.4:0.3,0.5:0.5,0.6:0.5"
BASE_SETTINGS = "0:0.3,0:0.5,0:0.7"                                  # F = 0: token exit only
BERT_BASE = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072)


@dataclass(frozen=True)
class Row:
    """One measured setting."""

    threshold: float
    r_ee: float
    batch: int
    mean_exit: float
    mean_tokens: float
    rho: float
    full_s: float
    mpee_s: float
    target_name: str
    target: float

    @property
    def speed(self) -> float:
        return self.full_s / self.mpee_s


def read_texts(path: Path, n: int, min_tokens: int, tokenizer: Any) -> list[str]:
    """``n`` texts from a GLUE tsv (first column); with ``min_tokens`` > 0 consecutive sentences are
    joined until a text has that many tokens (the tokenizer then truncates to its max_length)."""
    lines = [line.split("\t")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    texts, i = [], 0
    while len(texts) < n:
        parts = [lines[i % len(lines)]]
        i += 1
        while min_tokens and int(tokenizer([" ".join(parts)]).attention_mask.sum()) < min_tokens:
            parts.append(lines[i % len(lines)])
            i += 1
        texts.append(" ".join(parts))
    return texts


def random_bert_base(vocab_folder: Path, seed: int) -> MPEEModel:
    """A random bert-base-shaped MPEE model (untrained heads), with ``vocab_folder``'s tokenizer."""
    torch.manual_seed(seed)
    model = MPEEModel(BERT_BASE, MPEEConfig(num_labels=2)).eval()
    model.tokenizer = load_tokenizer(vocab_folder, max_length=128)
    return model


@torch.inference_mode()
def full_classifier(model: MPEEModel, enc: Any) -> torch.Tensor:
    """Plain BERT + the last exit head: what MPEE is compared against."""
    h = model.bert(enc.input_ids, enc.attention_mask, enc.token_type_ids).last_hidden_state   # (B, T, D)
    return model.exits[-1](h[:, 0])                                                          # (B, C)


def interleaved(fns: list[Callable], batches: list, reps: int) -> list[float]:
    """Seconds of each of ``fns`` over all batches. Each repetition runs one pass of each function over the
    batches (in turn, reversed every other repetition: ABBA); each batch counts with its fastest time over the repetitions
    (other processes only ever add time). Passes, not single batches, alternate: at batch 1 the layers
    are bound by reading their weights, so what ran just before decides what is in the cache, and each
    method is timed in a stream of its own calls, as it would be served."""
    times = [[math.inf] * len(batches) for _ in fns]
    for rep in range(reps):
        for k in (range(len(fns)) if rep % 2 == 0 else reversed(range(len(fns)))):
            for i, b in enumerate(batches):
                start = time.perf_counter()
                fns[k](b)
                times[k][i] = min(times[k][i], time.perf_counter() - start)
    return [sum(t) for t in times]


def target(kind: str, batch: int, rho: float, L: int, mean_exit: float, exits: bool) -> tuple[str, float]:
    """The issue's target for one row: (its formula, its value); ``exits``: any token or sample exits."""
    if batch > 1:
        return "0.9 ρ", 0.9 * rho
    if kind == "bert-base":
        return "0.8 ρ", 0.8 * rho
    if not exits:
        return "1/1.10", 1 / 1.10
    return "0.9 L/exit", 0.9 * L / mean_exit


def measure(model: MPEEModel, batches: list, F: float, r: float, reps: int, kind: str) -> Row:
    out = [s for b in batches for s in model.infer(b, threshold=F, r_ee=r).samples]
    rho = sum(s.flops.full for s in out) / sum(s.flops.executed for s in out)
    mean_exit = statistics.mean(s.exit_layer for s in out)
    L = model.bert_config.num_hidden_layers
    full = lambda b: full_classifier(model, b)                         # noqa: E731
    mpee = lambda b: model.infer(b, threshold=F, r_ee=r)               # noqa: E731
    interleaved([full, mpee], batches[:2], 1)                          # warm-up
    tf, tm = interleaved([full, mpee], batches, reps)
    exits = any(s.exit_layer < L or min(s.tokens_per_layer) < len(s.input_ids) for s in out)
    name, value = target(kind, batches[0].input_ids.shape[0], rho, L, mean_exit, exits)
    return Row(F, r, batches[0].input_ids.shape[0], mean_exit,
               statistics.mean(statistics.mean(s.tokens_per_layer) for s in out), rho, tf, tm, name, value)


@torch.inference_mode()
def layer_times(model: MPEEModel, reps: int) -> None:
    """Batch-1 cost of the pieces: one encoder layer (mean over the L different layers, so that their
    weights are read from memory as in a forward) at several token counts, one exit head, Eqs. 7-8."""
    D = model.bert_config.hidden_size

    def best(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1000 * min(times)

    def all_layers(h: torch.Tensor) -> None:
        for layer in model.bert.layers:
            layer.ffn_sublayer(layer.attention_sublayer(h, None)[0])

    def all_heads(h_cls: torch.Tensor) -> None:
        for head in model.exits:
            head(h_cls)

    L = len(model.bert.layers)
    for T in (128, 64, 40, 25, 13, 5, 1):
        print(f"| encoder layer, {T} tokens | {best(lambda: all_layers(torch.randn(1, T, D))) / L:.2f} |")
    print(f"| exit head | {best(lambda: all_heads(torch.randn(1, D))) / L:.3f} |")
    h, mask, memory = torch.randn(1, 26, D), torch.ones(1, 26, dtype=torch.long), torch.rand(1, 25)
    mask[0, -1], memory[0, -1] = 0, 0.0                                # one padded position: the general path
    print(f"| prune_tokens (Eqs. 7-8), 25 tokens, R_ee 0.5 | "
          f"{best(lambda: prune_tokens(h[:, :25], mask[:, :25], memory[:, :24], 0.5)):.3f} |")
    print(f"| the same, one padded position (general path) | {best(lambda: prune_tokens(h, mask, memory, 0.5)):.3f} |")


@torch.inference_mode()
def overhead(model: MPEEModel, batches: list, reps: int) -> None:
    """Where the time goes when nothing exits: the plain classifier, the same layers with an exit head
    (Eq. 9) after every layer, with the classifier memory (Eq. 10) as well, and ``infer`` (F = 0, R_ee = 0,
    which adds the input checks, the bookkeeping and the result records), in alternating passes."""
    L, lam = len(model.bert.layers), model.mpee_config.effective_lam

    def every_layer_heads(b: Any, memory: bool) -> torch.Tensor:
        h = model.bert.embeddings(b.input_ids, b.token_type_ids)                      # (B, T, D)
        bias, c_zm = padding_bias(b.attention_mask, h.dtype), None
        for l in range(L):
            layer = model.bert.layers[l]
            h = layer.ffn_sublayer(layer.attention_sublayer(h, bias)[0])             # (B, T, D)
            c_z = model.exits[l](h[:, 0])                                             # (B, C)
            c_zm = eq10_classifier_memory(c_zm, c_z, lam) if memory else c_z          # (B, C)
        return c_zm

    steps = [("plain classifier", lambda b: full_classifier(model, b)),
             ("+ an exit head after every layer (Eq. 9)", lambda b: every_layer_heads(b, False)),
             ("+ the classifier memory (Eq. 10)", lambda b: every_layer_heads(b, True)),
             ("`model.infer`, F = 0, R_ee = 0", lambda b: model.infer(b, threshold=0.0, r_ee=0.0))]
    interleaved([f for _, f in steps], batches[:2], 1)                              # warm-up
    times = interleaved([f for _, f in steps], batches, reps)
    print("| batch 1, nothing exiting | ms per input | × plain |\n|---|---:|---:|")
    for (name, _), t in zip(steps, times):
        print(f"| {name} | {1000 * t / len(batches):.2f} | {t / times[0]:.3f} |")


def print_row(row: Row, L: int, n: int) -> None:
    print(f"| {row.threshold:g} | {row.r_ee:g} | {row.batch} | {row.mean_exit:.2f} | {L / row.mean_exit:.2f} | "
          f"{row.mean_tokens:.1f} | {row.rho:.2f} | {1000 * row.full_s / n:.2f} | {1000 * row.mpee_s / n:.2f} | "
          f"{row.speed:.2f} | {row.speed / row.rho:.2f} | {row.target_name} = {row.target:.2f} | "
          f"{row.speed / row.target:.2f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "weights" / "mpee-minilm-sst2"),
                    help="MPEE folder or converted encoder folder (default %(default)s)")
    ap.add_argument("--random-bert-base", action="store_true",
                    help="a random 768/12/3072 BERT instead of --model, on 128-token inputs, token exit only")
    ap.add_argument("--vocab", default=str(REPO / "weights" / "minilm-l6"),
                    help="folder with the vocab.txt of --random-bert-base (default %(default)s)")
    ap.add_argument("--texts", default=str(REPO.parent / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"))
    ap.add_argument("-n", type=int, default=None, help="inputs (default 64; 8 with --random-bert-base)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 3 with --random-bert-base)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,32; 1 with --random-bert-base)")
    ap.add_argument("--settings", default=None,
                    help=f"comma-separated F:R_ee pairs (default {DEMO_SETTINGS}; {BASE_SETTINGS} with "
                         f"--random-bert-base)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overhead", action="store_true",
                    help="instead: batch-1 time of the plain classifier, + a head per layer, + Eq. 10, and infer")
    ap.add_argument("--layer-times", action="store_true",
                    help="instead: ms at batch 1 of one encoder layer at several token counts, an exit head, Eqs. 7-8")
    args = ap.parse_args()
    base = args.random_bert_base
    n, reps = args.n or (8 if base else 64), args.reps or (3 if base else 5)
    sizes = [int(x) for x in (args.batch_sizes or ("1" if base else "1,32")).split(",")]
    torch.set_num_threads(args.threads)
    model = random_bert_base(Path(args.vocab), args.seed) if base else load_mpee(args.model)
    print(f"$ python {' '.join(shlex.quote(a) for a in sys.argv)}")
    if args.layer_times:
        print(f"{'random bert-base' if base else args.model}, {args.threads} threads, fastest of {reps * 4} runs\n")
        print("| batch 1 | ms |\n|---|---:|")
        layer_times(model, reps * 4)
        return 0
    texts = read_texts(Path(args.texts), n, 128 if base else 0, model.tokenizer)
    if args.overhead:
        print(f"{'random bert-base' if base else args.model}, {n} inputs, {args.threads} threads, "
              f"fastest of {reps}\n")
        overhead(model, [model.tokenizer([t]) for t in texts], reps)
        return 0
    L = model.bert_config.num_hidden_layers
    print(f"{'random bert-base (768/12/3072)' if base else args.model} (L={L}), {n} inputs "
          f"({'SST-2 dev sentences joined to 128 tokens' if base else args.texts}), {args.threads} threads, "
          f"torch {torch.__version__}, passes alternating, fastest of {reps} per batch, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print("| F | R_ee | batch | mean exit layer | L / mean exit | mean tokens/layer | ρ (FLOPs) | full ms | "
          "MPEE ms | wall speed-up | wall / ρ | target | wall / target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    missed = 0
    for size in sizes:
        batches = [model.tokenizer(texts[i:i + size]) for i in range(0, len(texts), size)]
        for setting in (args.settings or (BASE_SETTINGS if base else DEMO_SETTINGS)).split(","):
            F, r = (float(x) for x in setting.split(":"))
            row = measure(model, batches, F, r, reps, "bert-base" if base else "trained")
            print_row(row, L, len(texts))
            missed += row.speed < row.target
    print(f"\nms columns are per input. {missed} row(s) below target.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
