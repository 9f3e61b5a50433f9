"""Batches whose rows the actors of a Ray cluster share (see ``ClusterExecutor._stream``): the
row splitter the driver's backend uses for them, and the values it leaves on the actors or in
the object store until something reads them."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..backends.tenseal import Deferred

if TYPE_CHECKING:
    from .cluster import ClusterExecutor


class ClusterRows:
    """A row splitter (see ``TensealBackend._evaluate``) over the cluster's actors, for a batch the
    driver evaluates. Actor k evaluates chunk k of a large segment's rows and keeps the results
    (``Held``). The next large segment reads them where they are: each actor sums its layer's
    terms over the input rows it holds (its columns of the layer) for every chunk of rows, keeps
    its own chunk's share and sends the others to their actors, which add the shares and apply
    the bias and elementwise ops. So between two large layers only shares of the (smaller)
    output cross the network, not the input; the first large layer's input goes to the object
    store once. A worker that dies ends the batch's sharing (the caller evaluates it again).
    ``idle`` is called once per segment while the actors compute (the driver encrypts the next
    batches then)."""

    def __init__(self, executor: ClusterExecutor, actors, setup, idle=None):
        self.executor, self.actors, self.setup = executor, actors, setup
        self.idle = idle or (lambda: None)
        self.parts = len(actors)
        self.batch = 0  # the batch being evaluated: part of the keys of what actors hold

    def split(self, backend, number: int, source, chunks) -> dict:
        from ..backends import seal_bytes
        ex = self.executor
        key = (self.batch, number)
        if isinstance(source, Held) and len(source.chunks) != len(chunks):
            source = source.load(backend)
        if isinstance(source, Held):
            # actor k holds chunk k of the input (as many chunks as this segment has: checked above)
            parts = [self.actors[k].partial.options(num_returns=1 + len(chunks)).remote(
                self.setup, number, source.key, source.index, chunks, k) for k in range(len(source.chunks))]
            self.idle()
            for part in parts:
                ex._get(part[0])
            calls = [self.actors[d].reduce.remote(self.setup, number, source.key, source.index,
                                                  [part[1 + d] for k, part in enumerate(parts) if k != d], lo, hi, key)
                     for d, (lo, hi) in enumerate(chunks)]
        else:
            if isinstance(source, RemoteRows):
                spec, check = source.slices, source.check
            else:
                spec, check = ex._put_blobs([seal_bytes.to_bytes(ct) for ct in source]), None
            calls = [self.actors[k].rows.remote(self.setup, number, spec, check, lo, hi, key)
                     for k, (lo, hi) in enumerate(chunks)]
            self.idle()
        for call in calls:
            ex._get(call)
        return {value: Held(self, key, chunks, j) for j, value in enumerate(backend.live_out(number))}

    def release(self) -> None:
        """Drop what the actors hold for the batch (and wait: the next batch's keys differ, but
        memory is the scarce resource)."""
        self.executor.ray.get([actor.clear.remote() for actor in self.actors])


class Held(Deferred):
    """A value of a shared batch held by the actors: chunk k of its rows by actor k."""

    def __init__(self, rows: ClusterRows, key, chunks: list, index: int):
        self.rows, self.key, self.chunks, self.index = rows, key, chunks, index

    def load(self, backend) -> list:
        ray = self.rows.executor.ray
        parts = ray.get([self.rows.actors[k].fetch.remote(self.key, self.index) for k in range(len(self.chunks))])
        return [backend.load_rows(blob) for part in parts for blob in part]


class RemoteRows(Deferred):
    """A value in the object store: (ref, first, count) slices of serialized ciphertexts, in
    order. ``check`` None: made in this run (a segment's results); otherwise (level, scale,
    name) of a value that came from outside, which ``load`` checks before SEAL reads it."""

    def __init__(self, slices: list[tuple], check=None):
        self.slices, self.check = slices, check

    def load(self, backend) -> list:
        import ray
        parts = ray.get([ref for ref, _, _ in self.slices])
        blobs = [blob for part, (_, at, n) in zip(parts, self.slices) for blob in part[at:at + n]]
        del parts
        if self.check is None:
            return [backend.load_rows(blob) for blob in blobs]
        level, scale, what = self.check
        return [backend.seal.load_ciphertext(blob, level, scale, f"{what}, ciphertext {j}")
                for j, blob in enumerate(blobs)]
