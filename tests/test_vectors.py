"""Golden vectors (tests/vectors): the torch reference reproduces every entry; the files are fresh.

Regenerate after a deliberate change with ``python tools/make_vectors.py`` (docs/PORTING.md).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
VEC = REPO / "tests" / "vectors"
REGEN = "regenerate with `python tools/make_vectors.py` (and commit tests/vectors)"


def _generator():
    spec = importlib.util.spec_from_file_location("make_vectors", REPO / "tools" / "make_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _generator()
MANIFEST = json.loads((VEC / "manifest.json").read_text(encoding="utf-8"))
TENSORS = load_file(str(VEC / "vectors.safetensors"))


def assert_close(name: str, got: np.ndarray, want: np.ndarray, tol: dict) -> None:
    got = np.asarray(got)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, golden {want.shape}"
    if want.dtype.kind in "biu":
        assert np.array_equal(got.astype(want.dtype), want), f"{name}: {got} != golden {want}"
        return
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"], err_msg=name)


def test_format_version_is_current():
    with safe_open(str(VEC / "vectors.safetensors"), "np") as f:
        meta = f.metadata()
    for where, version in (("manifest.json", MANIFEST["format_version"]), ("vectors.safetensors", meta["format_version"])):
        assert str(version) == str(GEN.FORMAT_VERSION), (
            f"tests/vectors/{where} has format_version {version}, the generator writes {GEN.FORMAT_VERSION}: "
            f"the vectors are stale; {REGEN}")


def test_manifest_lists_every_tensor_with_its_shape():
    listed = {f"{e}/{n}": s for e, entry in MANIFEST["entries"].items() for n, s in entry["tensors"].items()}
    assert set(listed) == set(TENSORS), f"manifest and tensor file disagree; {REGEN}"
    for key, spec in listed.items():
        assert list(TENSORS[key].shape) == spec["shape"] and str(TENSORS[key].dtype) == spec["dtype"], key
    # every equation 1-15 has at least one entry
    covered = set()
    for entry in MANIFEST["entries"].values():
        for part in entry["equation"].replace(" ", "").split(","):
            lo, _, hi = part.partition("-")
            covered.update(range(int(lo), int(hi or lo) + 1))
    assert covered >= set(range(1, 16)), sorted(set(range(1, 16)) - covered)


def _rebuild(spec: dict) -> np.ndarray:
    """The manifest's formula text, implemented again here (not the generator's code)."""
    shape, p = tuple(spec["shape"]), spec["params"]
    n = int(np.prod(shape))
    if spec["formula"] == "sin":
        x = [p["offset"] + p["scale"] * np.sin(p["phase"] + p["freq"] * i + p["curv"] * float(i) * float(i))
             for i in range(n)]
    elif spec["formula"] == "floor_sin":
        x = [np.floor(p["levels"] * np.sin(p["phase"] + p["freq"] * i)) / p["levels"] for i in range(n)]
    elif spec["formula"] == "int_mod":
        x = [p["low"] + (p["mult"] * i + p["add"]) % p["modulus"] for i in range(n)]
    else:
        x = p["values"]
    return np.asarray(x).reshape(shape).astype(spec["dtype"])


def test_inputs_are_recreated_from_their_documented_formulas():
    checked = 0
    for e, entry in MANIFEST["entries"].items():
        for name, spec in entry["tensors"].items():
            stored = TENSORS[f"{e}/{name}"]
            if spec["formula"] is None:
                assert spec["role"] in ("output", "intermediate"), f"{e}/{name} has no formula"
                continue
            if spec["formula"] == "from":
                want = TENSORS[spec["source"]]
            else:
                want = _rebuild(spec)
                if "then" in spec:                      # input_ids: padding positions set to id 0
                    want = want * TENSORS[f"{e}/attention_mask"]
            # float64 sin of the same argument: equal up to the last bit of the platform's libm
            np.testing.assert_allclose(stored, want, rtol=1e-15, atol=1e-15, err_msg=f"{e}/{name}")
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("entry", sorted(MANIFEST["entries"]))
def test_torch_reproduces_entry(entry):
    spec = MANIFEST["entries"][entry]
    inputs = {k: torch.from_numpy(TENSORS[f"{entry}/{k}"].copy())
              for k, s in spec["tensors"].items() if s["role"] in ("input", "param")}
    got = GEN.COMPUTE[entry](inputs, spec["attributes"])
    wanted = {k for k, s in spec["tensors"].items() if s["role"] in ("output", "intermediate")}
    assert set(got) == wanted, f"{entry}: outputs changed {sorted(set(got) ^ wanted)}; {REGEN}"
    for k, v in got.items():
        assert_close(f"{entry}/{k}", v.detach().numpy(), TENSORS[f"{entry}/{k}"], spec["tolerance"]["float64"])


def test_e2e_vectors_show_early_exit_and_multi_layer_pruning():
    spec = MANIFEST["entries"]["e2e_infer"]
    B, L = len(GEN.E2E_LENGTHS), GEN.E2E_BERT["num_hidden_layers"]
    exits = [int(TENSORS[f"e2e_infer/s{b}/exit_layer"]) for b in range(B)]
    assert min(exits) < L and max(exits) == L, exits
    layers_pruning = [sum(f"s{b}/l{l}/fused_positions" in spec["tensors"] for l in range(1, L + 1)) for b in range(B)]
    assert max(layers_pruning) >= 2, layers_pruning
    b = layers_pruning.index(max(layers_pruning))
    widths = [TENSORS[f"e2e_infer/s{b}/l{l}/hidden"].shape[0] for l in range(1, exits[b] + 1)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < GEN.E2E_LENGTHS[b], widths


def test_regeneration_is_byte_for_byte(tmp_path):
    st, mf = GEN.generate(tmp_path, revision=MANIFEST["generator_revision"])
    for new, old in ((st, VEC / "vectors.safetensors"), (mf, VEC / "manifest.json")):
        assert new.read_bytes() == old.read_bytes(), f"{old.name} differs from a fresh generation: {REGEN}"


def test_vectors_are_small():
    size = sum(p.stat().st_size for p in VEC.iterdir())
    assert size < 2_000_000, f"tests/vectors is {size} bytes; keep it under 2 MB"
