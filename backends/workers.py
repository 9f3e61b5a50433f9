"""Forked worker processes on this machine, for any backend: they fail loudly and never outlive
the run.

``forked_map(fn, items, workers)`` runs ``fn`` on each item in forked children (which inherit
the parent's keys, SEAL objects and arrays, so nothing is serialized to start them) and yields
the results in order; ``forked_calls`` starts them and lets the parent work on meanwhile. ``fn``
may be any callable, a closure over the parent's data included: the children inherit it (only
the items and the results are pickled). Rules:
- a worker that dies (the kernel's out-of-memory killer, a SIGKILL) ends the run within a second
  with ``WorkerDied``, which names the signal and the likely cause; the rest are killed;
- workers die with their parent (``PR_SET_PDEATHSIG``), so a parent killed by SIGKILL leaves no
  worker computing;
- when the parent unwinds (an error, SIGINT, SIGTERM), the workers are killed before it goes on;
- workers leave SIGTERM at its default and ignore SIGINT (the parent handles both).
Data that is too large to return through a pipe goes through ``anonymous_file()``: a file on disk
with no name, which vanishes when the last process holding it ends, however it ends.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import itertools
import multiprocessing
import os
import signal
import struct
import tempfile
from concurrent.futures.process import BrokenProcessPool

from ..errors import HeccError, WorkerDied

PR_SET_PDEATHSIG = 1


def _init_worker(parent: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


_INHERITED: dict[int, object] = {}  # the callables of running forked calls, which the children inherit
_KEYS = itertools.count()


def _call_inherited(key: int, item):
    return _INHERITED[key](item)


def forked_map(fn, items, workers: int, memory_hint: str = ""):
    """Yield ``fn(item)`` for each item, in order, computed by ``workers`` forked processes."""
    with forked_calls(fn, items, workers, memory_hint) as results:
        yield from results()


@contextlib.contextmanager
def forked_calls(fn, items, workers: int, memory_hint: str = ""):
    """Start ``fn(item)`` for each item in ``workers`` forked processes and yield a function
    that yields the results in order (waiting for each), so that the caller can work on
    meanwhile; leaving the block kills the workers still running."""
    items = list(items)
    key = next(_KEYS)
    _INHERITED[key] = fn
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(items))), mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker, initargs=(os.getpid(),))
    processes = {}
    try:
        futures = [executor.submit(_call_inherited, key, item) for item in items]
        processes = dict(getattr(executor, "_processes", None) or {})

        def results():
            for future in futures:
                try:
                    yield future.result()
                except BrokenProcessPool:
                    raise WorkerDied(_death_message(processes, memory_hint)) from None
        yield results
    finally:
        _INHERITED.pop(key, None)
        processes.update(getattr(executor, "_processes", None) or {})
        for process in processes.values():
            with contextlib.suppress(Exception):
                if process.is_alive():
                    process.kill()
        executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def beside(fn, item, memory_hint: str = ""):
    """``fn(item)`` computed in a forked process while the block runs (in this process, when
    called, if there is one core; nothing if ``item`` is None); yields a function returning it,
    or [] when there was nothing to compute or the forked call failed (the caller goes on
    without it: ``fn`` returns a list)."""
    if item is None:
        yield lambda: []
        return
    if (os.cpu_count() or 1) < 2:
        yield lambda: fn(item)
        return

    def guarded(arg):
        try:
            return fn(arg)
        except Exception:  # the caller goes on without it
            return []
    with forked_calls(guarded, [item], 1, memory_hint) as results:
        yield lambda: next(iter(results()))


def _death_message(processes: dict, memory_hint: str) -> str:
    codes, unseen = [], 0
    for process in processes.values():
        process.join(timeout=1)
        if process.exitcode is None:
            unseen += 1  # reaped before the pool saw it: its status is lost
        elif process.exitcode != 0:
            codes.append(process.exitcode)
    # the pool sends SIGTERM to the workers left once one has died: name the other death first
    killed = sorted((-c for c in codes if c < 0), key=lambda sig: sig == signal.SIGTERM)
    if killed and (killed[0] != signal.SIGTERM or not unseen):
        name = signal.Signals(killed[0]).name
        why = (f"a worker process was killed by {name}"
               + (", most likely by the kernel's out-of-memory killer" if killed[0] == signal.SIGKILL else ""))
    elif unseen:
        why = ("a worker process was killed (its exit status was lost; a SIGKILL from the kernel's "
               "out-of-memory killer is the usual cause)")
    else:
        why = f"a worker process exited unexpectedly (exit code {codes[0] if codes else 'unknown'})"
    return (f"{why}; the run was stopped. {memory_hint} Run with --workers 1, fewer inputs at a time, or "
            "on a machine with more memory").replace("  ", " ")


def anonymous_file():
    """A temporary file with no name in any folder (it vanishes with its last holder)."""
    return tempfile.TemporaryFile()


def write_record(f, data: bytes) -> None:
    f.write(struct.pack("<Q", len(data)))
    f.write(data)


def read_record(f) -> bytes:
    head = f.read(8)
    if len(head) != 8:
        raise HeccError("a worker's results are incomplete")
    size, = struct.unpack("<Q", head)
    data = f.read(size)
    if len(data) != size:
        raise HeccError("a worker's results are incomplete")
    return data
