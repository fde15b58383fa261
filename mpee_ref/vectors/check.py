r"""Check a port against the golden vectors: ``python -m mpee_ref.vectors check --adapter my_port.py``.

A port supplies an *adapter*: a Python file (or importable module) that maps each manifest entry to a
function ``fn(inputs, attributes) -> {tensor name: array}``, either as a dict ``ENTRIES`` or as
module-level functions named after the entries. ``inputs`` holds the entry's ``input`` and ``param``
tensors as NumPy arrays (floats cast to the precision under test; ints and bools as stored);
``attributes`` is the entry's ``attributes`` from the manifest. Every ``output`` tensor must be returned;
``intermediate`` tensors are compared when returned (they locate the first step that diverges).

Rules applied to each returned tensor (docs/PORTING.md, "Tolerances"):

* integer and bool goldens: same shape, equal values;
* float goldens: ``|port - golden| <= atol + rtol * |golden|`` with the entry's pair for the precision;
* mask slots: where the golden is ``finfo(float64).min`` (padding in ``mask_bias`` and ``scores``) the port
  may hold any value ``<= -1000`` (a -1e4 mask plus the score, ``finfo(float32).min``, ``-inf``): those slots are not compared;
* ``valid``: a tensor whose manifest spec names a ``valid`` mask (padded-batch traces) is compared only on
  the slots where that mask is 1 (``valid_offset`` drops leading mask columns, e.g. 1 for [CLS]).

This file imports only NumPy and ``safetensors.numpy`` and runs as a script as well:
``python mpee_ref/vectors/check.py --adapter my_port.py --precision float32``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

DEFAULT_VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"
MASK_SLOT = -1e300          # golden values below this are the padding-mask constant finfo(float64).min
MASK_PORT_MAX = -1e3        # ... and the port may hold any value <= this there (exp(-1000) = 0)

Adapter = Mapping[str, Callable[[dict, dict], Mapping[str, Any]]]


# ============================================================================ loading
class GoldenVectors:
    """The manifest plus every tensor, ``from`` copies resolved and ``external`` weights loaded on demand."""

    def __init__(self, folder: str | Path = DEFAULT_VECTORS, weights: str | Path | None = None):
        from safetensors.numpy import load_file
        folder = Path(folder)
        mf = folder / "manifest.json"
        if not mf.exists():
            raise FileNotFoundError(f"{mf}: no manifest (is --vectors the tests/vectors folder?)")
        self.manifest: dict[str, Any] = json.loads(mf.read_text(encoding="utf-8"))
        self.entries: dict[str, dict[str, Any]] = self.manifest["entries"]
        self.stored: dict[str, np.ndarray] = load_file(str(folder / self.manifest["tensor_file"]))
        self.weights = None if weights is None else Path(weights)
        self._external: dict[str, np.ndarray] | None = None

    def spec(self, entry: str, name: str) -> dict[str, Any]:
        return self.entries[entry]["tensors"][name]

    def needs_weights(self, entry: str) -> bool:
        return any(s.get("formula") == "external" for s in self.entries[entry]["tensors"].values())

    def _external_file(self) -> dict[str, np.ndarray]:
        if self._external is None:
            from safetensors.numpy import load_file
            if self.weights is None or not (self.weights / "model.safetensors").exists():
                raise FileNotFoundError(f"real-weight entries need the converted MiniLM-L6 folder; "
                                        f"{self.weights}/model.safetensors not found "
                                        f"(run `python -m mpee_ref fetch-weights`, pass --weights)")
            self._external = load_file(str(self.weights / "model.safetensors"))
        return self._external

    def tensor(self, entry: str, name: str) -> np.ndarray:
        """One tensor as the generator held it (``from`` and ``external`` resolved)."""
        spec = self.spec(entry, name)
        if spec.get("formula") == "from":
            src_entry, _, src_name = spec["source"].partition("/")
            return self.tensor(src_entry, src_name)
        if spec.get("formula") == "external":
            arr = self._external_file()[spec["source"]]
            if list(arr.shape) != spec["shape"]:
                raise ValueError(f"{self.weights}/model.safetensors: {spec['source']} has shape "
                                 f"{list(arr.shape)}, the manifest expects {spec['shape']}")
            return arr
        return self.stored[f"{entry}/{name}"]

    def inputs(self, entry: str, precision: str = "float64") -> dict[str, np.ndarray]:
        """The entry's input and param tensors, floats cast to ``precision``."""
        out = {}
        for name, spec in self.entries[entry]["tensors"].items():
            if spec["role"] in ("input", "param"):
                x = np.asarray(self.tensor(entry, name))
                out[name] = x.astype(precision) if x.dtype.kind == "f" else x.copy()
        return out

    def goldens(self, entry: str) -> dict[str, np.ndarray]:
        return {n: self.tensor(entry, n) for n, s in self.entries[entry]["tensors"].items()
                if s["role"] in ("output", "intermediate")}


# ============================================================================ comparing
@dataclass
class TensorResult:
    name: str
    ok: bool
    detail: str = ""
    ratio: float = 0.0          # worst |err| / (atol + rtol |golden|); <= 1 passes


@dataclass
class EntryResult:
    entry: str
    status: str                 # "pass", "fail", "missing", "skipped"
    detail: str = ""
    tensors: list[TensorResult] = field(default_factory=list)

    @property
    def failures(self) -> list[TensorResult]:
        return [t for t in self.tensors if not t.ok]


def compare(name: str, got: Any, want: np.ndarray, tol: Mapping[str, float],
            valid: np.ndarray | None = None) -> TensorResult:
    """One tensor under the rules in this module's docstring."""
    try:
        got = np.asarray(got)
    except Exception as exc:  # noqa: BLE001 - any odd adapter value is reported, not raised
        return TensorResult(name, False, f"not an array: {exc}")
    if got.shape != want.shape:
        return TensorResult(name, False, f"shape {list(got.shape)}, golden {list(want.shape)}")
    sel = np.ones(want.shape, bool) if valid is None else valid
    if want.dtype.kind in "biu":
        if got.dtype.kind not in "biu":
            return TensorResult(name, False, f"dtype {got.dtype}: integer/bool expected (exact comparison)")
        bad = (got.astype(np.int64) != want.astype(np.int64)) & sel
        if bad.any():
            i = tuple(int(x) for x in np.argwhere(bad)[0])
            return TensorResult(name, False, f"{int(bad.sum())} of {bad.size} differ (exact); first at {list(i)}: "
                                             f"{got[i].item()} != golden {want[i].item()}", float("inf"))
        return TensorResult(name, True)
    got, want = got.astype(np.float64), want.astype(np.float64)
    masked = (want < MASK_SLOT) & sel
    if masked.any() and not (got[masked] <= MASK_PORT_MAX).all():
        return TensorResult(name, False, f"padding-mask slots must be <= {MASK_PORT_MAX:g}, got "
                                         f"{got[masked][got[masked] > MASK_PORT_MAX][:3].tolist()}", float("inf"))
    cmp = sel & ~masked
    if not np.isfinite(got[cmp]).all():
        return TensorResult(name, False, "non-finite values where the golden is finite", float("inf"))
    err = np.abs(got - want)
    bound = tol["atol"] + tol["rtol"] * np.abs(want)
    with np.errstate(divide="ignore", invalid="ignore"):                   # exact tolerance: bound 0
        ratio = np.where(cmp & (err > 0), err / bound, 0.0)
    worst = float(ratio.max()) if ratio.size else 0.0
    if worst > 1.0:
        i = tuple(int(x) for x in np.unravel_index(int(np.argmax(ratio)), ratio.shape))
        return TensorResult(name, False, f"{int((ratio > 1).sum())} of {ratio.size} outside tolerance; worst at "
                                         f"{list(i)}: {got[i]!r} vs golden {want[i]!r} ({worst:.3g}x the bound)",
                            worst)
    return TensorResult(name, True, "", worst)


def check_entry(vec: GoldenVectors, entry: str, fn: Callable, precision: str = "float64") -> EntryResult:
    """Run ``fn`` on the entry's inputs and compare every returned tensor."""
    e = vec.entries[entry]
    tol = e["tolerance"].get(precision)
    if tol is None:
        return EntryResult(entry, "skipped", f"not checked in {precision}: {e['tolerance'].get('note', '')}")
    if vec.needs_weights(entry):
        try:
            vec._external_file()
        except FileNotFoundError as exc:
            return EntryResult(entry, "skipped", str(exc))
    try:
        got = dict(fn(vec.inputs(entry, precision), json.loads(json.dumps(e["attributes"]))))
    except Exception:  # noqa: BLE001 - a crashing port is a failing port
        return EntryResult(entry, "fail", "adapter raised:\n" + traceback.format_exc(limit=3))
    goldens = vec.goldens(entry)
    res = EntryResult(entry, "pass")
    unknown = sorted(set(got) - set(goldens))
    missing = sorted(n for n, s in e["tensors"].items() if s["role"] == "output" and n not in got)
    if unknown:
        res.tensors.append(TensorResult("(names)", False, f"not in the manifest: {unknown[:5]}"))
    if missing:
        res.tensors.append(TensorResult("(names)", False, f"outputs not returned: {missing[:5]}"))
    for name in sorted(set(got) & set(goldens)):
        spec = e["tensors"][name]
        valid = None
        if "valid" in spec:
            mask = vec.tensor(entry, spec["valid"])[..., spec.get("valid_offset", 0):] != 0
            valid = mask.reshape(mask.shape + (1,) * (goldens[name].ndim - mask.ndim))
            valid = np.broadcast_to(valid, goldens[name].shape)
        res.tensors.append(compare(name, got[name], goldens[name], tol, valid))
    if res.failures:
        res.status = "fail"
    return res


# ============================================================================ adapters and the command line
def load_adapter(spec: str) -> Adapter:
    """``path/to/file.py`` or ``package.module``; its ``ENTRIES`` dict, else functions named after entries."""
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"--adapter {spec}: no such file")
        ms = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(ms)
        sys.modules[path.stem] = mod
        ms.loader.exec_module(mod)
    else:
        mod = importlib.import_module(spec)
    if hasattr(mod, "ENTRIES"):
        return dict(mod.ENTRIES)
    return {k: v for k, v in vars(mod).items() if callable(v) and (k.startswith("eq") or k.startswith("e2e"))}


def run(adapter: Adapter, precision: str = "float64", vectors: str | Path = DEFAULT_VECTORS,
        weights: str | Path | None = None, entries: list[str] | None = None,
        golden: GoldenVectors | None = None) -> list[EntryResult]:
    """Check every entry (or ``entries``) of the manifest; entries the adapter lacks are ``missing``."""
    vec = golden if golden is not None else GoldenVectors(vectors, weights)
    names = sorted(vec.entries) if entries is None else entries
    unknown = sorted(set(names) - set(vec.entries))
    if unknown:
        raise ValueError(f"entries not in the manifest: {unknown}")
    return [check_entry(vec, n, adapter[n], precision) if n in adapter else EntryResult(n, "missing", "no adapter")
            for n in names]


def report(results: list[EntryResult], verbose: bool = False) -> str:
    lines = []
    for r in results:
        worst = max((t.ratio for t in r.tensors), default=0.0)
        head = f"{r.status.upper():8s} {r.entry}"
        if r.status == "pass":
            lines.append(f"{head}  ({len(r.tensors)} tensors, worst {worst:.2g} of the tolerance)")
        else:
            lines.append(f"{head}  {r.detail}".rstrip())
        for t in (r.tensors if verbose else r.failures):
            lines.append(f"    {t.name}: " + (f"ok ({t.ratio:.2g} of the tolerance)" if t.ok else t.detail))
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "missing", "skipped")}
    lines.append(" ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpee_ref.vectors", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="run a port's adapter against the golden vectors")
    c.add_argument("--adapter", required=True, help="adapter file (my_port.py) or module (mpee_ref.numpy_ref.adapter)")
    c.add_argument("--precision", choices=("float64", "float32"), default="float64")
    c.add_argument("--vectors", default=str(DEFAULT_VECTORS), help="folder with manifest.json")
    c.add_argument("--weights", default="weights/minilm-l6", help="converted MiniLM-L6 folder (real-weight entries)")
    c.add_argument("--entries", default=None, help="comma-separated entry names (default: all)")
    c.add_argument("--allow-missing", action="store_true", help="entries the adapter lacks do not fail the run")
    c.add_argument("-v", "--verbose", action="store_true", help="list every tensor with its worst error ratio")
    args = ap.parse_args(argv)
    results = run(load_adapter(args.adapter), args.precision, args.vectors, args.weights,
                  None if args.entries is None else args.entries.split(","))
    print(report(results, args.verbose))
    bad = {"fail"} | (set() if args.allow_missing else {"missing"})
    return 1 if any(r.status in bad for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
