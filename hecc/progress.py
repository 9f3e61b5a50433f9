"""Progress of long runs on stderr: one bar that updates in place on a terminal (tqdm), a few
plain lines in a log, nothing under ``-q``.

A progress object is a callable taking a message (a step that starts: "generating keys") with a
``count(done, total, unit)`` method for work that is counted (inputs, batches). The Python API
accepts any callable taking a message; ``count_progress`` turns counts into messages for those.
"""
from __future__ import annotations

import sys
import time


class Progress:
    """stderr progress: a tqdm bar on a terminal, otherwise a line per tenth of the work (and
    at least every LOG_SECONDS), so logs stay short."""

    LOG_SECONDS = 30.0

    def __init__(self, stream=None, terminal: bool | None = None):
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.bar = None
        self.key = None
        self.logged = (-1, 0.0)

    def __call__(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(f"hecc: {message}", file=self.stream)
        else:
            self.stream.write(f"hecc: {message}\n")
            self.stream.flush()

    def count(self, done: int, total: int, unit: str) -> None:
        if (total, unit) != self.key:
            self.close()
            self.key, self.logged = (total, unit), (-1, time.monotonic())
            if self.terminal:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit=f" {unit}", file=self.stream, desc="hecc",
                                dynamic_ncols=True, leave=True)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if done >= total:
                self.close()
            return
        tenth, now = done * 10 // max(total, 1), time.monotonic()
        if done >= total or tenth > self.logged[0] or now - self.logged[1] >= self.LOG_SECONDS:
            self(f"{unit} {done}/{total} done")
            self.logged = (tenth, now)
        if done >= total:
            self.key = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.key = None


def count_progress(progress, done: int, total: int, unit: str) -> None:
    """Report counted work to ``progress`` (a Progress, a plain callable, or None)."""
    if progress is None:
        return
    count = getattr(progress, "count", None)
    if count is not None:
        count(done, total, unit)
    else:
        progress(f"{unit} {done}/{total} done")


def notice(line: str) -> None:
    """One line for the user on stderr, as ``hecc: LINE`` (retried work, reduced parallelism)."""
    sys.stderr.write(f"hecc: {line}\n")
    sys.stderr.flush()
