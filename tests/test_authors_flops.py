"""The ``authors_code`` FLOPs convention: the authors' evaluation loop (``run_Ada_glue.py``) as it runs.

Hand examples use D = 4, so (MACs) attention a(n) = 2·4·n² + 4·16·n = 8n² + 64n and FFN f(n) = 128n:
a(3) = 264, f(3) = 384; a(8) = 1024, f(8) = 1024; a(9) = 1224, f(9) = 1152; a(11) = 1672, f(11) = 1408.
"""

from __future__ import annotations

import pytest

from mpee_ref.experiments import evaluate_model
from mpee_ref.flops import authors_code_lengths, authors_code_sample_macs, authors_sample_flops, eq15_speedup
from mpee_ref.mpee import load_mpee
from mpee_ref.data import read_glue
from test_train import make_tiny_encoder, make_tiny_sst2, one_thread  # noqa: F401 (autouse fixture)


def test_rule1_an_early_exit_is_charged_the_next_layers_attention():
    # L = 3, no pruning, 3 slots. Exit at 1: a(3) [layer 1] + a(3) + f(3) [layer 1's FFN, layer 2's attention]
    assert authors_code_lengths(1, (), 1.0, 3, max_len=3) == (3,)
    m = authors_code_sample_macs(1, (), 1.0, 3, 4, max_len=3)
    assert (m.executed, m.full, m.per_layer) == (264 + 264 + 384, 3 * 648, (264 + 264 + 384,))
    assert authors_sample_flops(1, (), 1.0, 3, 4, max_len=3).executed == 648          # what really runs
    # exit at L: the last step adds only the FFN, so a run with nothing skipped is charged exactly full
    m = authors_code_sample_macs(3, (), 1.0, 3, 4, max_len=3)
    assert (m.executed, m.full) == (3 * 648, 3 * 648) and sum(m.per_layer) == m.executed


def test_rule2_the_fused_token_is_left_out_of_the_pruning_layers_ffn_and_the_next_attention():
    # 11 slots, prune at layer 2 keeping ceil(0.7 * 10) = 7: recorded 7 + 1 = 8 ([CLS] + kept, no fused
    # token), while layer 2's FFN and layer 3 really run on 9 tokens
    assert authors_code_lengths(3, (2,), 0.7, 3, max_len=11) == (11, 8, 9)
    # a(11) + [a(11) + f(11)] + [a(8) + f(8)] + f(9): layer 3's FFN counts the fused token again
    executed = 1672 + (1672 + 1408) + (1024 + 1024) + 1152
    m = authors_code_sample_macs(3, (2,), 0.7, 3, 4, max_len=11)
    assert (m.executed, m.full) == (executed, 3 * 3080) == (7952, 9240)
    assert m.per_layer == (1672 + 1672 + 1408, 1024 + 1024, 1152)
    # the plain per-layer sum at the lengths that run: (11, 11) + (11, 9) + (9, 9) = 3080 + 2824 + 2376
    f = authors_sample_flops(3, (2,), 0.7, 3, 4, max_len=11)
    assert (f.executed, f.full) == (8280, 9240)
    # exit at the pruning layer: the extra attention block of rule 1 is charged at 8, not 9
    assert authors_code_sample_macs(2, (2,), 0.7, 3, 4, max_len=11).executed == 1672 + 3080 + 2048
    # without fusion the record is the real width: (11, 8, 8)
    assert authors_code_lengths(3, (2,), 0.7, 3, max_len=11, fused=False) == (11, 8, 8)


def test_bert_base_ratios_to_the_plain_sum():
    # per sample, authors' loop / plain per-layer sum, both at 128 padded slots, layers 4/7/10, keep 0.7
    ratio = {e: authors_code_sample_macs(e, (4, 7, 10), 0.7, 12, 768).executed /
             authors_sample_flops(e, (4, 7, 10), 0.7, 12, 768).executed for e in (1, 4, 12)}
    assert ratio[1] == pytest.approx(1.3514, abs=1e-4)
    assert ratio[4] == pytest.approx(1.0620, abs=1e-4)
    assert ratio[12] == pytest.approx(0.9970, abs=1e-4)
    assert authors_code_lengths(12, (4, 7, 10), 0.7, 12) == (128, 128, 128, 90, 91, 91, 64, 65, 65, 46, 47, 47)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("authflops")
    enc = make_tiny_encoder(root / "enc")
    data = make_tiny_sst2(root / "data", n_train=4, n_dev=8)
    return load_mpee(enc, seed=3), read_glue("sst-2", data, "dev")


def test_evaluate_reports_the_authors_code_convention(tiny):
    model, dev = tiny
    res = evaluate_model(model, dev, "sst-2", flops_convention="authors_code", threshold=0.0, layer_exit=False)
    assert "authors_flops" not in res
    block = res["authors_code_flops"]
    L, D = 3, 32                                 # the tiny encoder; prune layers scale to (1, 2, 3)
    per = [authors_code_sample_macs(L, (1, 2, 3), 0.7, L, D, max_len=128) for _ in dev]
    assert (block["executed"], block["full"], block["max_len"]) == (sum(m.executed for m in per),
                                                                    sum(m.full for m in per), 128)
    assert block["rho"] == eq15_speedup([m.full for m in per], [m.executed for m in per])
    # nothing pruned and nothing exits early: the authors' loop charges exactly the baseline
    off = evaluate_model(model, dev, "sst-2", flops_convention="all", token_exit=False, layer_exit=False)
    assert off["authors_code_flops"]["rho"] == 1.0 and off["authors_flops"]["padded"]["rho"] == 1.0
