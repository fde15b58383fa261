"""Eq. (7), §3.1: m = N(1 - R_ee) and the top-m selection on the memory A_m^l."""
from __future__ import annotations

import math

import torch
from hypothesis import example, given, strategies as st

from mpee_ref.token_exit import eq07_num_kept, eq07_top_m

D64 = torch.float64


def _m(n, r, means="exit"):
    return eq07_num_kept(torch.tensor(n), r, means).tolist()


def test_eq07_num_kept_hand_cases():
    # N = 10, R = 0.7: 10 * (1 - 0.7) = 3.0000000000000004 in floats, but exactly 3 -> m = 3
    assert 10 * (1 - 0.7) != 3.0          # the float trap this rule avoids
    assert _m([10], 0.7) == [3]
    # N = 3: 3 * 0.3 = 0.9 -> 1; N = 1: always at least 1 while R < 1; N = 0 -> 0
    assert _m([3, 1, 0, 7], 0.7) == [1, 1, 0, 3]     # 7 * 0.3 = 2.1 -> 3
    assert _m([10, 4, 0], 0.0) == [10, 4, 0]         # R = 0: nothing exits
    assert _m([10, 4, 0], 1.0) == [0, 0, 0]          # R = 1: everything exits
    assert _m([1], 0.9999999999999999) == [1]
    # R is read as the decimal of its repr: 1/3 -> 0.3333333333333333, so 3 * (1 - R) is just above 2
    assert _m([3, 6, 7], 1 / 3) == [3, 5, 5]
    # huge numerators are exact (Python integers): R = 0.123456789012345 on N = 10**6
    assert _m([10**6], 0.123456789012345) == [876544]       # ceil(876543.210987655)
    # "keep" (authors): kept = ceil(0.7 N): 10 -> 7, 127 -> ceil(88.9) = 89, 3 -> ceil(2.1) = 3
    assert _m([10, 127, 3], 0.7, "keep") == [7, 89, 3]


def test_eq07_exact_on_decimal_grid():
    # every N <= 200 and every R = k/100 gives the exact ceil(N (100 - k) / 100)
    naive_wrong = 0
    for k in range(101):
        r = k / 100
        ns = list(range(201))
        got = _m(ns, r)
        want = [-(-n * (100 - k) // 100) for n in ns]
        assert got == want, (k, [(n, a, b) for n, a, b in zip(ns, got, want) if a != b][:3])
        naive_wrong += sum(math.ceil(n * (1 - r)) != w for n, w in zip(ns, want))
        assert _m(ns, r, "keep") == [-(-n * k // 100) for n in ns]
    assert naive_wrong > 0                 # the float formula would have failed this test


@given(st.integers(1, 512), st.floats(0.0, 1.0, exclude_max=True, allow_nan=False))
@example(10, 0.7)
@example(1000, 0.999999)
@example(1, 0.0)
@example(512, 5e-324)
def test_eq07_bounds_and_monotone(n, r):
    (m,) = _m([n], r)
    assert 1 <= m <= n
    assert m >= n * (1 - r) - 1e-9 and m - 1 < n * (1 - r) + 1e-9     # it is the ceiling
    (m_more,) = _m([n], min(1.0, r + 0.1))
    assert m_more <= m                                                 # more exit, fewer kept


def test_eq07_top_m_hand_example_with_tie():
    # scores [0.3, 0.5, 0.3, 0.1]: best 0.5 (pos 1), then the tie 0.3 at pos 0 and pos 2:
    # the lower position (0) wins, so m = 2 keeps {0, 1}; m = 3 keeps {0, 1, 2}.
    s = torch.tensor([[0.3, 0.5, 0.3, 0.1]] * 3, dtype=D64)
    valid = torch.ones(3, 4, dtype=torch.bool)
    keep = eq07_top_m(s, valid, torch.tensor([2, 3, 0]))
    assert keep.tolist() == [[True, True, False, False], [True, True, True, False], [False] * 4]


def test_eq07_top_m_padding_never_chosen():
    # the padded positions carry the highest scores, yet are never kept
    s = torch.tensor([[0.1, 0.2, 9.0, 9.0], [0.0, 0.0, 0.0, 5.0]], dtype=D64)
    valid = torch.tensor([[True, True, False, False], [True, True, True, False]])
    keep = eq07_top_m(s, valid, torch.tensor([2, 3]))
    assert keep.tolist() == [[True, True, False, False], [True, True, True, False]]
    keep = eq07_top_m(s, valid, torch.tensor([1, 1]))
    assert keep.tolist() == [[False, True, False, False], [True, False, False, False]]


@given(st.integers(1, 4), st.integers(1, 9), st.data())
def test_eq07_top_m_properties(B, N, data):
    # exactly m kept, all valid, every kept score >= every non-kept valid score, ties to the lower index
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 4, (B, N), generator=g).to(D64) / 4          # few levels: many ties
    valid = torch.rand(B, N, generator=g) < 0.7
    m = torch.tensor([data.draw(st.integers(0, int(v))) for v in valid.sum(1)])
    keep = eq07_top_m(s, valid, m)
    assert keep.sum(1).tolist() == m.tolist()
    assert not bool((keep & ~valid).any())
    for b in range(B):
        kept = [i for i in range(N) if keep[b, i]]
        rest = [j for j in range(N) if valid[b, j] and not keep[b, j]]
        for i in kept:
            for j in rest:
                assert s[b, i] > s[b, j] or (s[b, i] == s[b, j] and i < j)
