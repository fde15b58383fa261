"""Eq. (8), §3.1: EE fusion token h_eef = Σ α_i h_i and Z~_l = Concat[h_CLS; h_in; h_eef]
(prune_tokens wires Eqs. 7-8)."""
from __future__ import annotations

import torch
from hypothesis import given, strategies as st

from mpee_ref.token_exit import eq08_fuse, prune_tokens

D64 = torch.float64


def _batch(lengths, T, D=3, seed=0):
    """Right-padded batch: hidden (B, T, D), mask (B, T), memory (B, T-1) with distinct scores."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    hidden = torch.randn(B, T, D, generator=g, dtype=D64)
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    memory = (torch.randperm(B * (T - 1), generator=g).reshape(B, T - 1).to(D64) + 1) / (B * T)
    memory = memory * mask[:, 1:]
    hidden = hidden * mask[..., None]          # padding rows 0, as PruneResult writes them
    return hidden, mask, memory


def test_eq08_fuse_hand_example():
    # fuse tokens 0 and 2 of 3: h_0 = [1, 2], h_2 = [3, -1], α = 0.2, 0.5 (α_1 ignored)
    # h_eef = 0.2 [1, 2] + 0.5 [3, -1] = [1.7, -0.1]
    tokens = torch.tensor([[[1.0, 2.0], [100.0, 100.0], [3.0, -1.0]]], dtype=D64)
    alpha = torch.tensor([[0.2, 0.9, 0.5]], dtype=D64)
    fuse = torch.tensor([[True, False, True]])
    torch.testing.assert_close(eq08_fuse(tokens, alpha, fuse), torch.tensor([[1.7, -0.1]], dtype=D64))
    # a non-finite row that is not fused cannot leak in
    tokens[0, 1] = float("inf")
    torch.testing.assert_close(eq08_fuse(tokens, alpha, fuse), torch.tensor([[1.7, -0.1]], dtype=D64))


@given(st.integers(1, 3), st.integers(1, 6), st.integers(0, 2**16))
def test_eq08_fuse_linear_and_order_invariant(B, N, seed):
    g = torch.Generator().manual_seed(seed)
    h, k = torch.randn(2, B, N, 5, generator=g, dtype=D64)
    alpha = torch.rand(B, N, generator=g, dtype=D64)
    fuse = torch.rand(B, N, generator=g) < 0.6
    torch.testing.assert_close(eq08_fuse(2.5 * h - 0.5 * k, alpha, fuse),
                               2.5 * eq08_fuse(h, alpha, fuse) - 0.5 * eq08_fuse(k, alpha, fuse))
    perm = torch.randperm(N, generator=g)
    torch.testing.assert_close(eq08_fuse(h[:, perm], alpha[:, perm], fuse[:, perm]), eq08_fuse(h, alpha, fuse))
    want = torch.stack([sum((alpha[b, i] * h[b, i] for i in range(N) if fuse[b, i]), torch.zeros(5, dtype=D64))
                        for b in range(B)])
    torch.testing.assert_close(eq08_fuse(h, alpha, fuse), want)


def _hand_input():
    # T = 5: [CLS], x0..x3 with memory [0.1, 0.4, 0.2, 0.3]; R_ee = 0.5 -> N = 4, m = 2
    # kept: x1 (0.4), x3 (0.3), in position order; exited: x0 (0.1), x2 (0.2)
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 3.0]]], dtype=D64)
    return hidden, torch.ones(1, 5, dtype=torch.long), torch.tensor([[0.1, 0.4, 0.2, 0.3]], dtype=D64)


def test_prune_tokens_hand_example():
    hidden, mask, memory = _hand_input()
    r = prune_tokens(hidden, mask, memory, 0.5)
    # h_eef = 0.1 [1, 0] + 0.2 [2, 2] = [0.5, 0.4]; Z~ = [CLS, x1, x3, h_eef]
    want = torch.tensor([[[9.0, 9.0], [0.0, 1.0], [-1.0, 3.0], [0.5, 0.4]]], dtype=D64)
    torch.testing.assert_close(r.hidden, want)
    assert r.attention_mask.tolist() == [[1, 1, 1, 1]] and r.attention_mask.dtype == torch.long
    torch.testing.assert_close(r.memory, torch.tensor([[0.4, 0.3, 0.3]], dtype=D64))   # fused: 0.1 + 0.2
    assert r.source_index.tolist() == [[1, 3, -1]]
    assert r.kept.tolist() == [[False, True, False, True]]
    assert r.fused.tolist() == [[True, False, True, False]]
    torch.testing.assert_close(r.alpha, torch.tensor([[0.1, 0.0, 0.2, 0.0]], dtype=D64))
    assert r.num_kept.tolist() == [2]


def test_prune_tokens_switches_hand_example():
    hidden, mask, memory = _hand_input()
    # normalised: α = [0.1, 0.2] / 0.3 -> h_eef = ([1, 0] + 2 [2, 2]) / 3 = [5/3, 4/3]
    r = prune_tokens(hidden, mask, memory, 0.5, fusion="normalised")
    torch.testing.assert_close(r.hidden[0, 3], torch.tensor([5 / 3, 4 / 3], dtype=D64))
    # mean fused memory: (0.1 + 0.2) / 2 = 0.15
    r = prune_tokens(hidden, mask, memory, 0.5, fused_memory="mean")
    torch.testing.assert_close(r.memory, torch.tensor([[0.4, 0.3, 0.15]], dtype=D64))
    # drop: no fused token, T' = 3
    r = prune_tokens(hidden, mask, memory, 0.5, fusion="drop")
    torch.testing.assert_close(r.hidden, hidden[:, [0, 2, 4]])
    assert r.source_index.tolist() == [[1, 3]] and not bool(r.alpha.any())
    # keep-reading: R = 0.5 kept is the same m here; R = 0.25 kept -> m = 1 keeps x1 only
    r = prune_tokens(hidden, mask, memory, 0.25, r_ee_means="keep")
    assert r.source_index.tolist() == [[1, -1]]
    torch.testing.assert_close(r.hidden[0, 2], 0.1 * hidden[0, 1] + 0.2 * hidden[0, 3] + 0.3 * hidden[0, 4])
    # n_base = 2 (e.g. the original length): m = ceil(2 * 0.5) = 1
    r = prune_tokens(hidden, mask, memory, 0.5, n_base=torch.tensor([2]))
    assert r.num_kept.tolist() == [1] and r.source_index.tolist() == [[1, -1]]


def test_prune_tokens_r_ee_zero_is_identity_even_over_padded():
    hidden, mask, memory = _batch([4, 2], T=6)            # column 5 is padding in every sample
    for kw in ({}, {"fusion": "drop"}, {"fused_memory": "mean"}):
        r = prune_tokens(hidden, mask, memory, 0.0, **kw)
        assert torch.equal(r.hidden, hidden) and torch.equal(r.attention_mask, mask)
        assert torch.equal(r.memory, memory)
        assert r.source_index.tolist() == [[0, 1, 2, -2, -2], [0, -2, -2, -2, -2]]
        assert not bool(r.fused.any()) and r.num_kept.tolist() == [3, 1]


def test_prune_tokens_fused_token_counts_in_next_pruning():
    # a fused token is a token like any other at the next pruning layer (it can be re-fused)
    hidden, mask, memory = _batch([8], T=8)               # N = 7
    r1 = prune_tokens(hidden, mask, memory, 0.5)          # m = ceil(3.5) = 4, + fused -> N = 5
    assert r1.num_kept.tolist() == [4] and r1.hidden.shape[1] == 6
    r2 = prune_tokens(r1.hidden, r1.attention_mask, r1.memory, 0.5)   # m = ceil(2.5) = 3
    assert r2.num_kept.tolist() == [3]
    # Σ memory is conserved across both prunings with fused_memory="sum"
    torch.testing.assert_close(r2.memory.sum(), memory.sum())
    # the kept tokens' memory is gathered with them (not truncated)
    for j, i in enumerate(r2.source_index[0].tolist()):
        if i >= 0:
            assert r2.memory[0, j] == r1.memory[0, i] and torch.equal(r2.hidden[0, 1 + j], r1.hidden[0, 1 + i])


@given(st.lists(st.integers(1, 7), min_size=1, max_size=4), st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
       st.sampled_from(["memory", "normalised", "drop"]), st.sampled_from(["sum", "mean"]),
       st.integers(0, 2**16))
def test_prune_tokens_batched_equals_one_at_a_time(lengths, r_ee, fusion, fused_memory, seed):
    T = max(lengths) + 1
    hidden, mask, memory = _batch(lengths, T, seed=seed)
    kw = dict(fusion=fusion, fused_memory=fused_memory)
    rb = prune_tokens(hidden, mask, memory, r_ee, **kw)
    Tb = rb.hidden.shape[1]
    for b, n in enumerate(lengths):
        rs = prune_tokens(hidden[b:b + 1, :n], mask[b:b + 1, :n], memory[b:b + 1, :n - 1], r_ee, **kw)
        t = rs.hidden.shape[1]
        torch.testing.assert_close(rb.hidden[b, :t], rs.hidden[0])
        torch.testing.assert_close(rb.memory[b, :t - 1], rs.memory[0])
        assert rb.attention_mask[b].tolist() == [1] * t + [0] * (Tb - t)
        assert rb.source_index[b].tolist() == rs.source_index[0].tolist() + [-2] * (Tb - t)
        assert rb.num_kept[b] == rs.num_kept[0]
        # padding rows/positions are zero and never chosen
        assert not bool(rb.hidden[b, t:].any()) and not bool(rb.memory[b, t - 1:].any())
        assert not bool(rb.kept[b, n - 1:].any()) and not bool(rb.fused[b, n - 1:].any())
        kept_idx = [i for i in rb.source_index[b].tolist() if i >= 0]
        assert kept_idx == sorted(kept_idx) and all(i < n - 1 for i in kept_idx)
    if fusion != "drop":   # Σ memory over real tokens is conserved by fused_memory="sum"
        if fused_memory == "sum":
            torch.testing.assert_close(rb.memory.sum(1), memory.sum(1))
    if r_ee == 0.0:
        assert torch.equal(rb.hidden, hidden)


def _gradcheck_prune_tokens(lengths, seed):
    """gradcheck of prune_tokens (hidden and memory) at R_ee 0.5 for every fusion with a fused token;
    returns the batch, with gradients enabled."""
    hidden, mask, memory = _batch(lengths, T=6, D=3, seed=seed)
    hidden.requires_grad_(True)
    memory.requires_grad_(True)
    for fusion in ("memory", "normalised"):
        for fm in ("sum", "mean"):
            def f(h, mem, fusion=fusion, fm=fm):
                r = prune_tokens(h, mask, mem, 0.5, fusion=fusion, fused_memory=fm)
                return r.hidden, r.memory
            assert torch.autograd.gradcheck(f, (hidden, memory))
    return hidden, mask, memory


def test_prune_tokens_gradcheck():
    hidden, mask, memory = _gradcheck_prune_tokens([6, 4], seed=3)
    # the fused token is trained through: d h_eef / d memory_i = h_i for an exited token i
    r = prune_tokens(hidden, mask, memory, 0.5)
    (g,) = torch.autograd.grad(r.hidden[0, -1, 0], memory)
    i = int(r.fused[0].nonzero()[0])
    assert g[0, i] == hidden[0, 1 + i, 0]
    tokens = torch.randn(2, 4, 3, dtype=D64, requires_grad=True)
    alpha = torch.rand(2, 4, dtype=D64, requires_grad=True)
    fuse = torch.tensor([[True, False, True, True], [False, True, False, False]])
    assert torch.autograd.gradcheck(lambda t, a: eq08_fuse(t, a, fuse), (tokens, alpha))


def _with_padding_column(hidden, mask, memory):
    """The same batch with one more, padded, position: it sends prune_tokens down its general path."""
    B, T, D = hidden.shape
    return (torch.cat([hidden, hidden.new_zeros(B, 1, D)], 1), torch.cat([mask, mask.new_zeros(B, 1)], 1),
            torch.cat([memory, memory.new_zeros(B, 1)], 1))


@given(st.integers(1, 3), st.integers(1, 8), st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
       st.sampled_from(["exit", "keep"]), st.sampled_from(["memory", "normalised", "drop"]),
       st.sampled_from(["sum", "mean"]), st.sampled_from(["top", "bottom"]), st.booleans(), st.booleans(),
       st.integers(0, 2**16))
def test_prune_tokens_unpadded_path_equals_general_path(B, n, r_ee, r_ee_means, fusion, fused_memory, select,
                                                        ties, with_n_base, seed):
    # rows without padding take a shorter path (fewer tensor ops, for batch-1 inference); it must return
    # exactly what the general path returns for the same rows with a padded position appended
    hidden, mask, memory = _batch([n] * B, T=n, seed=seed)
    if ties:                                   # coarse scores: equal values, broken by position
        memory = (memory * 3).floor() / 3
    kw = dict(r_ee_means=r_ee_means, fusion=fusion, fused_memory=fused_memory, select=select)
    if with_n_base:                            # m from a longer original length, clipped to N
        kw["n_base"] = torch.full((B,), n + 3)
    if fused_memory == "mean":
        kw["fused_mean_count"] = torch.full((B,), 5)
    fast = prune_tokens(hidden, mask, memory, r_ee, **kw)
    general = prune_tokens(*_with_padding_column(hidden, mask, memory), r_ee, **kw)
    T = fast.hidden.shape[1]
    assert general.hidden.shape[1] == T or not bool(general.fused.any())   # nothing exits: inputs come back
    assert torch.equal(fast.hidden, general.hidden[:, :T]) and torch.equal(fast.memory, general.memory[:, :T - 1])
    assert torch.equal(fast.attention_mask, general.attention_mask[:, :T])
    assert fast.attention_mask.dtype == mask.dtype
    assert torch.equal(fast.source_index, general.source_index[:, :T - 1])
    for name in ("kept", "fused", "alpha"):
        assert torch.equal(getattr(fast, name), getattr(general, name)[:, :n - 1]), name
    assert torch.equal(fast.num_kept, general.num_kept)


def test_prune_tokens_unpadded_path_gradcheck():
    _gradcheck_prune_tokens([6, 6], seed=4)                  # no padding: the dense path
