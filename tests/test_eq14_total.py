"""Eq. (14) and mpee_loss: the total objective, its switches, and gradients through the teacher."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as nnf
from hypothesis import given, settings, strategies as st
from torch.func import functional_call

from mpee_ref.losses import LossTerms, WeightedTeacher, eq11_cross_entropy, eq13_kd_loss, eq14_total_loss, mpee_loss



L, B, C = 3, 4, 2


def _setup(seed: int):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(L, B, C, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, C, (B,), generator=g)
    torch.manual_seed(seed)
    teacher = WeightedTeacher(C).double()
    with torch.no_grad():  # larger than the 0.02 init so eta is far from uniform
        for p in teacher.parameters():
            p.normal_(0.0, 1.0)
    return m, y, teacher


def test_eq14_hand_example():
    ce, kd = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    assert float(eq14_total_loss(ce, kd)) == 10.0                       # paper: (1 + 2) + (3 + 4)
    assert float(eq14_total_loss(ce, None)) == 3.0                      # w/o WSD: CE only
    # authors, gamma = 0.1: 0.9 (1 + 2) + 0.1 (3 + 4) + 0.1 * 5 = 2.7 + 0.7 + 0.5 = 3.9
    total = eq14_total_loss(ce, kd, gamma=0.1, teacher_ce=torch.tensor(5.0))
    assert abs(float(total) - 3.9) < 1e-6


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), direction=st.sampled_from(["student_teacher", "teacher_student"]),
       reduction=st.sampled_from(["batchmean", "mean"]), tau=st.floats(0.5, 4.0))
def test_mpee_loss_total_is_sum_of_parts(seed, direction, reduction, tau):
    m, y, teacher = _setup(seed)
    terms = mpee_loss(m, y, teacher, tau=tau, kd_direction=direction, kd_reduction=reduction)
    t, eta = teacher(m)
    assert torch.allclose(terms.teacher_logits, t) and torch.allclose(terms.eta, eta)
    assert torch.allclose(terms.ce, eq11_cross_entropy(m, y))
    assert torch.allclose(terms.kd, eq13_kd_loss(m, t, tau, direction, reduction))
    assert torch.allclose(terms.total, terms.ce.sum() + terms.kd.sum(), atol=1e-12)
    assert terms.teacher_ce is None


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_mpee_loss_authors_gamma_form():
    m, y, teacher = _setup(1)
    terms = mpee_loss(m, y, teacher, gamma=0.1, kd_direction="teacher_student", kd_reduction="mean")
    t = terms.teacher_logits
    assert torch.allclose(terms.teacher_ce, nnf.cross_entropy(t, y))
    kd_ref = torch.stack([9.0 * nnf.kl_div(nnf.log_softmax(m[l] / 3, -1), nnf.softmax(t / 3, -1), reduction="mean")
                          for l in range(L)])
    ce_ref = torch.stack([nnf.cross_entropy(m[l], y) for l in range(L)])
    expected = (0.9 * ce_ref + 0.1 * kd_ref).sum() + 0.1 * nnf.cross_entropy(t, y)
    assert torch.allclose(terms.total, expected, atol=1e-12)


def test_mpee_loss_without_kd():
    m, y, _ = _setup(2)
    terms = mpee_loss(m, y, None, use_kd=False)
    assert terms.kd is None and terms.teacher_logits is None and terms.eta is None
    assert torch.allclose(terms.total, sum(nnf.cross_entropy(m[l], y) for l in range(L)))


def test_mpee_loss_detach_switches_route_gradients():
    m, y, teacher = _setup(3)
    # default: teacher inputs detached -> grad wrt memories = grad of CE + KD with t a constant
    mm = m.clone().requires_grad_()
    mpee_loss(mm, y, teacher).total.backward()
    with torch.no_grad():
        t_const, _ = teacher(m)
    mc = m.clone().requires_grad_()
    (eq11_cross_entropy(mc, y).sum() + eq13_kd_loss(mc, t_const, 3.0).sum()).backward()
    assert torch.allclose(mm.grad, mc.grad, atol=1e-12)
    # ... and the teacher is trained by the KL
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in teacher.parameters())
    # not detached: gradient also flows through the teacher's inputs, so it differs
    mn = m.clone().requires_grad_()
    mpee_loss(mn, y, teacher, detach_teacher_inputs=False).total.backward()
    assert not torch.allclose(mn.grad, mm.grad, atol=1e-6)
    # t detached in the KL (and gamma None): no gradient reaches the teacher at all
    teacher.zero_grad(set_to_none=True)
    mpee_loss(m.clone().requires_grad_(), y, teacher, detach_teacher_in_kd=True).total.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_mpee_loss_gradcheck():
    m, y, teacher = _setup(4)
    names = [n for n, _ in teacher.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in teacher.parameters())

    class _Functional:
        def __init__(self, ps):
            self.ps = ps

        def __call__(self, mem):
            return functional_call(teacher, dict(zip(names, self.ps)), (mem,))

    def f_all(mem, *ps):   # memories reach the teacher too (no detach), so numeric == analytic
        return mpee_loss(mem, y, _Functional(ps), detach_teacher_inputs=False).total

    def f_default(*ps):    # default switches: gradient w.r.t. the teacher's parameters
        return mpee_loss(m, y, _Functional(ps)).total

    def f_gamma(mem, *ps):
        return mpee_loss(mem, y, _Functional(ps), detach_teacher_inputs=False, gamma=0.1,
                         kd_direction="teacher_student").total

    def f_detached(mem, *ps):  # default detach: analytic grad omits the teacher-input path
        return mpee_loss(mem, y, _Functional(ps)).total

    mem = m.clone().requires_grad_()
    assert torch.autograd.gradcheck(f_all, (mem, *params), fast_mode=True)
    # the check can fail: numerically the detached path still moves t, analytically it does not
    assert not torch.autograd.gradcheck(f_detached, (mem, *params), fast_mode=True, raise_exception=False)
    assert torch.autograd.gradcheck(f_default, params, fast_mode=True)
    assert torch.autograd.gradcheck(f_gamma, (mem, *params), fast_mode=True)


def test_loss_terms_frozen_and_bad_inputs_raise():
    m, y, teacher = _setup(5)
    terms = mpee_loss(m, y, teacher)
    assert isinstance(terms, LossTerms)
    with pytest.raises(dataclasses.FrozenInstanceError):
        terms.total = torch.tensor(0.0)  # type: ignore[misc]
    with pytest.raises(ValueError, match="teacher"):
        mpee_loss(m, y, None)
    with pytest.raises(ValueError, match="gamma"):
        mpee_loss(m, y, None, use_kd=False, gamma=0.1)
    # eq14_total_loss trusts its inputs: mpee_loss builds l_kd and teacher_ce, MPEEConfig checks gamma
    # (tests/test_boundaries.py)


# ----------------------------------------------------------------------------- ce_weighting (L12)
def test_ce_exit_weights_hand_example_and_bad_name():
    from mpee_ref.losses import ce_exit_weights
    assert torch.equal(ce_exit_weights(3), torch.ones(3, dtype=torch.float64))      # the paper's sum
    # depth, L = 3: w_l = 3 l / (1 + 2 + 3) = l / 2
    assert torch.equal(ce_exit_weights(3, "depth"), torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="ce_weighting"):
        ce_exit_weights(3, "linear")


@settings(max_examples=25)
@given(num_exits=st.integers(1, 24))
def test_ce_exit_weights_depth_properties(num_exits):
    from mpee_ref.losses import ce_exit_weights
    w = ce_exit_weights(num_exits, "depth")
    assert w.shape == (num_exits,) and bool((w > 0).all())
    assert abs(float(w.sum()) - num_exits) < 1e-12                                # same scale as uniform
    assert bool((w[1:] > w[:-1]).all())                                            # deeper exits weigh more
    assert torch.allclose(w / w[0], torch.arange(1, num_exits + 1, dtype=torch.float64))  # w_l ∝ l


def test_mpee_loss_depth_weighting_weights_ce_only():
    m, y, teacher = _setup(6)
    plain = mpee_loss(m, y, teacher)
    depth = mpee_loss(m, y, teacher, ce_weighting="depth")
    w = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)                        # L = 3
    assert torch.equal(depth.ce, plain.ce) and torch.equal(depth.kd, plain.kd)      # terms stay unweighted
    assert torch.allclose(depth.total, (w * plain.ce).sum() + plain.kd.sum(), atol=1e-12)
    no_kd = mpee_loss(m, y, None, use_kd=False, ce_weighting="depth")
    assert torch.allclose(no_kd.total, (w * no_kd.ce).sum(), atol=1e-12)
    # the weights move the gradient towards the deep exits: d total / d memories[l] scales with w_l
    mu, md = m.clone().requires_grad_(), m.clone().requires_grad_()
    mpee_loss(mu, y, None, use_kd=False).total.backward()
    mpee_loss(md, y, None, use_kd=False, ce_weighting="depth").total.backward()
    assert torch.allclose(md.grad, w.view(L, 1, 1) * mu.grad, atol=1e-12)
    with pytest.raises(ValueError, match="ce_weighting"):
        mpee_loss(m, y, teacher, ce_weighting="deep")
