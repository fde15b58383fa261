"""The exit-layer breakdown of an operating point (mpee_ref/experiments/breakdown.py, tools/exit_breakdown.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from conftest import load_tool

from mpee_ref.experiments.breakdown import ExitRow, breakdown_markdown, exit_breakdown

REPO = Path(__file__).resolve().parents[1]


def test_hand_example():
    # 5 samples, L = 3; labels 1 0 1 1 0; exits at 1 1 3 3 3
    rows = exit_breakdown(exit_layers=[1, 1, 3, 3, 3], predictions=[1, 1, 1, 0, 0], labels=[1, 0, 1, 1, 0],
                          exits_off=[1, 0, 1, 0, 0], num_layers=3, reference=[1, 0, 1, 1, 1])
    assert rows == [ExitRow(1, 2, 1, 2, 2), ExitRow(2, 0, 0, 0, 0), ExitRow(3, 3, 2, 2, 2), ExitRow(0, 5, 3, 4, 4)]
    text = breakdown_markdown(rows, "plain")
    assert "| 1 | 2 | 1 | 2 | 2 | +1 | +0 |" in text and "| all | 5 | 3 | 4 | 4 | +1 | +0 |" in text
    no_ref = exit_breakdown([1], [0], [0], [1], 2)
    assert no_ref[-1] == ExitRow(0, 1, 1, 0, None) and "reference" not in breakdown_markdown(no_ref)


@given(data=st.data(), n=st.integers(1, 40), layers=st.integers(1, 12))
def test_rows_partition_the_samples_and_the_gap(data, n, layers):
    draw = lambda top: data.draw(st.lists(st.integers(0, top), min_size=n, max_size=n))  # noqa: E731
    labels, pred, off, ref = draw(2), draw(2), draw(2), draw(2)
    exits = [e + 1 for e in draw(layers - 1)]
    rows = exit_breakdown(exits, pred, labels, off, layers, ref)
    body, total = rows[:-1], rows[-1]
    assert [r.layer for r in body] == list(range(1, layers + 1)) and total.layer == 0
    assert sum(r.count for r in body) == total.count == n
    assert total.correct == sum(p == y for p, y in zip(pred, labels))
    assert total.correct_exits_off == sum(p == y for p, y in zip(off, labels))
    assert total.correct_reference == sum(p == y for p, y in zip(ref, labels))
    for r in body:
        assert 0 <= r.correct <= r.count and 0 <= r.correct_exits_off <= r.count


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="exits_off: 1 entries for 2 labels"):
        exit_breakdown([1, 1], [0, 0], [0, 0], [0], 2)
    with pytest.raises(ValueError, match="exit_layers: 3 is outside 1..2"):
        exit_breakdown([1, 3], [0, 0], [0, 0], [0, 0], 2)


def test_tool_on_the_demo_model(tmp_path, capsys, glue_dir):
    demo = REPO / "weights" / "mpee-minilm-sst2"
    if not (demo / "model.safetensors").is_file():
        pytest.skip("the committed demo model is missing")
    tool = load_tool("exit_breakdown")
    out = tmp_path / "b.json"
    assert tool.main(["--model", str(demo), "--reference", str(demo), "--task", "sst-2", "--data-dir",
                      str(glue_dir), "--threshold", "0.5", "--r-ee", "0", "--max-examples", "24",
                      "--max-seq-length", "64", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    total = rows[-1]
    assert total["count"] == 24 and total["correct_reference"] == total["correct_exits_off"]   # same model
    assert sum(r["count"] for r in rows[:-1]) == 24 and rows[0]["count"] > 0                  # some leave at 1
    assert "| all | 24 |" in capsys.readouterr().out
    assert tool.main(["--model", str(tmp_path), "--task", "sst-2", "--data-dir", str(glue_dir),
                      "--threshold", "0.5", "--r-ee", "0"]) == 2
    assert f"--model: {tmp_path} has no mpee_config.json" in capsys.readouterr().err
