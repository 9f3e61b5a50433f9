"""What runs on the nodes of a Ray cluster: ``EvalWorker``, one actor per CPU, holding one
program with its evaluation keys (never a secret key) for the life of a run. It evaluates whole
batches (``evaluate``), or its share of a batch whose rows the actors share (``rows``,
``partial``, ``reduce``: see ``cluster_rows``)."""
from __future__ import annotations

import os
import time

from .cluster_rows import RemoteRows


class EvalWorker:
    """A Ray actor: one program with the evaluation keys (never a secret key), batch after batch.
    Its state comes from ``setup`` (object refs of the program and the keys, held by the driver
    for the whole run), not from constructor arguments, so an actor Ray restarts after its
    process died sets itself up again from the same refs."""

    def __init__(self):
        self.backend = None
        self.held: dict = {}  # shared batches: key -> (first row, end row, [ciphertexts per value])

    def setup(self, refs: list) -> tuple[int, str]:
        """Load [program, evaluation keys] once; this process's pid and node address."""
        import ray

        from ..backends.tenseal import server_backend
        from ..ir import parse
        if self.backend is None:
            program, eval_keys = ray.get(refs)
            graph = parse(program["text"], dict(program["constants"]), source="cluster program")
            self.backend = server_backend(graph, eval_keys, streams=False)  # as the driver's
        return os.getpid(), ray.util.get_node_ip_address()

    def evaluate(self, refs: list, chunks: list, counts: list[int], number: int):
        """One batch: its ciphertexts (in ``chunks``, object refs), ``counts`` per input."""
        import ray

        from ..backends.tenseal import evaluate_batch
        self.setup(refs)
        blobs = [blob for part in ray.get(chunks) for blob in part]
        batch, at = [], 0
        for count in counts:
            batch.append(blobs[at:at + count])
            at += count
        start = time.perf_counter()
        out = evaluate_batch(self.backend, batch, number)
        return out, time.perf_counter() - start, os.getpid()

    # --- shared batches: the rows of each large layer split among the actors ----------------
    def rows(self, refs: list, number: int, source: list, check, lo: int, hi: int, key) -> int:
        """Rows lo..hi of segment ``number`` of a shared batch, kept here under ``key``.
        ``source`` is the segment's input as (object ref, first, count) slices of serialized
        ciphertexts: made by the driver in this run (``check`` None), or as the client sent them
        (``check``: the level, scale and name they are checked against)."""
        self.setup(refs)
        cts = RemoteRows(source, check).load(self.backend)
        self.held[key] = (lo, hi, self.backend.segment_values(number, cts, lo, hi))
        return os.getpid()

    def partial(self, refs: list, number: int, key, index: int, chunks: list, me: int) -> tuple:
        """Segment ``number``'s linear layer over the rows of its input this actor holds (value
        ``index`` under ``key``, a chunk of the input's rows = the layer's columns): per chunk of
        the layer's rows, this actor's share of the sums. Its own chunk's share stays here; the
        others are returned serialized (b"": no terms), one object each, after the pid."""
        from ..backends import seal_bytes
        self.setup(refs)
        first, _, values = self.held[key]
        out = [os.getpid()]
        for d, (lo, hi) in enumerate(chunks):
            share = self.backend.segment_partial(number, values[index], first, lo, hi)
            if d == me:
                self.held[("share", number)] = share
                out.append(None)
            else:
                out.append([b"" if ct is None else seal_bytes.to_bytes(ct) for ct in share])
        return tuple(out)

    def reduce(self, refs: list, number: int, key, index: int, shares: list, lo: int, hi: int, keep) -> int:
        """Rows lo..hi of segment ``number``: this actor's share plus the other actors'
        (``shares``, object refs), bias and elementwise ops; kept here under ``keep``."""
        import ray
        self.setup(refs)
        others = [[None if blob == b"" else self.backend.load_rows(blob) for blob in part] for part in ray.get(shares)]
        mine = self.held.pop(("share", number))
        like = self.held[key][2][index][0]
        self.held[keep] = (lo, hi, self.backend.segment_finish(number, [mine, *others], lo, hi, like))
        return os.getpid()

    def fetch(self, key, index: int) -> list[bytes]:
        """The ciphertexts of value ``index`` under ``key``, serialized."""
        from ..backends import seal_bytes
        return [seal_bytes.to_bytes(ct) for ct in self.held[key][2][index]]

    def clear(self) -> None:
        self.held.clear()
