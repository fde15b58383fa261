"""``python -m mpee_ref demo ["some text" ...]``: watch MPEE work, layer by layer.

For each input it prints which tokens each layer keeps (as words) and which it fuses into the EE-fusion
token (with their α weights, Eq. 8), the entropy of the classifier memory against the threshold F
(Eqs. 9-10), the exit decision, the prediction, and the FLOPs executed against the full model's (Eq. 15).

The default model is the fine-tuned SST-2 MPEE model committed under ``weights/mpee-minilm-sst2``
(MiniLM-L6 backbone; see its MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..mpee.model import fused_layer, is_fused
from .flags import resolve_device
from .options import check_cli_numbers

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "weights" / "mpee-minilm-sst2"
EXAMPLES = (
    "a gorgeous , witty , seductive movie .",
    "the plot is nothing but boilerplate clichés from start to finish , and the script assumes that "
    "not only have you never seen a movie , but you have never heard of one either .",
    "it 's not a great film , but it is a watchable one , with some genuinely funny moments .",
    "an utterly incompetent conclusion to a trilogy that started out so promisingly .",
)
NAME = "demo"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(NAME, help="trace MPEE's token and layer exits on some text",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="text(s) to classify (default: built-in SST-2 style examples)")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="MPEE model folder (default: %(default)s)")
    p.add_argument("-F", "--threshold", type=float, default=None,
                   help="entropy threshold F in nats (default: the model's)")
    p.add_argument("--r-ee", type=float, default=None, help="token exit ratio R_ee (default: the model's)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="torch device for the model and the encoded texts: cpu, cuda, cuda:1, mps (default: %(default)s)")


def _label_names(folder: Path, num_labels: int) -> list[str]:
    path = folder / "task.json"
    if path.exists():
        try:
            task = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        names = task.get("label_names") if isinstance(task, dict) else None
        if not (names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))):
            raise ValueError(f"{path}: label_names must be a list of strings, got {names!r}")
        if names and len(names) == num_labels:
            return list(names)
    return [f"class {c}" for c in range(num_labels)]


def _token(tokens: list[str], code: int) -> str:
    """A trace position code as text: the word, or ``<fused@l>`` for the fusion token made at layer l."""
    return f"<fused@{fused_layer(code)}>" if is_fused(code) else tokens[code]


def _words(tokens: list[str], positions, limit: int = 28) -> str:
    shown = [_token(tokens, p) for p in positions]
    return " ".join(shown[:limit]) + (f" … (+{len(shown) - limit})" if len(shown) > limit else "")


def trace_text(model, text: str, threshold: float | None, r_ee: float | None) -> str:
    """Run MPEE on one text and render its layer-by-layer trace."""
    from ..flops import eq15_speedup

    cfg = model.mpee_config
    F = cfg.threshold if threshold is None else threshold
    start = time.perf_counter()
    s = model.infer([text], threshold=threshold, r_ee=r_ee, trace=True).samples[0]
    ms = 1000 * (time.perf_counter() - start)
    tokens = model.tokenizer.decode_tokens(list(s.input_ids))
    names = _label_names(Path(getattr(model, "source_folder", DEFAULT_MODEL)), cfg.num_labels)
    out = [f'\n"{text}"', f"  {len(tokens)} tokens: {_words(tokens, range(len(tokens)))}"]
    out.append(f"  {'layer':>5} {'tokens':>9} {'entropy':>8}  vs F={F:.2f}  decision")
    for t in s.layers:
        decision = "EXIT" if t.exited else "continue"
        out.append(f"  {t.layer:>5} {t.n_att:>4}→{t.n_ffn:<4} {t.entropy:>8.3f}  "
                   f"{'<' if t.entropy < F else '≥'} F        {decision}")
        if t.fused_positions:
            fused = ", ".join(f"{_token(tokens, p)} ({w:.3f})" for p, w in zip(t.fused_positions, t.fused_weights))
            verb = "dropped" if model.mpee_config.fusion == "drop" else f"fused into <fused@{t.layer}> (α)"
            out.append(f"        {verb}: {fused}")
            out.append(f"        kept: {_words(tokens, t.positions)}")
    probs = ", ".join(f"{names[c]} {p:.3f}" for c, p in enumerate(s.probabilities))
    out.append(f"  → {names[s.prediction]} at layer {s.exit_layer}/{len(model.exits)}  ({probs})")
    rho = eq15_speedup([s.flops.full], [s.flops.executed])
    out.append(f"  FLOPs: executed {s.flops.executed / 1e6:.2f} M, full model {s.flops.full / 1e6:.2f} M "
               f"→ ρ = {rho:.2f}×   (wall {ms:.1f} ms)")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from ..mpee import load_mpee

    check_cli_numbers(args.threads)
    folder = Path(args.model)
    if not (folder / "mpee_config.json").exists():
        raise FileNotFoundError(f"{folder}: not an MPEE model folder (no mpee_config.json); train one with "
                                f"`python -m mpee_ref train` or pass --model")
    model = load_mpee(folder).to(resolve_device(args.device))       # infer() puts the encoded texts on the model's device
    model.source_folder = folder
    cfg = model.mpee_config
    prune = cfg.prune_layer_set(model.bert_config.num_hidden_layers)
    print(f"MPEE demo — model {folder}")
    print(f"  F = {cfg.threshold if args.threshold is None else args.threshold} nats, "
          f"R_ee = {cfg.r_ee if args.r_ee is None else args.r_ee} "
          f"({'fraction of tokens that exit' if cfg.r_ee_means == 'exit' else 'fraction kept'}) at layers "
          f"{', '.join(map(str, prune)) or 'none'}, β = {cfg.beta}, λ = {cfg.lam}, "
          f"{model.bert_config.num_hidden_layers} layers")
    for text in args.texts or EXAMPLES:
        print(trace_text(model, text, args.threshold, args.r_ee))
    return 0
