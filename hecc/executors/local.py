"""The local executor: batches in this process or in forked workers on this machine.

Forked workers (``backends.workers.forked_map``) inherit the keys, the SEAL context and the
encoded weights, so nothing is serialized to start them. Whole batches run side by side while
there are at least as many as workers; a remaining batch is evaluated here with the rows of each
large linear layer split across forked workers, which hand their ciphertexts back through
nameless files. A worker that dies ends the run with ``WorkerDied`` (see ``backends.workers``).
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..backends.common import RunStats, predicted_peak_bytes
from ..backends.workers import anonymous_file, forked_map, read_record, write_record
from ..progress import count_progress, notice as stderr_notice

_ACTIVE = None  # what forked workers read: set by the parent just before it forks


class LocalExecutor:
    """Batches on this machine: in process (``workers=1``) or on ``workers`` forked processes
    (default: two, or one on a one-core machine)."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or min(2, os.cpu_count() or 1)
        self._server = None  # (graph, eval keys, their backend): a server evaluating again reuses it

    def rows(self, graph, per: int | None = None):
        """The row splitter for one batch evaluated here (None: no forking); ``per``: the
        program's ``predicted_peak_bytes``, if known."""
        if self.workers < 2:
            return None
        return ForkedRows(self.workers, memory_hint(predicted_peak_bytes(graph) if per is None else per, self.workers))

    def run(self, backend, stacked, stats: RunStats | None = None, progress=None) -> list[np.ndarray]:
        """``hecc run``: keys, then every batch encrypted, evaluated and decrypted; outputs in
        input order."""
        global _ACTIVE
        stats = stats or RunStats()
        start = time.perf_counter()
        backend.connect(None)
        stats.eval_key_bytes = backend.seal.eval_key_bytes()  # makes the seeded keys the workers load
        stats.seconds["keygen"] = time.perf_counter() - start
        runs = stacked[0].shape[0] if stacked else 1
        spans = backend.spans(runs)
        stats.batches = len(spans)
        unit = "input" if backend.per_batch == 1 else "batch"
        per = predicted_peak_bytes(backend.graph)
        workers = stats.workers = fitting_workers(per, self.workers, len(spans))
        rounds = len(spans) // workers * workers if workers > 1 else 0
        results, per_worker = [], {}
        if rounds:
            _ACTIVE = (backend, stacked)
            try:
                for result in forked_map(_worker_batch, spans[:rounds], workers,
                                         memory_hint(per, workers)):
                    results.append(result)
                    per_worker[result[1]["pid"]] = per_worker.get(result[1]["pid"], 0.0) + result[1]["eval"]
                    count_progress(progress, len(results), len(spans), unit)
            finally:
                _ACTIVE = None
        rest_eval = 0.0
        rows = self.rows(backend.graph, per)
        for lo, hi in spans[rounds:]:
            results.append(backend.run_batch(stacked, lo, hi, rows))
            rest_eval += results[-1][1]["eval"]
            count_progress(progress, len(results), len(spans), unit)
        for _, t in results:
            for key in ("encrypt", "eval", "decrypt"):
                stats.seconds[key] += t[key]
        stats.eval_wall_seconds = max(per_worker.values(), default=0.0) + rest_eval
        return [np.concatenate([r[0][i] for r in results]) for i in range(len(backend.outputs))]

    def evaluate(self, graph, eval_keys: dict[str, bytes], batches, progress=None) -> list[list[list[bytes]]]:
        """The server: each batch of serialized ciphertexts evaluated here, in turn, its large
        layers split across the workers; per batch, per decryption point, serialized results. The
        SEAL context, keys and encoded weights are kept for the next call with the same graph and
        keys (a service's worker evaluating job after job of one key set)."""
        from ..backends.tenseal import evaluate_batches, server_backend
        if self._server is None or self._server[0] is not graph or self._server[1] is not eval_keys:
            self._server = (graph, eval_keys, server_backend(graph, eval_keys))
        return evaluate_batches(self._server[2], batches, progress, self.rows(graph))


class ForkedRows:
    """A row splitter for ``TensealBackend._evaluate``: each chunk in a forked worker, its
    ciphertexts back through a nameless file (not a pipe or /dev/shm: a layer's ciphertexts can
    be gigabytes at N=16384, and a RAM copy beside the parent's would double the peak memory;
    nameless, they cannot outlive the run)."""

    streams = True  # splits streams too: a forked worker reads any value of the parent

    def __init__(self, parts: int, hint: str = ""):
        self.parts, self.hint = parts, hint

    def split(self, backend, number: int, source: list, chunks) -> dict:
        """Rows (lo, hi) of segment ``number`` per chunk, each in a forked worker; the
        segment's values read later (``backend.assemble``)."""
        global _ACTIVE
        fn = lambda chunk: backend.segment_rows(number, source, *chunk)  # noqa: E731 (inherited by fork)
        files = [anonymous_file() for _ in chunks]
        _ACTIVE = (fn, chunks, files)
        try:
            for _ in forked_map(_worker_rows, range(len(chunks)), len(chunks), self.hint):
                pass
            # each record read just before its ciphertext is loaded: all of a layer's bytes in
            # memory beside its ciphertexts would nearly double the parent's peak
            return backend.assemble(number, chunks, [_records(f) for f in files])
        finally:
            _ACTIVE = None
            for f in files:
                f.close()


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fitting_workers(per: int, workers: int, batches: int, notice=stderr_notice) -> int:
    """How many batches to evaluate side by side: ``workers``, fewer when that many batches'
    predicted memory (``per`` bytes each: ``predicted_peak_bytes``) does not fit in the memory
    available now, saying so on stderr; a run whose one batch does not fit is told it may be
    killed."""
    free = available_bytes()
    if free is None or per == 0:
        return workers
    side_by_side = min(workers, batches)
    if per > free:
        notice(f"this program's predicted memory for one batch is {per / 2 ** 30:.1f} GiB and "
               f"{free / 2 ** 30:.1f} GiB are available: the kernel may stop the run. Free memory, or "
               "compile a smaller program (a lower --activation-degree, fewer or smaller layers)")
        return 1 if side_by_side > 1 else workers
    if side_by_side > 1 and per * side_by_side > free:
        fit = max(1, int(free // per))
        notice(f"{fit} of {workers} batches side by side: each needs {per / 2 ** 30:.1f} GiB (predicted) "
               f"and {free / 2 ** 30:.1f} GiB are available")
        return fit
    return workers


def memory_hint(per: int, processes: int) -> str:
    """What the program needs in memory (``per`` bytes per batch), for the message when a worker
    dies."""
    return (f"This program keeps up to {per / 2 ** 30:.2f} GiB of ciphertexts per batch in memory "
            f"({processes} processes at once).")


def _records(f):
    """The records ``_worker_rows`` wrote to ``f``, one at a time."""
    f.seek(0)
    count, = np.frombuffer(read_record(f), dtype="<u8")
    for _ in range(int(count)):
        yield read_record(f)


def _worker_rows(index):
    fn, chunks, files = _ACTIVE
    blobs = fn(chunks[index])
    out = files[index]
    write_record(out, np.array([len(blobs)], dtype="<u8").tobytes())
    for blob in blobs:
        write_record(out, blob)
    out.flush()


def _worker_batch(span):
    backend, stacked = _ACTIVE
    outputs, timings = backend.run_batch(stacked, *span)
    timings["pid"] = os.getpid()
    return outputs, timings
