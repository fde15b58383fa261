r"""The data behind the paper's Figures 1, 3, 4 and 5, and (optionally) their plots.

Every ``figN_*`` function returns plain numbers (lists/dicts, JSON-serialisable) and needs no plotting
library; the ``plot_*`` functions draw them with matplotlib, which is the optional ``plot`` extra
(``pip install mpee_ref[plot]``). :func:`have_matplotlib` says whether it is importable.

* **Fig. 1** (§1, "Tokens (cosine similarity) of different layers"): the mean pairwise cosine similarity
  of the real (non-padding) tokens' hidden states, per layer, averaged over sentences. Computed with the
  plain encoder (``model.bert(..., output_hidden_states=True)``): no token or sample exits.
  Our choices (the paper gives no formula): every ordered pair i != j of real tokens, [CLS] and [SEP]
  included; index 0 of the result is the embedding output h^0, index l is layer l; a sentence with fewer
  than two tokens has no pair and is left out of the average.
* **Fig. 3** (§4.7): metric against ρ, one curve per R_ee, points labelled by F (from a sweep).
* **Fig. 4** (§4.7): samples per exit layer at one operating point (from a sweep point).
* **Fig. 5** (§4.7): keeping the top-m vs the bottom-m class-attention tokens (``token_select``), with
  ``layer_exit=False`` so that only the choice of tokens differs, one point per R_ee.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..mpee import MPEEModel
from ..mpee.model import is_fused
from .batching import EncodedDataset, collate
from .evaluate import run_inference, summarize


def have_matplotlib() -> bool:
    """Whether the optional plotting dependency (extra ``plot``) is importable."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# ============================================================================ Fig. 1
def mean_pairwise_cosine(hidden: Tensor, mask: Tensor) -> Tensor:
    r"""Fig. 1's token redundancy: the mean cosine similarity over pairs of real tokens, per sentence.

    .. math:: s = \frac{1}{N(N-1)} \sum_{i \ne j} \frac{h_i \cdot h_j}{\lVert h_i\rVert \lVert h_j\rVert}

    Args:
        hidden: ``(B, T, D)`` hidden states of one layer.
        mask: ``(B, T)`` 1 for real tokens, 0 for padding.
    Returns:
        ``(B,)`` the mean over ordered pairs i != j of real tokens; NaN where a row has < 2 real tokens.
        A zero vector has cosine 0 with everything.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden: expected (B, T, D), got shape {tuple(hidden.shape)}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask: expected shape (B, T) = {tuple(hidden.shape[:2])}, got {tuple(mask.shape)}")
    m = mask.to(hidden.dtype)                                                      # (B, T)
    unit = hidden / hidden.norm(dim=-1, keepdim=True).clamp_min(1e-12)             # (B, T, D)
    cos = unit @ unit.transpose(1, 2)                                              # (B, T, T)
    pair = m[:, :, None] * m[:, None, :]                                           # (B, T, T)
    pair = pair * (1 - torch.eye(hidden.shape[1], dtype=hidden.dtype, device=hidden.device))  # i != j
    n_pairs = pair.sum((1, 2))                                                     # (B,)
    total = (cos * pair).sum((1, 2))                                               # (B,)
    return torch.where(n_pairs > 0, total / n_pairs.clamp_min(1), torch.full_like(total, math.nan))  # (B,)


@torch.inference_mode()
def fig1_token_similarity(model: MPEEModel, data: EncodedDataset, batch_size: int = 32) -> list[float]:
    """Per layer (0 = embeddings, l = layer l), the mean pairwise cosine similarity of real tokens,
    averaged over the sentences of ``data`` that have at least two tokens (plain encoder, no exits)."""
    if len(data) == 0:
        raise ValueError("data: expected at least one example, got none")
    was_training = model.training
    model.eval()
    L = model.bert_config.num_hidden_layers
    device = next(model.parameters()).device
    sums, count = [0.0] * (L + 1), 0
    try:
        for start in range(0, len(data), batch_size):
            batch = collate(data, range(start, min(start + batch_size, len(data))), model.bert_config.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}                   # the model's device
            out = model.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                             output_hidden_states=True)
            keep = batch["attention_mask"].sum(1) >= 2                             # (B,)
            for l, h in enumerate(out.hidden_states):                              # h: (B, T, D)
                sums[l] += float(mean_pairwise_cosine(h, batch["attention_mask"])[keep].sum())
            count += int(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("data: no example has two or more tokens; Fig. 1 needs token pairs")
    return [s / count for s in sums]


# ============================================================================ Figs. 3 and 4
def fig3_curves(points: Sequence[Mapping[str, Any]], metric: str) -> dict[str, list[dict[str, float]]]:
    """Sweep points grouped by R_ee (key ``str(r_ee)``), each curve sorted by F: ``{"rho", "metric", "threshold"}``."""
    curves: dict[str, list[dict[str, float]]] = {}
    for p in points:
        curves.setdefault(str(p["r_ee"]), []).append(
            {"threshold": p["threshold"], "rho": p["rho"], "metric": p["metrics"][metric]})
    return {k: sorted(v, key=lambda d: d["threshold"]) for k, v in curves.items()}


def choose_fig4_point(points: Sequence[Mapping[str, Any]], metric: str, tolerance: float = 0.01) -> int:
    """Index of the point with the highest ρ among those within ``tolerance`` (0.01 = one accuracy
    point) of the best ``metric``; ties go to the earlier point."""
    if not points:
        raise ValueError("points: expected at least one sweep point, got none")
    best = max(p["metrics"][metric] for p in points)
    ok = [i for i, p in enumerate(points) if p["metrics"][metric] >= best - tolerance]
    return max(ok, key=lambda i: (points[i]["rho"], -i))


def fig4_exit_distribution(point: Mapping[str, Any], num_layers: int) -> list[int]:
    """Samples per exit layer (index l-1 = layer l) of one sweep/evaluation result."""
    counts = point["exit_layer_counts"]
    return [int(counts.get(str(l), 0)) for l in range(1, num_layers + 1)]


# ============================================================================ Fig. 5
def kept_input_tokens(positions: Sequence[int]) -> set[int]:
    """The input tokens among a trace's position codes (:func:`~mpee_ref.mpee.model.is_fused` codes,
    the EE-fusion tokens of any layer, left out)."""
    return {p for p in positions if not is_fused(p)}


def fig5_token_select(model: MPEEModel, data: EncodedDataset, task: str, r_ees: Sequence[float],
                      batch_size: int = 32, max_seq_length: int = 128) -> dict[str, Any]:
    """Top-m vs bottom-m class-attention tokens kept, per R_ee, with ``layer_exit=False``.

    Returns ``{"r_ee": [...], "top": [result...], "bottom": [result...], "kept_overlap": [...]}``, where
    each result holds ``metrics``, ``rho`` and ``mean_tokens_per_layer``, and ``kept_overlap`` is, per
    R_ee, the mean over samples of |kept_top ∩ kept_bottom| / |kept_top ∪ kept_bottom| of the input
    tokens left after the last layer (fusion tokens are not input tokens; 1.0 means the two settings
    kept the same tokens).
    """
    out: dict[str, Any] = {"r_ee": [float(r) for r in r_ees], "top": [], "bottom": [], "kept_overlap": []}
    for r in r_ees:
        kept: dict[str, list[set[int]]] = {}
        for select in ("top", "bottom"):
            overrides = {"r_ee": float(r), "layer_exit": False, "token_select": select}
            samples = run_inference(model, data, batch_size, trace=True, **overrides)
            res = summarize(samples, data.labels, task, model, max_seq_length, "ours", **overrides)
            kept[select] = [kept_input_tokens(s.layers[-1].positions) for s in samples]
            out[select].append({k: res[k] for k in ("metrics", "rho", "mean_tokens_per_layer")})
        overlap = [len(a & b) / len(a | b) for a, b in zip(kept["top"], kept["bottom"])]
        out["kept_overlap"].append(sum(overlap) / len(overlap))
    return out


# ============================================================================ plots (matplotlib)
def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib (the optional 'plot' extra): pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.clf()
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def plot_fig1(similarity: Sequence[float], path: str | Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(range(len(similarity)), similarity, color="tab:blue")
    ax.set_xticks(range(len(similarity)), ["emb"] + [str(l) for l in range(1, len(similarity))])
    ax.set_xlabel("layer")
    ax.set_ylabel("mean pairwise cosine similarity")
    ax.set_title("Fig. 1: token similarity per layer")
    return _save(fig, path)


def plot_fig3(curves: Mapping[str, Sequence[Mapping[str, float]]], metric: str, path: str | Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r_ee, pts in curves.items():
        pts = sorted(pts, key=lambda d: d["rho"])
        ax.plot([p["rho"] for p in pts], [p["metric"] for p in pts], marker="o", label=f"R_ee = {r_ee}")
        for p in pts:
            ax.annotate(f"{p['threshold']:g}", (p["rho"], p["metric"]), fontsize=6,
                        textcoords="offset points", xytext=(2, 3))
    ax.set_xlabel("speed-up ρ (Eq. 15)")
    ax.set_ylabel(metric)
    ax.set_title("Fig. 3: performance vs acceleration (point labels: F)", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_fig4(counts: Sequence[int], label: str, path: str | Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(range(1, len(counts) + 1), counts, color="tab:green")
    ax.set_xticks(range(1, len(counts) + 1))
    ax.set_xlabel("exit layer")
    ax.set_ylabel("samples")
    ax.set_title(f"Fig. 4: exit layers ({label})")
    return _save(fig, path)


def plot_fig5(data: Mapping[str, Any], metric: str, path: str | Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for select, style in (("top", "o-"), ("bottom", "s--")):
        ax.plot(data["r_ee"], [r["metrics"][metric] for r in data[select]], style, label=f"keep {select}-m")
    ax.set_xlabel("R_ee (fraction of tokens that exit per pruning layer)")
    ax.set_ylabel(metric)
    ax.set_title("Fig. 5: top vs bottom class-attention tokens\n(layer exit off)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)
