"""GLUE metrics (mpee_ref/data/metrics.py, paper §4.2): hand examples, agreement with brute-force
definitions (Hypothesis), degenerate cases, and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from mpee_ref.data import (accuracy, compute_metrics, f1_binary, matthews_corrcoef, pearson, rank_average,
                           spearman)

def pairs(values=st.integers(0, 2), min_size=1):
    return st.integers(min_size, 30).flatmap(
        lambda n: st.tuples(st.lists(values, min_size=n, max_size=n), st.lists(values, min_size=n, max_size=n)))


# ----------------------------------------------------------------------------- hand examples
# preds  1 1 0 1 0 0
# labels 1 0 0 1 1 0      TP=2 FP=1 FN=1 TN=2
P6, Y6 = [1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0]


def test_accuracy_hand():
    assert accuracy(P6, Y6) == 4 / 6
    assert accuracy(np.array([2, 1, 0]), torch.tensor([2, 1, 1])) == 2 / 3


def test_f1_hand():
    # P = 2/3, R = 2/3 -> F1 = 2/3
    assert f1_binary(P6, Y6) == pytest.approx(2 / 3, abs=1e-15)
    # class 0 as positive: TP=1, FP=2, FN=0 -> 2 / (2 + 2) = 0.5 (class 1 as positive: TP=0 -> 0.0)
    assert f1_binary([0, 0, 0], [0, 1, 1], positive=0) == 0.5
    assert f1_binary([0, 0, 0], [0, 1, 1], positive=1) == 0.0


def test_f1_degenerate_cases_are_zero():
    assert f1_binary([0, 0, 0], [1, 0, 1]) == 0.0  # no positive prediction
    assert f1_binary([0, 0, 0], [0, 0, 0]) == 0.0  # no positive anywhere: 0/0 -> 0.0 (sklearn's default)
    assert f1_binary([1, 1], [0, 0]) == 0.0        # only false positives
    assert f1_binary([1, 0], [1, 0]) == 1.0


def test_mcc_hand():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert matthews_corrcoef(P6, Y6) == pytest.approx(1 / 3, abs=1e-15)
    assert matthews_corrcoef([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 0, 1], [0, 1, 1, 0]) == pytest.approx(-1.0)
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant predictions: denominator 0 -> 0.0


def test_mcc_large_counts_do_not_overflow():
    # s = 400,000: s**4 = 2.56e22 overflows int64; the counts are Python ints
    y = np.repeat([0, 1], [200_000, 200_000])
    p = y.copy()
    p[:50_000] = 1  # 50k false positives
    tp, tn, fp, fn = 200_000, 150_000, 50_000, 0
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_corrcoef(p, y) == pytest.approx(expected, rel=1e-12)


def test_pearson_hand():
    # x - 2 = (-1, 0, 1); y - 13/3 = (-7/3, -1/3, 8/3); r = 5 / sqrt(2 * 114/9)
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9), abs=1e-15)
    assert pearson([1.0, 2.0, 3.0], [-2.0, -4.0, -6.0]) == pytest.approx(-1.0)


def test_rank_average_and_spearman_hand():
    assert rank_average([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert rank_average([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)); ranks x = 1..5, y = (2, 1, 3, 5, 4): sum d^2 = 4
    assert spearman([1, 2, 3, 4, 5], [20, 10, 30, 50, 40]) == pytest.approx(1 - 6 * 4 / (5 * 24), abs=1e-15)
    # monotone but non-linear: Spearman 1, Pearson < 1
    x = [1.0, 2.0, 3.0, 4.0]
    assert spearman(x, np.exp(x)) == pytest.approx(1.0) and pearson(x, np.exp(x)) < 0.99


def test_constant_input_correlations_are_nan():
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))


# ----------------------------------------------------------------------------- brute force
def brute_ranks(x):
    return [sum(v < xi for v in x) + (sum(v == xi for v in x) + 1) / 2 for xi in x]


def brute_pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


@given(pairs())
@example(([0], [0]))
@example(([1, 1], [0, 0]))
def test_accuracy_f1_match_definitions(py):
    p, y = py
    assert accuracy(p, y) == sum(a == b for a, b in zip(p, y)) / len(p)
    for pos in (0, 1, 2):
        tp = sum(a == pos and b == pos for a, b in zip(p, y))
        prec = tp / sum(a == pos for a in p) if pos in p else 0.0
        rec = tp / sum(b == pos for b in y) if pos in y else 0.0
        expected = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
        assert f1_binary(p, y, positive=pos) == pytest.approx(expected, abs=1e-12)


@given(pairs(st.integers(0, 1)))
@example(([0, 0], [0, 1]))
def test_mcc_binary_matches_confusion_formula(py):
    p, y = py
    tp = sum(a == 1 and b == 1 for a, b in zip(p, y))
    tn = sum(a == 0 and b == 0 for a, b in zip(p, y))
    fp = sum(a == 1 and b == 0 for a, b in zip(p, y))
    fn = sum(a == 0 and b == 1 for a, b in zip(p, y))
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    expected = 0.0 if den == 0 else (tp * tn - fp * fn) / math.sqrt(den)
    assert matthews_corrcoef(p, y) == pytest.approx(expected, abs=1e-12)


@given(pairs())
def test_mcc_multiclass_is_correlation_of_one_hot(py):
    # Gorodkin: MCC = cov(X, Y) / sqrt(cov(X, X) cov(Y, Y)), X, Y one-hot (N, K), cov summed over classes
    p, y = py
    k = 3
    X = np.eye(k)[p] - np.eye(k)[p].mean(0)
    Y = np.eye(k)[y] - np.eye(k)[y].mean(0)
    cxy, cxx, cyy = float((X * Y).sum()), float((X * X).sum()), float((Y * Y).sum())
    expected = 0.0 if cxx * cyy == 0 else cxy / math.sqrt(cxx * cyy)
    assert matthews_corrcoef(p, y) == pytest.approx(expected, abs=1e-12)


@given(pairs(st.integers(-3, 3), min_size=2))
@example(([1, 2, 2, 3], [4, 4, 1, 0]))
def test_spearman_pearson_match_definitions(py):
    x, y = py
    assert rank_average(x).tolist() == brute_ranks(x)
    if len(set(x)) == 1 or len(set(y)) == 1:
        assert math.isnan(pearson(x, y)) and math.isnan(spearman(x, y))
        return
    assert pearson(x, y) == pytest.approx(brute_pearson(x, y), abs=1e-12)
    assert spearman(x, y) == pytest.approx(brute_pearson(brute_ranks(x), brute_ranks(y)), abs=1e-12)


@given(st.permutations(list(range(9))))
def test_spearman_without_ties_is_the_d_squared_formula(perm):
    d2 = sum((i - r) ** 2 for i, r in enumerate(perm))
    assert spearman(list(range(9)), perm) == pytest.approx(1 - 6 * d2 / (9 * 80), abs=1e-12)


# ----------------------------------------------------------------------------- compute_metrics
def test_compute_metrics_per_task():
    assert compute_metrics("mrpc", P6, Y6) == pytest.approx({"f1": 2 / 3, "accuracy": 4 / 6})
    for task in ("sst-2", "qqp", "qnli", "rte", "mnli-m", "mnli-mm"):
        assert compute_metrics(task, P6, Y6) == {"accuracy": 4 / 6}
    assert compute_metrics("mnli", [2, 1, 0], [2, 1, 1]) == {"accuracy": 2 / 3}
    assert compute_metrics("cola", P6, Y6) == pytest.approx({"mcc": 1 / 3})
    out = compute_metrics("sts-b", [0.5, 2.0, 4.9], [1.0, 2.5, 4.0])
    assert set(out) == {"pearson", "spearman"} and out["spearman"] == pytest.approx(1.0)
    assert out["pearson"] == pytest.approx(brute_pearson([0.5, 2.0, 4.9], [1.0, 2.5, 4.0]))
    assert compute_metrics("rte", torch.tensor([1, 0]), np.array([1.0, 0.0])) == {"accuracy": 1.0}


def test_metric_input_errors():
    with pytest.raises(ValueError, match=r"preds/labels: lengths differ, preds has 2, labels has 3"):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match=r"preds: expected a 1-D sequence of shape \(N,\), got shape \(2, 3\) \(pass argmax"):
        compute_metrics("sst-2", np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match=r"labels: expected at least one element"):
        f1_binary([0], [])
    with pytest.raises(ValueError, match=r"preds: class id 3 out of range for task rte; expected 0..1"):
        compute_metrics("rte", [0, 3], [0, 1])
    with pytest.raises(ValueError, match=r"labels: expected integer class ids for task mrpc, got non-integer"):
        compute_metrics("mrpc", [0, 1], [0.0, 0.5])
    with pytest.raises(ValueError, match=r"unknown GLUE task 'imdb'"):
        compute_metrics("imdb", [0], [0])
