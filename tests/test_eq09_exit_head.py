"""Eq. (9): the EE classifier, literal tanh form and the authors' pooler + classifier form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf
from hypothesis import given, strategies as st

from mpee_ref.layer_exit import ExitHead, eq09_exit_logits, eq09_pooled_exit_logits, exit_entropy



D, C = 32, 3  # pairwise-distinct tiny sizes


def test_eq09_literal_hand_example():
    # h = [1, -2]; W = [[.5, .25], [1, 0], [0, 0]]; b = [.1, -.5, 2]
    # W h + b = [.5 - .5 + .1, 1 - .5, 0 + 2] = [.1, .5, 2] -> tanh = [0.0996680, 0.4621172, 0.9640276]
    h = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    w = torch.tensor([[0.5, 0.25], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([0.1, -0.5, 2.0], dtype=torch.float64)
    out = eq09_exit_logits(h, w, b)
    assert torch.allclose(out, torch.tensor([[0.09966799462495582, 0.46211715726000974, 0.9640275800758169]],
                                            dtype=torch.float64), atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 1e3))
def test_eq09_literal_logits_bounded(seed, scale):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(5, D, generator=g, dtype=torch.float64) * scale
    w = torch.randn(C, D, generator=g, dtype=torch.float64) * scale
    b = torch.randn(C, generator=g, dtype=torch.float64) * scale
    z = eq09_exit_logits(h, w, b)                                          # (5, C)
    assert z.shape == (5, C)
    assert bool((z.abs() <= 1.0).all())
    assert torch.allclose(z, torch.tanh(h @ w.T + b))


@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 1e3))
def test_eq09_literal_two_class_entropy_floor(seed, scale):
    # Bounded logits keep softmax unconfident: with C = 2 the most peaked output is softmax([1, -1]),
    # p_max = e / (e + e^-1) = 0.8807971, entropy 0.3653339 nats, so a threshold F below it never fires.
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(7, D, generator=g, dtype=torch.float64) * scale
    w = torch.randn(2, D, generator=g, dtype=torch.float64) * scale
    b = torch.randn(2, generator=g, dtype=torch.float64) * scale
    z = eq09_exit_logits(h, w, b)                                          # (7, 2)
    assert float(torch.softmax(z, -1).max()) <= 0.8807970779778824 + 1e-12
    assert float(exit_entropy(z).min()) >= 0.36533385508720767 - 1e-12


def test_eq09_pooled_equals_explicit_computation():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, D, generator=g, dtype=torch.float64)
    wp, bp = torch.randn(D, D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    wc, bc = torch.randn(C, D, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    explicit = torch.tanh(h @ wp.T + bp) @ wc.T + bc                       # (4, C)
    out = eq09_pooled_exit_logits(h, wp, bp, wc, bc)
    assert torch.allclose(out, explicit, atol=1e-12)
    assert float(out.abs().max()) > 1.0  # unbounded, unlike the literal form


def test_exit_head_parameter_names_and_init():
    head = ExitHead(D, C)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {"pooler.dense.weight": (D, D), "pooler.dense.bias": (D,),
                      "classifier.weight": (C, D), "classifier.bias": (C,)}
    lit = ExitHead(D, C, head="tanh")
    assert {k: tuple(v.shape) for k, v in lit.state_dict().items()} == {"dense.weight": (C, D), "dense.bias": (C,)}
    torch.manual_seed(0)
    big = ExitHead(200, 7).requires_grad_(False)
    assert abs(float(big.classifier.weight.std()) - 0.02) < 0.002
    assert float(big.classifier.weight.mean().abs()) < 0.002
    assert bool((big.classifier.bias == 0).all()) and bool((big.pooler.dense.bias == 0).all())


def test_exit_head_init_from_pooler_and_forward_eval():
    torch.manual_seed(1)
    head = ExitHead(D, C, dropout_p=0.3).double().eval()
    wp, bp = torch.randn(D, D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)
    head.init_from_pooler(wp, bp)
    assert torch.equal(head.pooler.dense.weight, wp) and torch.equal(head.pooler.dense.bias, bp)
    assert head.pooler.dense.weight.requires_grad
    h = torch.randn(6, D, dtype=torch.float64)
    expected = torch.tanh(h @ wp.T + bp) @ head.classifier.weight.T + head.classifier.bias
    assert torch.allclose(head(h), expected, atol=1e-12)  # eval: no dropout


def test_exit_head_dropout_before_classifier_in_train_mode():
    torch.manual_seed(2)
    head = ExitHead(D, C, dropout_p=0.5).double().train()
    h = torch.randn(6, D, dtype=torch.float64)
    torch.manual_seed(123)
    out = head(h)
    torch.manual_seed(123)
    pooled = nnf.dropout(torch.tanh(h @ head.pooler.dense.weight.T + head.pooler.dense.bias), 0.5, True)
    expected = pooled @ head.classifier.weight.T + head.classifier.bias
    assert torch.allclose(out, expected, atol=1e-12)
    assert not torch.allclose(out, head.eval()(h))


def test_exit_head_literal_forward_matches_equation():
    torch.manual_seed(3)
    head = ExitHead(D, C, head="tanh").double().eval()
    h = torch.randn(5, D, dtype=torch.float64) * 50
    out = head(h)
    assert torch.allclose(out, torch.tanh(h @ head.dense.weight.T + head.dense.bias), atol=1e-12)
    assert bool((out.abs() <= 1).all())


def test_eq09_bad_inputs_raise():
    head = ExitHead(D, C)
    with pytest.raises(ValueError, match="h_cls"):
        head(torch.randn(2, D + 1))
    with pytest.raises(ValueError, match="head"):
        ExitHead(D, C, head="linear")
    with pytest.raises(ValueError, match="init_from_pooler"):
        ExitHead(D, C, head="tanh").init_from_pooler(torch.zeros(D, D), torch.zeros(D))
    with pytest.raises(ValueError, match="pooler weight"):
        head.init_from_pooler(torch.zeros(D, D + 1), torch.zeros(D))
    # the equations trust their inputs: ExitHead.forward is the boundary, for both head kinds
    with pytest.raises(ValueError, match="h_cls"):
        ExitHead(D, C, head="tanh")(torch.zeros(2, 5, D))
    with pytest.raises(ValueError, match="h_cls"):
        ExitHead(D, C, norm=True)(torch.zeros(2, D - 1))
    with pytest.raises(ValueError, match="dropout_p"):
        ExitHead(D, C, dropout_p=1.0)
