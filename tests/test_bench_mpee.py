"""tools/bench_mpee.py: the targets it prints and a tiny run on the committed demo model."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from conftest import load_tool

REPO = Path(__file__).resolve().parents[1]
bench = load_tool("bench_mpee")


def test_each_row_gets_the_issues_target():
    assert bench.target("trained", 32, 2.0, 6, 3.0, True) == ("0.9 ρ", pytest.approx(1.8))
    assert bench.target("bert-base", 1, 2.0, 12, 12.0, True) == ("0.8 ρ", pytest.approx(1.6))
    assert bench.target("trained", 1, 0.99, 6, 6.0, False) == ("1/1.10", pytest.approx(1 / 1.1))
    assert bench.target("trained", 1, 3.0, 6, 2.0, True) == ("0.9 L/exit", pytest.approx(2.7))


def test_interleaved_counts_each_batch_at_its_fastest():
    calls = {"a": 0, "b": 0}
    clock = iter(range(1000))
    bench.time.perf_counter, real = (lambda: next(clock)), bench.time.perf_counter
    try:
        ta, tb = bench.interleaved([lambda b: calls.__setitem__("a", calls["a"] + 1),
                                    lambda b: calls.__setitem__("b", calls["b"] + 1)], [0, 1, 2], reps=2)
    finally:
        bench.time.perf_counter = real
    assert calls == {"a": 6, "b": 6} and (ta, tb) == (3, 3)          # every call "takes" one tick


def test_a_tiny_run_prints_the_table(monkeypatch, capsys, glue_dir):
    monkeypatch.setattr(sys, "argv", ["bench_mpee.py", "-n", "2", "--reps", "1", "--batch-sizes", "1,2",
                                      "--settings", "0:0,0.5:0.5", "--threads", "1",
                                      "--texts", str(glue_dir / "SST-2" / "dev.tsv")])
    assert bench.main() == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\S+) \| (\S+) \| (\d+) \|.*\| ([^|]+?) = ([\d.]+) \| ([\d.]+) \|$", out, re.M)
    assert [r[:4] for r in rows] == [("0", "0", "1", "1/1.10"), ("0.5", "0.5", "1", "0.9 L/exit"),
                                     ("0", "0", "2", "0.9 ρ"), ("0.5", "0.5", "2", "0.9 ρ")]
    assert "row(s) below target" in out and out.startswith("$ python")


def test_overhead_prints_the_four_steps(monkeypatch, capsys, glue_dir):
    monkeypatch.setattr(sys, "argv", ["bench_mpee.py", "--overhead", "-n", "2", "--reps", "1", "--threads", "1",
                                      "--texts", str(glue_dir / "SST-2" / "dev.tsv")])
    assert bench.main() == 0
    rows = re.findall(r"^\| ([^|]+) \| ([\d.]+) \| ([\d.]+) \|$", capsys.readouterr().out, re.M)
    assert [r[0] for r in rows][0] == "plain classifier" and len(rows) == 4
    assert rows[0][2] == "1.000" and all(float(r[1]) > 0 for r in rows)
