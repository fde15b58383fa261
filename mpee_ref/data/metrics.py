r"""GLUE metrics, in plain NumPy (no scikit-learn, no SciPy).

The paper (§4.2): "accuracy (Acc) and F_1 score (F_1) were used as evaluation metrics for MRPC. For all
other tasks, accuracy was used". So QQP is scored by accuracy only here, although the GLUE leaderboard
also reports its F1. CoLA (Matthews correlation) and STS-B (Pearson/Spearman) follow GLUE.

Conventions for degenerate inputs (the ones scikit-learn/SciPy use, written down here):

* ``f1_binary``: F1 = 2TP / (2TP + FP + FN). With no positive prediction *and* no positive label the
  ratio is 0/0 and the result is **0.0** (sklearn's ``zero_division`` default); with no positive
  prediction but some positive label, TP = 0 so F1 = 0.0 as well.
* ``matthews_corrcoef``: 0.0 when the denominator is 0 (all predictions, or all labels, one class).
* ``pearson``/``spearman``: NaN when either input is constant (the correlation is undefined there).

Inputs may be lists, NumPy arrays or CPU torch tensors of shape ``(N,)``; they must have the same
non-zero length, else ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .glue import TaskSpec, get_task


def _as_1d(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of shape (N,), got shape {a.shape}"
                         + (" (pass argmax over classes, not logits)" if a.ndim == 2 else ""))
    if a.size == 0:
        raise ValueError(f"{name}: expected at least one element, got an empty sequence")
    return a


def _pair(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = _as_1d(preds, "preds"), _as_1d(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"preds/labels: lengths differ, preds has {p.shape[0]}, labels has {y.shape[0]}")
    return p, y


def accuracy(preds: Any, labels: Any) -> float:
    r"""Fraction of exact matches, :math:`\frac{1}{N}\sum_i [\hat y_i = y_i]`."""
    p, y = _pair(preds, labels)
    return float(np.mean(p == y))


def f1_binary(preds: Any, labels: Any, positive: int = 1) -> float:
    r"""F1 of the class ``positive``: :math:`F_1 = \frac{2PR}{P+R} = \frac{2TP}{2TP+FP+FN}`.

    Every value other than ``positive`` counts as negative. Returns 0.0 when TP = 0 (including the
    0/0 case of no positive prediction and no positive label).
    """
    p, y = _pair(preds, labels)
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2.0 * tp / denom


def matthews_corrcoef(preds: Any, labels: Any) -> float:
    r"""Matthews correlation coefficient (multi-class form of Gorodkin 2004, as sklearn):

    .. math:: \mathrm{MCC} = \frac{c\,s - \sum_k p_k t_k}{\sqrt{(s^2 - \sum_k p_k^2)(s^2 - \sum_k t_k^2)}}

    with :math:`s` the number of samples, :math:`c` the correct ones, :math:`p_k`/:math:`t_k` how often
    class :math:`k` is predicted/true. For two classes it equals
    :math:`\frac{TP\,TN - FP\,FN}{\sqrt{(TP+FP)(TP+FN)(TN+FP)(TN+FN)}}`. Returns 0.0 when the
    denominator is 0. Counts are Python ints (no int64 overflow in :math:`s^4`).
    """
    p, y = _pair(preds, labels)
    classes = np.union1d(p, y)
    s = int(p.size)
    c = int(np.sum(p == y))
    pk = [int(np.sum(p == k)) for k in classes]
    tk = [int(np.sum(y == k)) for k in classes]
    num = c * s - sum(a * b for a, b in zip(pk, tk))
    den_p = s * s - sum(a * a for a in pk)
    den_t = s * s - sum(b * b for b in tk)
    if den_p == 0 or den_t == 0:
        return 0.0
    return float(num / (math.sqrt(den_p) * math.sqrt(den_t)))


def pearson(preds: Any, labels: Any) -> float:
    r"""Pearson correlation :math:`r = \frac{\sum (x-\bar x)(y-\bar y)}{\sqrt{\sum (x-\bar x)^2 \sum (y-\bar y)^2}}`,
    in float64; NaN when either input is constant."""
    p, y = _pair(preds, labels)
    x = p.astype(np.float64) - p.astype(np.float64).mean()  # (N,)
    z = y.astype(np.float64) - y.astype(np.float64).mean()  # (N,)
    den = math.sqrt(float(np.dot(x, x)) * float(np.dot(z, z)))
    if den == 0.0:
        return float("nan")
    return float(np.clip(np.dot(x, z) / den, -1.0, 1.0))


def rank_average(x: Any) -> np.ndarray:
    r"""1-based ranks with ties given the mean of the ranks they span (SciPy's ``rankdata`` 'average'):
    :math:`\mathrm{rank}_i = \#\{j: x_j < x_i\} + \tfrac{1}{2}(\#\{j: x_j = x_i\} + 1)`."""
    a = _as_1d(x, "x")
    order = np.argsort(a, kind="mergesort")  # (N,)
    sorted_a = a[order]  # (N,)
    # start of each run of equal values in the sorted order
    new_run = np.concatenate(([True], sorted_a[1:] != sorted_a[:-1]))  # (N,)
    run_id = np.cumsum(new_run) - 1  # (N,)
    starts = np.flatnonzero(new_run)  # (R,)
    ends = np.concatenate((starts[1:], [a.size]))  # (R,) exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # (R,) mean of ranks starts+1 .. ends
    ranks = np.empty(a.size, dtype=np.float64)  # (N,)
    ranks[order] = mean_rank[run_id]
    return ranks


def spearman(preds: Any, labels: Any) -> float:
    r"""Spearman's :math:`\rho`: Pearson correlation of the average ranks (ties share their mean rank);
    NaN when either input is constant."""
    p, y = _pair(preds, labels)
    return pearson(rank_average(p), rank_average(y))


def _check_classes(x: np.ndarray, name: str, spec: TaskSpec) -> np.ndarray:
    if x.dtype.kind == "b" or x.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected integer class ids for task {spec.name}, got dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x) & (x == np.round(x))):
        raise ValueError(f"{name}: expected integer class ids for task {spec.name}, got non-integer floats")
    bad = (x < 0) | (x >= spec.num_labels)
    if np.any(bad):
        raise ValueError(f"{name}: class id {x[bad][0].item()!r} out of range for task {spec.name}; "
                         f"expected 0..{spec.num_labels - 1}")
    return x.astype(np.int64)


def compute_metrics(task: str | TaskSpec, preds: Any, labels: Any) -> dict[str, float]:
    """The paper's metric(s) for ``task``: MRPC ``{"f1", "accuracy"}`` (F1 of class 1, "paraphrase");
    CoLA ``{"mcc"}``; STS-B ``{"pearson", "spearman"}``; every other task ``{"accuracy"}``.

    ``preds``/``labels`` are ``(N,)`` class ids in ``0..num_labels-1`` (float scores for STS-B).
    """
    spec = get_task(task)
    p, y = _pair(preds, labels)
    if spec.metric == "pearson_spearman":
        return {"pearson": pearson(p, y), "spearman": spearman(p, y)}
    p, y = _check_classes(p, "preds", spec), _check_classes(y, "labels", spec)
    if spec.metric == "f1_accuracy":
        return {"f1": f1_binary(p, y, positive=1), "accuracy": accuracy(p, y)}
    if spec.metric == "mcc":
        return {"mcc": matthews_corrcoef(p, y)}
    return {"accuracy": accuracy(p, y)}
