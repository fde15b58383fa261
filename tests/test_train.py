"""``python -m mpee_ref train`` (mpee_ref/experiments/train.py, batching.py, options.py).

Everything runs on a tiny random BERT written in our converter's format (vocab 99, hidden 32, 4 heads,
FFN 37, 3 layers, 2 classes) and a 16-sentence SST-2-style TSV, so a training step takes milliseconds.
The helpers here are imported by test_evaluate.py and test_ddp.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpee_ref import BertConfig, BertEncoder
from mpee_ref.__main__ import main
from mpee_ref.experiments import (PLAIN_SWITCHES, EpochBatchSampler, TrainArgs, build_config, latest_checkpoint,
                                  linear_schedule, parse_overrides, save_checkpoint, train_model)
from mpee_ref.experiments.checkpointing import load_train_state
from mpee_ref.mpee import load_mpee

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "the", "a", "is", "was", "plot",
         "acting"]


def make_tiny_encoder(folder: Path, dropout: float = 0.1) -> Path:
    """A random 3-layer BERT folder in our converted format (config.json, model.safetensors, vocab.txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = BertEncoder(cfg)
    state = {k: v.contiguous() for k, v in enc.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "mpee_ref", "format_version": "1"})
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "architectures": ["BertModel"]}))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [f"w{i}" for i in range(99 - len(vocab))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def make_tiny_sst2(folder: Path, n_train: int = 16, n_dev: int = 10) -> Path:
    """SST-2-layout TSVs whose label is carried by one word (good/great/fine vs bad/awful/poor)."""
    folder.mkdir(parents=True, exist_ok=True)
    r = random.Random(0)

    def rows(n: int) -> str:
        out = []
        for i in range(n):
            y = i % 2
            w = r.choice(["good", "great", "fine"] if y else ["bad", "awful", "poor"])
            tail = " ".join(r.choice(WORDS[6:]) for _ in range(r.randint(0, 6)))
            out.append(f"the {r.choice(['movie', 'film'])} {r.choice(['is', 'was'])} {w} {tail}\t{y}")
        return "sentence\tlabel\n" + "\n".join(out) + "\n"

    (folder / "train.tsv").write_text(rows(n_train))
    (folder / "dev.tsv").write_text(rows(n_dev))
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine 2 threads are 3-5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {"enc": make_tiny_encoder(root / "enc"), "enc_nodrop": make_tiny_encoder(root / "enc0", 0.0),
            "data": make_tiny_sst2(root / "data")}


@pytest.fixture(autouse=True)
def deterministic_calls(monkeypatch) -> list:
    """Record torch.use_deterministic_algorithms calls instead of making them: the first real call imports
    torch._inductor (seconds); the CPU kernels used here are deterministic without it."""
    calls: list = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, **kw: calls.append(mode))
    return calls


def _args(tiny, out: Path, **kw) -> TrainArgs:
    base = dict(task="sst-2", data_dir=str(tiny["data"]), out=str(out), model=str(tiny["enc"]),
                batch_size=4, lr=1e-3, warmup_ratio=0.0, max_train_examples=8, max_eval_examples=4,
                progress=False, log_every=1)
    base.update(kw)
    return TrainArgs(**base)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- pieces
def test_linear_schedule_warmup_then_decay():
    # total 100, warm-up 6: (s+1)/7 for s < 6, then (100-s)/94
    assert linear_schedule(0, 100, 6) == pytest.approx(1 / 7)
    assert linear_schedule(5, 100, 6) == pytest.approx(6 / 7)
    assert linear_schedule(6, 100, 6) == pytest.approx(1.0)
    assert linear_schedule(53, 100, 6) == pytest.approx(47 / 94)
    assert linear_schedule(100, 100, 6) == 0.0
    assert linear_schedule(0, 10, 0) == 1.0


def test_sampler_ranks_together_equal_one_process_with_double_batch():
    n, b = 11, 2
    single = EpochBatchSampler(n, 2 * b, seed=5)
    ranks = [EpochBatchSampler(n, b, seed=5, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3 and len(single) == 3
    for epoch in (0, 1):
        one = list(single.batches(epoch))
        two = [list(r.batches(epoch)) for r in ranks]
        assert sorted(two[0][0] + two[1][0]) == sorted(one[0])
        assert sorted(two[0][1] + two[1][1]) == sorted(one[1])
        # 11 examples on 2 ranks: the permutation is padded to 12 by repeating its first index
        assert sorted(two[0][2] + two[1][2]) == sorted(one[2] + [one[0][0]])
    assert list(single.batches(0))[0] != list(single.batches(1))[0]  # a new order every epoch
    assert list(single.batches(1, start=2)) == list(single.batches(1))[2:]   # resume skips exactly


def test_parse_overrides_types_and_errors():
    got = parse_overrides(["threshold=0.2", "prune_layers=2,3", "use_kd=false", "gamma=none", "head=tanh",
                           "beta_warmup_layers=2"])
    assert got == {"threshold": 0.2, "prune_layers": (2, 3), "use_kd": False, "gamma": None, "head": "tanh",
                   "beta_warmup_layers": 2}
    with pytest.raises(ValueError, match="unknown MPEEConfig field 'thresh'"):
        parse_overrides(["thresh=0.1"])
    with pytest.raises(ValueError, match="expected float"):
        parse_overrides(["lam=high"])
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["threshold"])


def test_build_config_preset_ablation_plain():
    cfg = build_config(2, 6, preset="authors", ablate=["wsd"], overrides={"threshold": 0.1})
    assert (cfg.r_ee_means, cfg.prune_layers, cfg.use_kd, cfg.threshold) == ("keep", (2, 4, 5), False, 0.1)
    plain = build_config(2, 6, mode="plain")
    assert all(getattr(plain, k) == v for k, v in PLAIN_SWITCHES.items())
    with pytest.raises(ValueError, match="contradicts"):
        build_config(2, 6, mode="plain", overrides={"layer_exit": True})
    with pytest.raises(ValueError, match="contradicts"):
        build_config(2, 6, mode="plain", overrides={"use_kd": True, "token_exit": True})
    pruned = build_config(2, 6, mode="plain", overrides={"token_exit": True, "r_ee": 0.5})   # L14
    assert (pruned.token_exit, pruned.r_ee, pruned.layer_exit, pruned.use_kd, pruned.classifier_memory) == \
        (True, 0.5, False, False, False)
    with pytest.raises(ValueError, match="unknown component"):
        build_config(2, 6, ablate=["dropout"])


# ----------------------------------------------------------------------------- training runs
def test_loss_finite_and_decreasing_on_repeated_batch(tiny, tmp_path):
    # 4 examples, batch 4, no dropout: every step sees the same batch. The untrained heads give ~uniform
    # probabilities, so the first loss is L ln 2 (3 exits x CE ln 2, KD ~ 0); Adam must then lower it.
    # (Adam's first, sign-like step may raise it a little: compared is the last step with the first.)
    args = _args(tiny, tmp_path / "run", model=str(tiny["enc_nodrop"]), max_train_examples=4, epochs=4,
                 overrides={"classifier_dropout": 0.0})
    summary = train_model(args, command="test")
    losses = [r["loss"] for r in _log(tmp_path / "run") if r["event"] == "train"]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] == pytest.approx(3 * math.log(2), abs=1e-3)
    assert losses[3] < losses[2] < losses[1] and losses[3] < losses[0] - 2e-4
    # summary and final model
    on_disk = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert on_disk["command"] == "test" and on_disk["seed"] == 42 and on_disk["steps"] == 4
    assert on_disk["machine"]["torch_threads"] == torch.get_num_threads() and on_disk["machine"]["platform"]
    assert set(on_disk["final_dev"]["metrics"]) == {"accuracy"} and on_disk["final_dev"]["n_examples"] == 4
    assert summary["final_dev"]["metrics"] == on_disk["final_dev"]["metrics"]
    final = load_mpee(tmp_path / "run" / "final")
    assert all(v.dtype == torch.float32 for v in _weights(tmp_path / "run" / "final").values())
    assert final.mpee_config.threshold == 0.3 and final.mpee_config.classifier_dropout == 0.0
    assert not list((tmp_path / "run").rglob("*.tmp*"))


def test_resume_gives_the_uninterrupted_result(tiny, tmp_path, deterministic_calls):
    # 8 examples, batch 4: 2 steps per epoch; 3 steps cross an epoch boundary. Dropout is on, so the RNG
    # state must be restored too.
    was = torch.are_deterministic_algorithms_enabled()
    full = train_model(_args(tiny, tmp_path / "a", max_steps=3))
    assert full["steps"] == 3 and deterministic_calls == [True, was]    # switched on, then restored
    part = train_model(_args(tiny, tmp_path / "b", max_steps=3, stop_after_steps=1))
    assert part == {"stopped": "stop_after_steps", "step": 1, "checkpoint": str(tmp_path / "b" / "checkpoint-1")}
    assert not (tmp_path / "b" / "final").exists()
    assert load_train_state(tmp_path / "b" / "checkpoint-1")["step"] == 1
    # a resume with a different learning rate is refused
    with pytest.raises(ValueError, match="differing fields.*lr: 0.001 then, 0.0001 now"):
        train_model(_args(tiny, tmp_path / "b", max_steps=3, resume=True, lr=1e-4))
    train_model(_args(tiny, tmp_path / "b", max_steps=3, resume=True))
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-2"]   # 1 pruned at the end
    wa, wb = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    w0 = load_mpee(tiny["enc"], seed=42).state_dict()
    assert not torch.equal(wa["bert.embeddings.word_embeddings.weight"], w0["bert.embeddings.word_embeddings.weight"])
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match="finished run"):                        # nothing left to resume
        train_model(_args(tiny, tmp_path / "b", max_steps=3, resume=True))


def test_checkpoint_write_is_atomic(tiny, tmp_path, monkeypatch):
    model = load_mpee(tiny["enc"], seed=1)
    out = tmp_path / "ck"
    out.mkdir()
    state = {"format": "mpee_ref-train-state-1", "step": 1, "world_size": 1, "optimizer": {}, "scheduler": {},
             "rng_cpu": [torch.get_rng_state()], "args": "{}"}
    first = save_checkpoint(out, model, state)
    before = _weights(first)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", boom)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.add_(1.0)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(out, model, {**state, "step": 2})
    monkeypatch.undo()
    assert latest_checkpoint(out) == first
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1"]          # no temp folder left
    after = _weights(first)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert load_train_state(first)["step"] == 1
    second = save_checkpoint(out, model, {**state, "step": 2})
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"] and latest_checkpoint(out) == second
    key = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(_weights(second)[key], before[key] + 1.0)


def test_ctrl_c_saves_a_checkpoint_then_exits(tiny, tmp_path, monkeypatch):
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip_and_interrupt(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)       # Ctrl-C during step 2
        return real_clip(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_interrupt)
    handler_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup/CI
    with pytest.raises(KeyboardInterrupt):
        train_model(_args(tiny, tmp_path / "c", max_steps=4))
    assert load_train_state(latest_checkpoint(tmp_path / "c"))["step"] == 2   # step 2 finished, then saved
    assert signal.getsignal(signal.SIGINT) is handler_before                  # handler restored


def test_plain_mode_trains_backbone_and_last_head_only(tiny, tmp_path):
    train_model(_args(tiny, tmp_path / "p", mode="plain", max_steps=2))
    w = _weights(tmp_path / "p" / "final")
    w0 = load_mpee(tiny["enc"], seed=42).state_dict()
    changed = {k for k in w if not torch.equal(w[k], w0[k])}
    assert any(k.startswith("exits.2.") for k in changed)
    assert not any(k.startswith(("exits.0.", "exits.1.", "teacher.")) for k in changed)
    assert "bert.encoder.layer.0.attention.self.query.weight" in changed
    cfg = json.loads((tmp_path / "p" / "final" / "mpee_config.json").read_text())
    assert all(cfg[k] == v for k, v in PLAIN_SWITCHES.items())
    summary = json.loads((tmp_path / "p" / "train_summary.json").read_text())
    assert summary["final_dev"]["exit_layer_counts"] == {"1": 0, "2": 0, "3": 4}


def test_plain_mode_with_token_exit_prunes_while_training_the_last_head(tiny, tmp_path):
    """L14: ``--mode plain --set token_exit=true`` is the plain loss on a pruned forward pass: the same
    parameters train as in plain mode, but from the first step the loss is another (tokens have exited)."""
    train_model(_args(tiny, tmp_path / "p", mode="plain", max_steps=2))
    train_model(_args(tiny, tmp_path / "t", mode="plain", max_steps=2,
                      overrides={"token_exit": True, "r_ee": 0.5, "prune_layers": (1,)}))
    w0 = load_mpee(tiny["enc"], seed=42).state_dict()
    for run in ("p", "t"):
        w = _weights(tmp_path / run / "final")
        changed = {k for k in w if not torch.equal(w[k], w0[k])}
        assert any(k.startswith("exits.2.") for k in changed) and "bert.embeddings.word_embeddings.weight" in changed
        assert not any(k.startswith(("exits.0.", "exits.1.", "teacher.")) for k in changed)
    cfg = json.loads((tmp_path / "t" / "final" / "mpee_config.json").read_text())
    assert (cfg["token_exit"], cfg["layer_exit"], cfg["use_kd"]) == (True, False, False)
    first = [next(r["loss"] for r in _log(tmp_path / run) if r["event"] == "train") for run in ("p", "t")]
    assert first[0] != pytest.approx(first[1], rel=1e-4)


def test_cli_errors_are_one_line_and_exit_2(tiny, tmp_path, capsys):
    rc = main(["train", "--model", str(tmp_path / "missing"), "--task", "sst-2", "--data-dir", str(tiny["data"]),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing" in err[0]
    rc = main(["train", "--model", str(tiny["enc"]), "--task", "sst-3", "--data-dir", str(tiny["data"]),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown GLUE task 'sst-3'" in err[0]
    rc = main(["train", "--model", str(tiny["enc"]), "--task", "sst-2", "--data-dir", str(tiny["data"]),
               "--out", str(tmp_path / "o"), "--set", "bogus=1"])
    assert rc == 2 and "bogus" in capsys.readouterr().err


def test_stale_temporaries_of_final_and_checkpoints_are_removed_and_nothing_else(tmp_path):
    from mpee_ref.experiments.runs import clean_temporaries
    from mpee_ref.io.atomic import atomic_text

    for name in (".final.tmp-ab12", ".checkpoint-7.tmp-x_9", ".final.old-123", ".finalize.tmp-1", "final",
                 "checkpoint-7", ".checkpoint-7.keep"):
        (tmp_path / name).mkdir()
    atomic_text(tmp_path / "run.json", "{}\n")
    atomic_text(tmp_path / "run.json", '{"a": 1}\n')                      # replaced whole, no temporary left
    assert sorted(clean_temporaries(tmp_path)) == [".checkpoint-7.tmp-x_9", ".final.old-123", ".final.tmp-ab12"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint-7.keep", ".finalize.tmp-1", "checkpoint-7",
                                                          "final", "run.json"]
    assert (tmp_path / "run.json").read_text() == '{"a": 1}\n'
