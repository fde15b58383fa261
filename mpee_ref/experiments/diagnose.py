r"""``python -m mpee_ref diagnose``: is every exit head alive? Per-layer health of a trained MPEE model.

With token and layer exits off (every sample runs every layer, nothing pruned), for each layer l:

* ``metric``: the task metric of softmax(C_zm^l), the classifier memory the exit test reads (Eq. 10);
  ``head_metric``: the same for the head's own logits C_z^l (Eq. 9);
* ``mean_entropy``: mean entropy (nats) of softmax(C_zm^l), the quantity compared with F; a head stuck
  near ln C never lets a sample exit;
* ``logit_spread``: how much the head's output varies across the split: the standard deviation over
  samples of the centred logits :math:`C_z^l - \mathrm{mean}_c C_z^l`, averaged over classes (a constant
  head has 0);
* ``majority_share``: the share of samples given the most frequent prediction (1.0 = constant);
* ``eta``: the teacher weight η^l of Eq. 12, averaged over samples (uniform = 1/L);
* ``dead``: ``majority_share >= 0.99`` or ``logit_spread < 0.01``;
* the conditioning of the head's input h_CLS^l across the split (why a head can be dead):
  ``cls_cosine`` (mean cosine similarity between two samples' [CLS] vectors), ``cls_feature_std``
  (median over features of the standard deviation across samples) and ``cls_max_abs_mean`` (largest
  |mean| of a feature). A cosine near 1 with a tiny feature spread beside large means is the case the
  ``head_norm`` recipe (docs L10) is for.

This is the first thing to run after fine-tuning MPEE on a new backbone (docs/RESULTS.md shows why:
on MiniLM-L6 the paper's recipe leaves the heads of layers 1-3 constant).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..data import compute_metrics, get_task
from ..io.atomic import atomic_text
from ..layer_exit import exit_entropy
from ..mpee import MPEEModel
from .batching import EncodedDataset, collate
from .flags import add_flags, command_parser, from_flags
from .loading import SplitArgs, load_split

DEAD_MAJORITY, DEAD_SPREAD = 0.99, 0.01


@dataclass(frozen=True)
class LayerHealth:
    """One exit head's health on a split (see the module doc for each field)."""

    layer: int                      # l, 1-based
    metric: dict[str, float]        # task metric of softmax(C_zm^l), the exit test's input (Eq. 10)
    head_metric: dict[str, float]   # the same for the head's own logits C_z^l (Eq. 9)
    mean_entropy: float             # nats; compared with F
    logit_spread: float             # 0 for a constant head
    majority_share: float           # 1.0 = one prediction for every sample
    eta: float                      # mean teacher weight η^l (Eq. 12)
    dead: bool                      # majority_share >= DEAD_MAJORITY or logit_spread < DEAD_SPREAD
    cls_cosine: float               # mean cosine between two samples' h_CLS^l
    cls_feature_std: float          # median over features of the std across samples
    cls_max_abs_mean: float         # largest |mean| of a feature


@torch.no_grad()
def layer_outputs(model: MPEEModel, data: EncodedDataset, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Every layer's C_z, C_zm, the teacher's η and h_CLS over ``data``, exits off: ``logits``/``memories``
    ``(L, N, C)``, ``eta`` ``(N, L)``, ``cls`` ``(L, N, D)``."""
    cfg = replace(model.mpee_config, token_exit=False, layer_exit=False)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, memories, eta, cls = [], [], [], []
    try:
        for start in range(0, len(data), batch_size):
            batch = collate(data, range(start, min(start + batch_size, len(data))), model.bert_config.pad_token_id)
            out = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                        batch["token_type_ids"].to(device), config=cfg)
            logits.append(out.logits.cpu())                                   # (L, B, C)
            memories.append(out.memories.cpu())                               # (L, B, C)
            eta.append(model.teacher(out.memories)[1].cpu())                  # (B, L)
            hidden = model.bert(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                batch["token_type_ids"].to(device), output_hidden_states=True).hidden_states
            cls.append(torch.stack([h[:, 0] for h in hidden[1:]]).cpu())      # (L, B, D)
    finally:
        model.train(was_training)
    return {"logits": torch.cat(logits, 1), "memories": torch.cat(memories, 1), "eta": torch.cat(eta, 0),
            "cls": torch.cat(cls, 1)}


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine similarity over the N(N-1) ordered pairs of distinct rows of ``x`` (N, D), N >= 2."""
    u = torch.nn.functional.normalize(x.double(), dim=-1)                     # (N, D)
    n = u.shape[0]
    return float((u.sum(0).pow(2).sum() - n) / (n * (n - 1)))


def layer_health(outputs: dict[str, torch.Tensor], labels: list[int], task: str) -> list[LayerHealth]:
    """:class:`LayerHealth` per layer from :func:`layer_outputs`."""
    spec = get_task(task)
    out = []
    for l, (z, zm) in enumerate(zip(outputs["logits"], outputs["memories"]), start=1):   # (N, C) each
        preds = zm.argmax(-1)                                                  # (N,)
        centred = z - z.mean(-1, keepdim=True)                                 # (N, C)
        majority = float(torch.bincount(preds, minlength=z.shape[1]).max()) / len(preds)
        spread = float(centred.std(0, unbiased=False).mean())
        out.append(LayerHealth(
            layer=l, metric=compute_metrics(spec, preds.tolist(), labels),
            head_metric=compute_metrics(spec, z.argmax(-1).tolist(), labels),
            mean_entropy=float(exit_entropy(zm).mean()), logit_spread=spread, majority_share=majority,
            eta=float(outputs["eta"][:, l - 1].mean()),
            dead=majority >= DEAD_MAJORITY or spread < DEAD_SPREAD,
            cls_cosine=mean_pairwise_cosine(outputs["cls"][l - 1]),
            cls_feature_std=float(outputs["cls"][l - 1].std(0, unbiased=False).median()),
            cls_max_abs_mean=float(outputs["cls"][l - 1].mean(0).abs().max())))
    return out


def plot_health(health: list[LayerHealth], metric: str, num_labels: int, path: str | Path) -> Path:
    """Two panels: each layer's metric (memory and head) and its mean entropy against ln C."""
    from .figures import _pyplot, _save

    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.3))
    x = [h.layer for h in health]
    a.bar([i - 0.2 for i in x], [h.metric[metric] for h in health], 0.4, label="C_zm (memory)")
    a.bar([i + 0.2 for i in x], [h.head_metric[metric] for h in health], 0.4, label="C_z (head)")
    a.set_xticks(x)
    a.set_xlabel("layer")
    a.set_ylabel(metric)
    a.set_ylim(0, 1)
    a.legend(fontsize=7)
    a.set_title("exit heads, exits off", fontsize=9)
    b.plot(x, [h.mean_entropy for h in health], "o-")
    b.axhline(math.log(num_labels), color="grey", linestyle="--", label=f"ln {num_labels} (uniform)")
    b.set_xticks(x)
    b.set_xlabel("layer")
    b.set_ylabel("mean entropy of softmax(C_zm) (nats)")
    b.set_ylim(0, 1.05 * math.log(num_labels))
    b.legend(fontsize=7)
    for h in health:
        if h.dead:
            a.annotate("dead", (h.layer, 0.02), ha="center", fontsize=7, color="red")
    return _save(fig, path)


# ============================================================================ CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = command_parser(subparsers, "diagnose", "per-layer health of the exit heads (metric, entropy, spread, eta)",
                       __doc__)
    add_flags(p, SplitArgs)
    p.add_argument("--out", default=None, help="folder for diagnose.json and diagnose.png")
    return p


def run(args: argparse.Namespace) -> int:
    """The ``diagnose`` command; ValueError/OSError reach ``__main__`` (one line, exit 2)."""
    loaded = load_split(from_flags(SplitArgs, args))
    spec, data = loaded.spec, loaded.data
    health = layer_health(layer_outputs(loaded.model, data, args.batch_size), list(data.labels), spec.name)
    result = {"model": str(args.model), "task": spec.name, "split": args.split, "n_examples": len(data),
              "uniform_eta": 1.0 / len(health), "layers": [asdict(h) for h in health]}
    text = json.dumps(result, indent=2)
    print(text)
    metric = next(iter(health[0].metric))
    for h in health:
        flag = "  DEAD: constant output, no sample can exit here" if h.dead else ""
        print(f"layer {h.layer}: {metric} {h.metric[metric]:.4f} (head {h.head_metric[metric]:.4f}) | entropy "
              f"{h.mean_entropy:.3f} | spread {h.logit_spread:.3g} | majority {h.majority_share:.2f} | "
              f"eta {h.eta:.3f} | h_CLS cosine {h.cls_cosine:.4f}, feature std {h.cls_feature_std:.3g}, "
              f"max |mean| {h.cls_max_abs_mean:.3g}{flag}", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        atomic_text(out / "diagnose.json", text + "\n")
        from .figures import have_matplotlib
        if have_matplotlib():
            plot_health(health, metric, spec.num_labels, out / "diagnose.png")
        else:
            print("note: matplotlib not installed; diagnose.png not drawn", file=sys.stderr)
    return 0
