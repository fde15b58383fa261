"""What a training run reports while it runs, and how it hears Ctrl-C: the progress line on stderr, the
``log.jsonl`` event log, and the SIGINT/SIGTERM flag the step loop polls."""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .runs import Interrupted, finite_json


class Progress:
    """A ``\\r``-updated line on stderr (a full line every ``log_every`` steps when not a terminal)."""

    def __init__(self, total: int, enabled: bool, log_every: int):
        self.total, self.enabled, self.log_every = total, enabled, log_every
        self.tty = sys.stderr.isatty()
        self.t0, self.seen0 = time.perf_counter(), None

    def update(self, step: int, loss: float, seen: int) -> None:
        if not self.enabled:
            return
        if self.seen0 is None:
            self.seen0, self.t0 = seen, time.perf_counter()
            return
        dt = time.perf_counter() - self.t0
        rate = (seen - self.seen0) / dt if dt > 0 else 0.0
        steps_per_s = rate / max(1, seen / max(1, step))
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        line = f"step {step}/{self.total} | loss {loss:.4f} | {rate:.1f} ex/s | ETA {eta_s}"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif step % self.log_every == 0 or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)


class RunLog:
    """``out/log.jsonl``, one JSON object per event (standard JSON: NaN/Inf become null); a no-op on the
    ranks that do not write (``path`` None)."""

    def __init__(self, path: Path | None):
        self.file = path.open("a", encoding="utf-8") if path is not None else None

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(finite_json(record), allow_nan=False) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class InterruptFlag:
    """SIGINT and SIGTERM while training: the first one is recorded (the loop finishes its step, saves a
    checkpoint and raises :class:`~mpee_ref.experiments.runs.Interrupted`), a second one raises at once.
    :meth:`install` replaces the handlers (main thread only), :meth:`restore` puts the old ones back."""

    def __init__(self) -> None:
        self.count = 0
        self.signum = signal.SIGINT
        self.old: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.signum = signum
        if self.count > 1:
            raise Interrupted(signum)

    @property
    def raised(self) -> bool:
        return self.count > 0

    def install(self) -> "InterruptFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.old[sig] = signal.signal(sig, self.handle)
            except ValueError:                                   # not the main thread
                pass
        return self

    def restore(self) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
