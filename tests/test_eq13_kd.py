"""Eq. (13): tau^2 KL between each exit and the teacher, in both directions and both reductions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as nnf
from hypothesis import given, settings, strategies as st

from mpee_ref.losses import eq13_kd_loss


LN3 = math.log(3)


def test_eq13_hand_example_both_directions():
    # student [0, 0] -> p = [1/2, 1/2]; teacher [ln 3, 0] -> q = [3/4, 1/4]; tau = 1
    # KL(p||q) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) = 0.1438410
    # KL(q||p) = 3/4 ln(3/2) + 1/4 ln(1/2)            = 0.1308120
    s = torch.zeros(1, 1, 2, dtype=torch.float64)
    t = torch.tensor([[LN3, 0.0]], dtype=torch.float64)
    assert math.isclose(float(eq13_kd_loss(s, t, 1.0)), 0.14384103622589042, rel_tol=1e-12)
    assert math.isclose(float(eq13_kd_loss(s, t, 1.0, direction="teacher_student")), 0.13081203594113697,
                        rel_tol=1e-12)
    # tau = 2: q = softmax([ln 3 / 2, 0]) = [sqrt3/(sqrt3+1), 1/(sqrt3+1)] = [0.6339746, 0.3660254]
    # tau^2 KL(p||q) = 4 * 0.0372523 = 0.1490091;  tau^2 KL(q||p) = 0.1453631
    assert math.isclose(float(eq13_kd_loss(s, t, 2.0)), 0.14900914406163324, rel_tol=1e-12)
    assert math.isclose(float(eq13_kd_loss(s, t, 2.0, direction="teacher_student")), 0.14536313148189411,
                        rel_tol=1e-12)
    # reduction "mean" also divides by C = 2
    assert math.isclose(float(eq13_kd_loss(s, t, 1.0, reduction="mean")), 0.14384103622589042 / 2, rel_tol=1e-12)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), L=st.integers(1, 4), B=st.integers(1, 5), C=st.integers(2, 5),
       tau=st.floats(0.5, 5.0))
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_eq13_matches_torch_kl_div_authors_form(seed, L, B, C, tau):
    # The authors: tau^2 KLDivLoss(log_softmax(z/tau), softmax(t/tau)) = tau^2 KL(teacher || student).
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(L, B, C, generator=g, dtype=torch.float64) * 3
    t = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    for red in ("batchmean", "mean"):
        kd = eq13_kd_loss(m, t, tau, direction="teacher_student", reduction=red)
        ref = torch.stack([tau ** 2 * nnf.kl_div(nnf.log_softmax(m[l] / tau, -1), nnf.softmax(t / tau, -1), reduction=red)
                           for l in range(L)])
        assert torch.allclose(kd, ref, atol=1e-12)
    # the paper's direction swaps the roles: KL(student || teacher) = kl_div(log q_t, p_s) per exit
    kd_st = eq13_kd_loss(m, t, tau)
    ref_st = torch.stack([tau ** 2 * nnf.kl_div(nnf.log_softmax(t / tau, -1), nnf.softmax(m[l] / tau, -1),
                                              reduction="batchmean") for l in range(L)])
    assert torch.allclose(kd_st, ref_st, atol=1e-12)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), L=st.integers(1, 4), tau=st.floats(0.5, 5.0),
       direction=st.sampled_from(["student_teacher", "teacher_student"]))
def test_eq13_nonnegative_and_zero_when_students_equal_teacher(seed, L, tau, direction):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(L, 4, 3, generator=g, dtype=torch.float64) * 4
    t = torch.randn(4, 3, generator=g, dtype=torch.float64) * 4
    assert bool((eq13_kd_loss(m, t, tau, direction) >= 0).all())
    same = t.unsqueeze(0).expand(L, 4, 3)
    assert torch.allclose(eq13_kd_loss(same, t, tau, direction), torch.zeros(L, dtype=torch.float64), atol=1e-14)
    # a constant shift of the logits changes no softmax
    assert torch.allclose(eq13_kd_loss(m + 5.0, t - 2.0, tau, direction), eq13_kd_loss(m, t, tau, direction),
                          atol=1e-10)


def test_eq13_gradcheck_both_directions():
    g = torch.Generator().manual_seed(4)
    m = torch.randn(3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    for direction in ("student_teacher", "teacher_student"):
        assert torch.autograd.gradcheck(lambda a, b: eq13_kd_loss(a, b, 3.0, direction), (m, t), fast_mode=True)


def test_eq13_finite_for_extreme_logits_fp32():
    m = torch.tensor([[[1e4, -1e4]]])
    t = torch.tensor([[-1e4, 1e4]])
    for direction in ("student_teacher", "teacher_student"):
        assert bool(torch.isfinite(eq13_kd_loss(m, t, 3.0, direction)).all())
