"""``train`` under ``torchrun --nproc_per_node 2`` (gloo, CPU) equals one process with twice the batch.

The run goes through the real command line (``python -m torch.distributed.run ... -m mpee_ref train``).
Dropout is off (the ranks draw different dropout masks, so only then can the results be equal), the
sampler gives the two ranks' batches together exactly the one-process batch (tests/test_train.py checks
that), and DDP averages the two per-rank mean gradients, which is the mean over the double batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mpee_ref.experiments import TrainArgs, train_model
from test_train import make_tiny_encoder, make_tiny_sst2, one_thread  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_ddp_two_processes_equal_one_process_with_double_batch(tmp_path):
    enc = make_tiny_encoder(tmp_path / "enc", dropout=0.0)
    data = make_tiny_sst2(tmp_path / "data", n_train=8, n_dev=4)
    common = ["--task", "sst-2", "--data-dir", str(data), "--model", str(enc), "--lr", "1e-3",
              "--warmup-ratio", "0", "--max-steps", "2", "--save-every", "1", "--no-progress", "--no-deterministic",
              "--set", "classifier_dropout=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mpee_ref", "train", "--out", str(tmp_path / "ddp"), "--batch-size", "2", *common]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the same command again: rank 0 refuses the finished run folder, and no rank waits for it
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert again.returncode != 0 and "holds a finished run" in again.stderr, again.stderr[-3000:]

    train_model(TrainArgs(task="sst-2", data_dir=str(data), model=str(enc), out=str(tmp_path / "one"),
                          batch_size=4, lr=1e-3, warmup_ratio=0.0, max_steps=2, save_every=1, progress=False,
                          deterministic=False, overrides={"classifier_dropout": 0.0}))
    a = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    start = load_file(str(enc / "model.safetensors"))
    key = "bert.encoder.layer.0.attention.self.query.weight"
    moved = (a[key] - start[key.removeprefix("bert.")]).abs().max().item()
    assert moved > 1e-3                                                     # 2 Adam steps of lr 1e-3 moved it
    assert a.keys() == b.keys()
    # Summation order differs (2 x 2 then all-reduce vs 4), and Adam divides a gradient by its own size, so
    # a coordinate whose gradient is ~0 can move by a visible fraction of lr: allow 1% of one step (1e-5).
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    far = sum(int(((a[k] - b[k]).abs() > 1e-6).sum()) for k in a)         # beyond float32 rounding noise
    assert far <= 0.001 * sum(v.numel() for v in a.values()), far

    # rank 0 alone wrote: one checkpoint (step 1; step 2 is the last step), one log, one summary
    ddp = tmp_path / "ddp"
    assert sorted(p.name for p in ddp.iterdir()) == [".lock", "checkpoint-1", "final", "log.jsonl", "run.json",
                                                     "train_summary.json"]
    log = [json.loads(line) for line in (ddp / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("start") == 1 and log[0]["world_size"] == 2
    summary = json.loads((ddp / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["examples_seen"] == 8
    # the dev metric was computed on predictions gathered from both ranks: all 4 dev examples
    assert summary["final_dev"]["n_examples"] == 4 and sum(summary["final_dev"]["exit_layer_counts"].values()) == 4
