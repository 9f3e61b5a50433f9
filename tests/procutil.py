"""Processes seen through /proc, for the fault tests: a process's children and descendants,
processes whose command line names a test folder, and waiting for a set of them to be gone.

A process is identified by (pid, start time) so a reused pid is never mistaken for the old one;
a zombie counts as gone (it no longer runs; an orphan's zombie waits for PID 1 to reap it)."""
from __future__ import annotations

import os
import subprocess
import time


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time in clock ticks) of ``pid``, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def running(ident: tuple[int, int]) -> bool:
    """Whether the process ``ident`` = (pid, start time) still exists and is not a zombie."""
    pid, start = ident
    st = stat(pid)
    return st is not None and st[2] == start and st[0] not in ("Z", "X")


def ident(pid: int) -> tuple[int, int] | None:
    st = stat(pid)
    return None if st is None else (pid, st[2])


def children(pid: int) -> set[tuple[int, int]]:
    """The live children of ``pid`` (through /proc/<pid>/task/*/children, then a /proc scan)."""
    found = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    found.update(int(p) for p in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    for p in pids():
        st = stat(p)
        if st is not None and st[1] == pid:
            found.add(p)
    return {i for i in map(ident, found) if i is not None and running(i)}


def descendants(pid: int) -> set[tuple[int, int]]:
    out, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in out:
                out.add(child)
                todo.append(child[0])
    return out


def naming(marker: str) -> set[tuple[int, int]]:
    """Live processes (other than this one) whose command line contains ``marker``."""
    me = os.getpid()
    out = set()
    for p in pids():
        if p != me and marker in cmdline(p):
            i = ident(p)
            if i is not None and running(i):
                out.add(i)
    return out


def wait_gone(idents, marker: str | None = None, timeout: float = 2.0) -> tuple[set, float]:
    """Wait until none of ``idents`` runs and no process names ``marker``; returns what is still
    running at the timeout (empty when all are gone) and the seconds waited."""
    start = time.monotonic()
    while True:
        left = {i for i in idents if running(i)}
        if marker:
            left |= naming(marker)
        waited = time.monotonic() - start
        if not left or waited >= timeout:
            return left, waited
        time.sleep(0.02)


def describe(idents) -> list[str]:
    return [f"pid {pid} ({stat(pid)[0] if stat(pid) else '?'}): {cmdline(pid)[:200]}" for pid, _ in idents]


def communicate_or_fail(proc, timeout: float, what: str):
    """``proc.communicate`` within ``timeout`` seconds, else kill it and fail the test with ``what``."""
    import pytest
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(what)
