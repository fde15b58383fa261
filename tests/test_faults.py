"""Fault injection: nothing lost, nothing silently wrong (docs/RELIABILITY.md lists every case here).

Everything runs on the tiny 3-layer BERT and 16-sentence SST-2 of test_train.py. Crashes are real: a
forked child (no new interpreter, so milliseconds) trains until a patched writer SIGKILLs it at the k-th
write, for every k; the parent then checks what a reader sees and finishes the run, which must end with
the weights of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import pickle
import signal
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mpee_ref.io.atomic as atomic_mod
import mpee_ref.mpee.checkpoint as mpee_ckpt
from mpee_ref.__main__ import main
from mpee_ref.experiments import TrainArgs, latest_checkpoint, save_checkpoint, train_model
from mpee_ref.experiments.runs import (RunLock, check_resume, finite_json, identity_diff, model_fingerprint,
                                      run_identity)
from mpee_ref.experiments.checkpointing import load_train_state
from mpee_ref.io import convert_checkpoint, load_encoder, load_tokenizer
from mpee_ref.io.checkpoint import _skip_init
from mpee_ref.mpee import MPEEConfig, load_mpee, save_mpee
from test_train import deterministic_calls, make_tiny_encoder, make_tiny_sst2, one_thread  # noqa: F401 (autouse)

KEY = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    return {"enc": make_tiny_encoder(root / "enc"), "data": make_tiny_sst2(root / "data"), "root": root}


def _args(tiny, out: Path, **kw) -> TrainArgs:
    base = dict(task="sst-2", data_dir=str(tiny["data"]), out=str(out), model=str(tiny["enc"]), batch_size=4,
                lr=1e-3, warmup_ratio=0.0, max_train_examples=8, max_eval_examples=4, progress=False,
                log_every=1, max_steps=2, save_every=1)
    base.update(kw)
    return TrainArgs(**base)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cli(capsys, *argv: str) -> tuple[int, list[str]]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err.strip().splitlines()


#: The write primitives of checkpoints, final/, run.json and the summary; a crash is injected before each.
WRITERS = [(mpee_ckpt, "save_file"), (torch, "save"), (pathlib.Path, "write_text"), (pathlib.Path, "write_bytes"),
           (os, "rename"), (os, "replace"), (atomic_mod, "_exchange")]


def _patch_writers(on_write) -> None:
    """Call ``on_write()`` before every write primitive (in a forked child: never undone)."""
    for owner, name in WRITERS:
        fn = getattr(owner, name)

        def wrapped(*a, _fn=fn, **k):
            on_write()
            return _fn(*a, **k)
        setattr(owner, name, wrapped)


def _in_child(fn) -> int:
    """Run ``fn`` in a forked child; its exit code (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:                                               # pragma: no cover - child
        code = 0
        try:
            fn()
        except KeyboardInterrupt as e:
            code = 128 + int(getattr(e, "signum", 2))
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture(scope="module")
def reference(tiny) -> dict:
    """An uninterrupted run (2 steps, checkpoint after step 1, final/): its weights and its number of writes."""
    out = tiny["root"] / "reference"
    counted = {"n": 0}
    with pytest.MonkeyPatch.context() as mp:
        for owner, name in WRITERS:
            fn = getattr(owner, name)

            def wrapped(*a, _fn=fn, **k):
                counted["n"] += 1
                return _fn(*a, **k)
            mp.setattr(owner, name, wrapped)
        mp.setattr(torch, "use_deterministic_algorithms", lambda *a, **k: None)
        train_model(_args(tiny, out))
    return {"out": out, "final": _weights(out / "final"), "writes": counted["n"]}


# ============================================================================ crashes
def test_sigkill_at_every_write_then_resume_is_bit_identical(tiny, tmp_path, reference):
    n = reference["writes"]
    assert n >= 15                        # run.json, checkpoint-1 (6 writes + rename), final/ (7 + rename), summary
    for k in range(1, n + 1):
        out = tmp_path / f"k{k}"

        def child() -> None:
            count = {"n": 0}

            def on_write() -> None:
                count["n"] += 1
                if count["n"] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
            _patch_writers(on_write)
            train_model(_args(tiny, out))

        assert _in_child(child) == -signal.SIGKILL, k
        # what a reader sees: every visible checkpoint and final/ is whole
        for ck in out.glob("checkpoint-*"):
            assert load_train_state(ck)["step"] == 1 and _weights(ck).keys() == reference["final"].keys()
        if (out / "final").exists():
            assert _same(_weights(out / "final"), reference["final"]), k
            assert json.loads((out / "final" / "train_summary.json").read_text())["steps"] == 2
            with pytest.raises(ValueError, match="finished run"):
                train_model(_args(tiny, out, resume=True))
            continue
        assert not (out / "train_summary.json").exists()
        train_model(_args(tiny, out, resume=latest_checkpoint(out) is not None))
        assert _same(_weights(out / "final"), reference["final"]), k
        assert not [p for p in out.iterdir() if ".tmp" in p.name or ".old-" in p.name], k


def test_sigterm_saves_a_checkpoint_and_resume_is_bit_identical(tiny, tmp_path, reference, monkeypatch):
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def clip_and_term(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_clip(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_and_term)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as info:
        train_model(_args(tiny, tmp_path / "t"))
    assert info.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
    assert load_train_state(latest_checkpoint(tmp_path / "t"))["step"] == 1
    monkeypatch.undo()
    train_model(_args(tiny, tmp_path / "t", resume=True))
    assert _same(_weights(tmp_path / "t" / "final"), reference["final"])


def test_ctrl_c_during_final_evaluation_saves_then_resume_finishes(tiny, tmp_path, reference, monkeypatch):
    import mpee_ref.experiments.train as train_mod
    real = train_mod.summarize
    seen = {"n": 0}

    def summarize_and_interrupt(*a, **k):
        seen["n"] += 1
        if seen["n"] == 1:                         # 2 steps = 1 epoch of 8 examples: the first evaluation is final
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "summarize", summarize_and_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_model(_args(tiny, tmp_path / "c", eval_every=0))
    monkeypatch.undo()
    assert not (tmp_path / "c" / "final").exists()
    assert load_train_state(latest_checkpoint(tmp_path / "c"))["step"] == 2
    train_model(_args(tiny, tmp_path / "c", resume=True))
    assert _same(_weights(tmp_path / "c" / "final"), reference["final"])


def test_disk_full_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "full"
    train_model(_args(tiny, out, stop_after_steps=1, max_steps=4))
    before = _weights(out / "checkpoint-1")
    capsys.readouterr()

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    rc, err = _cli(capsys, "train", "--model", str(tiny["enc"]), "--task", "sst-2", "--data-dir", str(tiny["data"]),
                   "--out", str(out), "--batch-size", "4", "--lr", "1e-3", "--warmup-ratio", "0",
                   "--max-train-examples", "8", "--max-eval-examples", "4", "--log-every", "1", "--max-steps", "4",
                   "--save-every", "1", "--no-progress", "--resume")
    assert rc == 2 and len(err) == 1 and "checkpoint-2: could not write the checkpoint" in err[0]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".check", "check"))) == ["checkpoint-1"]
    assert _same(_weights(out / "checkpoint-1"), before)


# ============================================================================ divergence
@pytest.mark.parametrize("mode", ["plain", "mpee"])
def test_diverged_run_exits_nonzero_and_keeps_only_finite_checkpoints(tiny, tmp_path, capsys, mode):
    out = tmp_path / mode
    rc, err = _cli(capsys, "train", "--model", str(tiny["enc"]), "--task", "sst-2", "--data-dir", str(tiny["data"]),
                   "--out", str(out), "--mode", mode, "--lr", "1e30", "--batch-size", "4", "--max-steps", "3",
                   "--save-every", "1", "--max-train-examples", "8", "--max-eval-examples", "4", "--no-progress")
    assert rc == 2 and len(err) == 1 and "training diverged" in err[0], err
    assert not (out / "final").exists() and not (out / "train_summary.json").exists()
    for ck in out.glob("checkpoint-*"):                       # whatever was kept loads and is finite
        assert all(torch.isfinite(v).all() for v in _weights(ck).values())
        load_mpee(ck)


def test_nan_weights_are_never_saved(tiny, tmp_path):
    model = load_mpee(tiny["enc"])
    with torch.no_grad():
        model.exits[0].classifier.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        save_mpee(model, tmp_path / "m")
    with pytest.raises(ValueError, match="NaN/Inf"):
        save_checkpoint(tmp_path, model, {"step": 1})
    assert list(tmp_path.iterdir()) == []


# ============================================================================ bad files at load
@pytest.fixture(scope="module")
def mpee_folder(tiny) -> Path:
    return save_mpee(load_mpee(tiny["enc"]), tiny["root"] / "mpee")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize("bad", ["nan", "int", "bool"])
def test_bad_tensors_in_an_mpee_folder_are_refused(mpee_folder, tmp_path, bad):
    folder = _copy(mpee_folder, tmp_path / "m")
    state = _weights(folder)
    k = "exits.0.classifier.weight"
    state[k] = {"nan": state[k].clone().fill_(float("nan")), "int": state[k].to(torch.int32),
                "bool": state[k] > 0}[bad]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "mpee_ref-mpee", "format_version": "1"})
    with pytest.raises(ValueError, match=r"model.safetensors.*(NaN or Inf|non-float \['exits.0.classifier.weight)"):
        load_mpee(folder)


def test_nan_in_an_encoder_folder_is_refused_at_load_and_convert(tiny, tmp_path):
    folder = _copy(tiny["enc"], tmp_path / "e")
    state = _weights(folder)
    state["pooler.dense.bias"][3] = float("inf")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "mpee_ref", "format_version": "1"})
    with pytest.raises(ValueError, match="NaN or Inf values .*pooler.dense.bias"):
        load_encoder(folder)
    (folder / "model.safetensors").unlink()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})    # as an HF folder
    with pytest.raises(ValueError, match="NaN or Inf values"):
        convert_checkpoint(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_huge_vocab_size_is_refused_before_allocating(mpee_folder, tiny, tmp_path, monkeypatch):
    built = []
    real_init = mpee_ckpt.MPEEModel.__init__

    def record(self, *a, **k):
        built.append(torch.empty(()).device.type)           # "meta" for the shape-only skeleton
        real_init(self, *a, **k)

    monkeypatch.setattr(mpee_ckpt.MPEEModel, "__init__", record)
    for src in (mpee_folder, tiny["enc"]):
        folder = _copy(src, tmp_path / src.name)
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "vocab_size": 10**9}))
        with pytest.raises(ValueError, match=r"(mis-shaped|wrong shapes).*word_embeddings"):
            load_mpee(folder)
    assert set(built) <= {"meta"}


def test_vocab_longer_than_the_embedding_is_refused_at_load(tiny, tmp_path):
    folder = _copy(tiny["enc"], tmp_path / "e")
    (folder / "vocab.txt").write_text((folder / "vocab.txt").read_text() + "extra1\nextra2\n")
    with pytest.raises(ValueError, match=r"vocab.txt: 101 tokens but .*config.json has vocab_size 99"):
        load_encoder(folder)


@pytest.mark.parametrize("name, key, value, match", [
    ("mpee_config.json", "layer_exit", "false", "layer_exit must be bool, got str"),
    ("mpee_config.json", "threshold", "0.5", "threshold must be float, got str"),
    ("mpee_config.json", "prune_layers", "2,4", "prune_layers must be tuple"),
    ("mpee_config.json", "num_labels", 2.0, "num_labels must be int, got float"),
    ("config.json", "hidden_dropout_prob", "0.1", "hidden_dropout_prob must be float, got str"),
    ("config.json", "vocab_size", 1e9, "vocab_size must be int, got float"),
])
def test_config_types_are_strict_and_errors_name_the_file(mpee_folder, tmp_path, name, key, value, match):
    folder = _copy(mpee_folder, tmp_path / "m")
    d = json.loads((folder / name).read_text())
    (folder / name).write_text(json.dumps({**d, key: value}))
    with pytest.raises(ValueError, match=f"{name}: .*{match}"):
        load_mpee(folder)


def test_infer_refuses_string_numbers(mpee_folder):
    model = load_mpee(mpee_folder)
    with pytest.raises(ValueError, match="threshold must be float, got str"):
        model.infer(["good movie"], threshold="0.5")
    with pytest.raises(ValueError, match="layer_exit must be bool"):
        model.infer(["good movie"], layer_exit="false")


def test_hf_initializer_range_error_names_the_file(tiny, tmp_path):
    folder = _copy(tiny["enc"], tmp_path / "hf")
    (folder / "model.safetensors").write_bytes((tiny["enc"] / "model.safetensors").read_bytes())
    save_file(_weights(folder), str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "initializer_range": "0.02"}))
    with pytest.raises(ValueError, match=r"config.json: initializer_range must be a number"):
        convert_checkpoint(folder, tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "hostile_pickle", "wrong_format"])
def test_damaged_train_state_is_one_line_naming_the_file(tiny, tmp_path, capsys, damage):
    out = tmp_path / "r"
    train_model(_args(tiny, out, stop_after_steps=1))
    path = out / "checkpoint-1" / "train_state.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a zip")
    elif damage == "hostile_pickle":
        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))
        path.write_bytes(pickle.dumps(Evil(), protocol=2))
    else:
        torch.save({"format": "something-else"}, path)
    capsys.readouterr()
    rc, err = _cli(capsys, "train", "--model", str(tiny["enc"]), "--task", "sst-2", "--data-dir", str(tiny["data"]),
                   "--out", str(out), "--batch-size", "4", "--lr", "1e-3", "--warmup-ratio", "0",
                   "--max-train-examples", "8", "--max-eval-examples", "4", "--log-every", "1", "--max-steps", "2",
                   "--save-every", "1", "--resume", "--no-progress")
    assert rc == 2 and len(err) == 1 and str(path) in err[0], err
    assert not (tmp_path / "pwned").exists()


# ============================================================================ run folders
@pytest.fixture(scope="module")
def stopped_run(tiny) -> Path:
    """A run stopped (resumably) after step 1."""
    out = tiny["root"] / "stopped"
    train_model(_args(tiny, out, stop_after_steps=1))
    return out


@pytest.mark.parametrize("change, field", [
    (dict(overrides={"threshold": 0.1}), "overrides"), (dict(ablate=("wsd",)), "ablate"),
    (dict(preset="authors"), "preset"), (dict(seed=7), "seed"), (dict(lr=1e-4), "lr"),
    (dict(mode="plain"), "mode"), (dict(max_train_examples=6), "max_train_examples"),
])
def test_resume_refuses_a_different_run_naming_the_field(tiny, stopped_run, change, field):
    with pytest.raises(ValueError, match=f"different run; differing fields.*{field}"):
        train_model(_args(tiny, stopped_run, resume=True, **change))


def test_resume_refuses_other_model_or_data_contents(tiny, stopped_run, tmp_path):
    other_enc = make_tiny_encoder(tmp_path / "enc2", dropout=0.0)            # other config.json
    with pytest.raises(ValueError, match="differing fields.*: model: "):
        train_model(_args(tiny, stopped_run, resume=True, model=str(other_enc)))
    other_data = make_tiny_sst2(tmp_path / "data2", n_train=12)
    with pytest.raises(ValueError, match="differing fields.*: data_dir: "):
        train_model(_args(tiny, stopped_run, resume=True, data_dir=str(other_data)))
    assert load_train_state(stopped_run / "checkpoint-1")["step"] == 1            # untouched
    # the same contents under another path are the same run
    moved = _copy(tiny["data"], tmp_path / "data_moved")
    saved = json.loads(load_train_state(stopped_run / "checkpoint-1")["identity"])
    now = run_identity(_args(tiny, stopped_run, data_dir=str(moved)), model_fingerprint(_copy(tiny["enc"], tmp_path / "e")))
    assert identity_diff(saved, now) == {}


def test_checkpoints_without_identity_compare_their_saved_args(stopped_run, tiny):
    state = load_train_state(stopped_run / "checkpoint-1")
    del state["identity"]
    ident = run_identity(_args(tiny, stopped_run, resume=True), None)
    note = check_resume(state, stopped_run / "checkpoint-1", ident, _args(tiny, stopped_run, resume=True))
    assert "predates run identities" in note
    with pytest.raises(ValueError, match="differing fields.*seed: 42 then, 3 now"):
        check_resume(state, stopped_run / "checkpoint-1", ident, _args(tiny, stopped_run, resume=True, seed=3))


def test_fresh_run_into_an_occupied_folder_needs_overwrite(tiny, stopped_run, reference, tmp_path):
    with pytest.raises(ValueError, match="unfinished run .checkpoint-1.; continue it with --resume"):
        train_model(_args(tiny, stopped_run))
    with pytest.raises(ValueError, match="holds a finished run"):
        train_model(_args(tiny, reference["out"], seed=3))
    with pytest.raises(ValueError, match="finished run .final/.* nothing to resume"):
        train_model(_args(tiny, reference["out"], resume=True))
    with pytest.raises(ValueError, match="no checkpoint under .*nothing to resume"):
        train_model(_args(tiny, tmp_path / "empty", resume=True))
    claimed = tmp_path / "claimed"                              # run.json of another run, no checkpoint yet
    claimed.mkdir()
    (claimed / "run.json").write_text((stopped_run / "run.json").read_text())
    with pytest.raises(ValueError, match="run.json: this folder belongs to another run .*seed: 42 then, 9 now"):
        train_model(_args(tiny, claimed, seed=9))
    # --overwrite: the old run's files go, the new run is whole
    out = tmp_path / "over"
    train_model(_args(tiny, out, max_steps=1))
    old = json.loads((out / "run.json").read_text())["identity"]
    train_model(_args(tiny, out, seed=5), overwrite=True)
    new = json.loads((out / "train_summary.json").read_text())
    assert new["args"]["seed"] == 5 and new["steps"] == 2 and old["seed"] == 42
    assert json.loads((out / "final" / "train_summary.json").read_text())["run"]["seed"] == 5
    assert [json.loads(l)["event"] for l in (out / "log.jsonl").read_text().splitlines()][0] == "start"
    assert sum(json.loads(l)["event"] == "start" for l in (out / "log.jsonl").read_text().splitlines()) == 1


def test_every_checkpoint_records_the_run_identity(stopped_run, tiny):
    ident = json.loads(load_train_state(stopped_run / "checkpoint-1")["identity"])
    assert ident["task"] == "sst-2" and ident["seed"] == 42 and ident["preset"] == "paper"
    assert ident["ablate"] == [] and ident["overrides"] == {} and ident["code_version"].startswith("0.")
    assert len(ident["model"]["weights_sha256"]) == 64 and len(ident["data_dir"]["train_sha256"]) == 64
    assert ident == json.loads((stopped_run / "run.json").read_text())["identity"]


def test_a_second_writer_is_refused(tiny, tmp_path):
    out = tmp_path / "locked"
    lock = RunLock(out).acquire()
    try:
        with pytest.raises(ValueError, match=f"another train .PID {os.getpid()}. is writing"):
            train_model(_args(tiny, out))
    finally:
        lock.release()
    # a writer killed by SIGKILL leaves no stale lock (the kernel drops flock locks)
    assert _in_child(lambda: (RunLock(out).acquire(), os.kill(os.getpid(), signal.SIGKILL))) == -signal.SIGKILL
    RunLock(out).acquire().release()


def test_save_checkpoint_replaces_a_checkpoint_of_the_same_step(tiny, tmp_path):
    a, b = load_mpee(tiny["enc"], seed=1), load_mpee(tiny["enc"], seed=2)
    state = {"format": "mpee_ref-train-state-1", "step": 3, "world_size": 1, "optimizer": {}, "scheduler": {},
             "rng_cpu": [torch.get_rng_state()], "args": "{}"}
    save_checkpoint(tmp_path, a, state)
    save_checkpoint(tmp_path, b, state)
    assert torch.equal(_weights(tmp_path / "checkpoint-3")["exits.0.classifier.weight"],
                       b.state_dict()["exits.0.classifier.weight"])


# ============================================================================ convert
def test_convert_refuses_a_foreign_destination_and_is_atomic(tiny, tmp_path, capsys, monkeypatch):
    hf = _copy(tiny["enc"], tmp_path / "hf")
    save_file(_weights(hf), str(hf / "model.safetensors"), metadata={"format": "pt"})
    other = _copy(hf, tmp_path / "other_hf")                          # another HF checkpoint folder as DST
    rc, err = _cli(capsys, "convert", str(hf), str(other))
    assert rc == 2 and len(err) == 1 and "not a previous mpee_ref conversion" in err[0] and "--overwrite" in err[0]
    assert (other / "model.safetensors").read_bytes() == (hf / "model.safetensors").read_bytes()   # untouched
    dst = tmp_path / "dst"
    assert _cli(capsys, "convert", str(hf), str(dst))[0] == 0
    assert oct((dst / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert _cli(capsys, "convert", str(hf), str(dst))[0] == 0          # a previous conversion is replaced
    before = {p.name: p.read_bytes() for p in dst.iterdir()}
    # disk full while re-converting with another vocabulary: the old folder stays whole
    (hf / "vocab.txt").write_text((hf / "vocab.txt").read_text().replace("good", "goood"))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    rc, err = _cli(capsys, "convert", str(hf), str(dst))
    assert rc == 2 and "No space left" in err[0]
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert _cli(capsys, "convert", str(hf), str(other), "--overwrite")[0] == 0
    assert load_tokenizer(other).tokenize("goood") == ["goood"]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# ============================================================================ smaller items
def test_init_skipping_is_local_to_the_building_thread():
    torch.manual_seed(0)
    expected = torch.nn.Linear(5, 3).weight.detach().clone()
    got = {}

    def build() -> None:
        torch.manual_seed(0)
        got["w"] = torch.nn.Linear(5, 3).weight.detach().clone()

    with _skip_init():
        t = threading.Thread(target=build)
        t.start()
        t.join()
    assert torch.equal(got["w"], expected)


def test_evaluate_refuses_a_model_trained_on_another_task(reference, tiny, capsys):
    final = reference["out"] / "final"
    assert json.loads((final / "task.json").read_text())["task"] == "sst-2"
    rc, err = _cli(capsys, "evaluate", "--model", str(final), "--task", "mrpc", "--data-dir", str(tiny["data"]))
    assert rc == 2 and len(err) == 1 and "trained on sst-2, not mrpc" in err[0]


@pytest.mark.parametrize("flag, value", [("--eval-every", "-1"), ("--max-grad-norm", "nan"), ("--lr", "inf"),
                                         ("--save-every", "-2"), ("--weight-decay", "-1"),
                                         ("--head-lr-mult", "inf")])
def test_bad_numeric_flags_are_one_line(tiny, tmp_path, capsys, flag, value):
    rc, err = _cli(capsys, "train", "--model", str(tiny["enc"]), "--task", "sst-2", "--data-dir", str(tiny["data"]),
                   "--out", str(tmp_path / "o"), flag, value)
    assert rc == 2 and len(err) == 1 and flag in err[0]
    assert not (tmp_path / "o").exists()


def test_ablation_train_args_cannot_move_the_row(tiny):
    from mpee_ref.experiments.ablation import train_args_from_cli
    with pytest.raises(ValueError, match="--out are set by ablation"):
        train_args_from_cli(str(tiny["enc"]), "sst-2", str(tiny["data"]), "rows/x", "--out elsewhere")


def test_log_json_is_standard():
    assert json.dumps(finite_json({"a": float("inf"), "b": [1.0, float("nan")]}), allow_nan=False) == \
        '{"a": null, "b": [1.0, null]}'


def test_text_files_lone_cr_and_non_utf8(tmp_path):
    from mpee_ref.data import read_glue
    d = tmp_path / "SST-2"
    d.mkdir()
    (d / "dev.tsv").write_bytes(b"sentence\tlabel\na good\rfilm\t1\nbad\t0\n")
    ex = read_glue("sst-2", tmp_path, "dev")
    assert [e.text_a for e in ex] == ["a good\rfilm", "bad"] and [e.label for e in ex] == [1, 0]
    (d / "dev.tsv").write_bytes(b"sentence\tlabel\nna\xefve\t1\n")
    with pytest.raises(ValueError, match=r"dev.tsv: not UTF-8"):
        read_glue("sst-2", tmp_path, "dev")
    from mpee_ref.io.tokenizer import read_vocab
    (tmp_path / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n\xff\n")
    with pytest.raises(ValueError, match=r"vocab.txt: not UTF-8"):
        read_vocab(tmp_path / "vocab.txt")


def test_tokenizer_is_safe_across_threads(tiny):
    tok = load_tokenizer(tiny["enc"])
    text = ["the movie was good " * 10]
    want = {n: tok(text, max_length=n).input_ids.tolist() for n in (5, 9)}
    bad = []

    def worker(n: int) -> None:
        for _ in range(200):
            if tok(text, max_length=n).input_ids.tolist() != want[n]:
                bad.append(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (5, 9, 5, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
