"""Folder-level atomic writes: a reader only ever sees a whole, consistent folder.

A folder (a converted checkpoint, an MPEE model, a training checkpoint) is several files that must
agree with one another: weights, ``config.json``, ``vocab.txt``... Replacing them one file at a time
leaves a mix of old and new files if the process dies half-way (SIGKILL, power loss, disk full). So
every such folder is written whole under a temporary sibling name, then put in place by one rename:

* the destination does not exist: ``rename(tmp, dst)`` (atomic);
* it exists: on Linux ``renameat2(RENAME_EXCHANGE)`` swaps the two folders atomically, then the old
  one (now under the temporary name) is removed. Where that call is missing the old folder is first
  renamed aside (``.<name>.old-<pid>``): a crash between the two renames leaves no ``dst`` and both
  siblings on disk, never a mixed folder.

A single text file (``run.json``, ``train_summary.json``, a result table) is written the same way with
:func:`atomic_text`: a temporary sibling, then ``os.replace``.

Temporary siblings start with a dot, so readers that list ``checkpoint-*`` or open ``final/`` never
see them; :func:`remove_stale_siblings` clears those a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, f"renameat2({a}, {b}): {os.strerror(err)}")


def replace_folder(src: Path, dst: Path) -> None:
    """Put the complete folder ``src`` at ``dst`` (replacing any folder there) in one step."""
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.rename(src, dst)
        return
    if _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)       # src now holds the old folder
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(dst, old)
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(dst: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``dst``; on success it replaces ``dst`` whole.

    On any exception (disk full, Ctrl-C) the temporary folder is removed and ``dst`` is untouched.
    The folder and its files get the usual permissions (``0777``/``0666 & ~umask``), not the 0700/0600
    that ``mkdtemp`` and safetensors give.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp-"))
    try:
        yield tmp
        mask = _umask()
        for p in tmp.rglob("*"):                    # safetensors and mkdtemp create 0600/0700 entries
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        replace_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_siblings(folder: str | Path, *patterns: str) -> list[Path]:
    """Remove what a killed writer left in ``folder``: the temporary siblings (``.<name>.tmp-*`` and
    ``.<name>.old-*`` folders, ``.<name>.tmp`` files) of every ``name`` matching one of the glob
    ``patterns`` (``"final"``, ``"checkpoint-*"``). Call it only while no writer is live."""
    removed = []
    for p in sorted(Path(folder).glob(".*")):
        name, dot, tail = p.name[1:].rpartition(".")
        if not dot or not (tail == "tmp" or tail.startswith(("tmp-", "old-"))):
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling and ``os.replace``: a reader sees the
    old file or the new one, never half of it. The parent folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
