"""The cluster executor: batches (or inputs) evaluated by actors on a Ray cluster.

Ray is an optional extra (``pip install 'hecc[ray]'``), imported only here and only when a
cluster is asked for. The driver (the process that calls ``run`` or ``evaluate``) connects to a
running cluster (``ray start --head`` on one machine, ``ray start --address`` on the others) and:

- puts the program (its final IR text and weights) and the evaluation keys into the object store
  once; never the secret key: in ``run`` keys, encryption and decryption stay in the driver, and
  only ciphertexts (as bytes) and evaluation keys go out. Every object the driver sends goes
  through ``ClusterExecutor._put``;
- starts one actor per CPU of the cluster (or ``workers``); each rebuilds the SEAL context from
  the program's parameters, loads the evaluation keys from bytes and encodes weights once, for
  the life of the run;
- streams batches to idle actors, one in flight per actor, each batch's ciphertexts in a few
  object-store chunks (a CryptoNets batch is ~200 MB), and hands results back in batch order;
- when an actor's process or node dies, runs its batch again on another actor, says so on
  stderr, and takes the actor back once Ray has restarted it (``max_restarts=-1``); the results
  are those of an undisturbed run. A run whose every worker is gone for ``STALL_SECONDS`` stops
  with ``WorkerDied``.
"""
from __future__ import annotations

import collections
import os
import sys
import time

import numpy as np

from ..backends.common import RunStats
from ..errors import HeccError, UserError, WorkerDied
from ..progress import count_progress

CHUNK_BYTES = 16 << 20  # ciphertext bytes per object-store object
START_SECONDS = 300.0  # for the actors to start (import, context, keys)
STALL_SECONDS = 300.0  # with no worker alive before the run gives up
PROBE_SECONDS = 0.5


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--cluster needs Ray, which is not installed: pip install 'hecc[ray]' (on this "
                        "machine and on every node of the cluster)") from None
    return ray


class EvalWorker:
    """A Ray actor: one program with the evaluation keys (never a secret key), batch after batch.
    Its state comes from ``setup`` (object refs of the program and the keys, held by the driver
    for the whole run), not from constructor arguments, so an actor Ray restarts after its
    process died sets itself up again from the same refs."""

    def __init__(self):
        self.backend = None

    def setup(self, refs: list) -> tuple[int, str]:
        """Load [program, evaluation keys] once; this process's pid and node address."""
        import ray

        from ..backends.tenseal import server_backend
        from ..ir import parse
        if self.backend is None:
            program, eval_keys = ray.get(refs)
            graph = parse(program["text"], dict(program["constants"]), source="cluster program")
            self.backend = server_backend(graph, eval_keys)
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


class ClusterExecutor:
    """Batches on the Ray cluster at ``address`` (host:port of the head, or ``auto``), one actor
    per CPU or ``workers`` actors. ``notice`` receives the lines about retried work (stderr)."""

    def __init__(self, address: str, workers: int | None = None, notice=None):
        self.ray = _import_ray()
        if workers is not None and workers < 1:
            raise UserError(f"--workers {workers}: give at least 1")
        self.address, self.workers = address, workers
        self.notice = notice or (lambda line: (sys.stderr.write(f"hecc: {line}\n"), sys.stderr.flush()))
        self.retried: list[int] = []  # batches run again, in the order they were

    # --- the two entry points ------------------------------------------------------------------
    def run(self, backend, stacked, stats: RunStats | None = None, progress=None) -> list[np.ndarray]:
        """``hecc run``: keys made and kept here; each batch encrypted here, evaluated on the
        cluster, decrypted here; outputs in input order."""
        from ..backends.tenseal import decrypt_batch, encrypt_batch
        stats = stats or RunStats()
        start = time.perf_counter()
        backend.connect(None)
        stats.seconds["keygen"] = time.perf_counter() - start
        eval_keys = {k: v for k, v in backend.seal.export().items() if k != "secret"}
        stats.eval_key_bytes = sum(len(eval_keys[k]) for k in ("relin", "galois") if k in eval_keys)
        runs = stacked[0].shape[0] if stacked else 1
        spans = backend.spans(runs)
        stats.batches = len(spans)

        def payload(i):
            t = time.perf_counter()
            batch = encrypt_batch(backend, stacked, *spans[i])
            stats.seconds["encrypt"] += time.perf_counter() - t
            return batch
        outputs = []
        wall = time.perf_counter()
        unit = "input" if backend.slots_layout else "batch"
        for i, result, seconds in self._stream(backend.graph, eval_keys, len(spans), payload, progress, unit,
                                               stats):
            stats.seconds["eval"] += seconds
            t = time.perf_counter()
            outputs.append(decrypt_batch(backend, result, *spans[i], i))
            stats.seconds["decrypt"] += time.perf_counter() - t
        stats.eval_wall_seconds = time.perf_counter() - wall
        return [np.concatenate([o[k] for o in outputs]) for k in range(len(backend.outputs))]

    def evaluate(self, graph, eval_keys: dict[str, bytes], batches, progress=None) -> list[list[list[bytes]]]:
        """The server: serialized ciphertexts per batch in, serialized results per batch out."""
        from ..backends.tenseal import server_backend
        backend = server_backend(graph, eval_keys)  # bad keys: the typed error, here and now
        unit = "evaluated input" if backend.slots_layout else "evaluated batch"
        return [result for _, result, _ in
                self._stream(graph, eval_keys, len(batches), lambda i: batches[i], progress, unit)]

    # --- Ray -----------------------------------------------------------------------------------
    def _put(self, obj):
        """The one way data leaves this process for the object store."""
        return self.ray.put(obj)

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        # Ray puts the driver's working directory on its workers' sys.path. Run from a clone of
        # hecc's sources, that would make the workers import the source folder `hecc/` (which
        # lacks hecc.passes, hecc.backends: they are mapped at install time) instead of the
        # installed package: connect from the folder that holds the package hecc runs from.
        cwd = os.getcwd()
        os.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        try:
            ray.init(address=self.address, logging_level="ERROR", log_to_driver=False,
                     configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot connect to the Ray cluster at {self.address} ({exc}); start it with "
                            "`ray start --head` (see the README's 'A Ray cluster')") from None
        finally:
            os.chdir(cwd)

    def _start(self, graph, eval_keys):
        from ..ir import print_graph
        ray = self.ray
        program = self._put({"text": print_graph(graph), "constants": dict(graph.constants)})
        keys = self._put(eval_keys)
        count = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor_class = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(EvalWorker)
        actors = [actor_class.remote() for _ in range(count)]
        setup = [program, keys]
        try:
            started = [a.setup.remote(setup) for a in actors]
            ready, waiting = ray.wait(started, num_returns=count,
                                      timeout=START_SECONDS)
            if waiting:
                raise UserError(f"only {len(ready)} of {count} workers started on the cluster within "
                                f"{START_SECONDS:.0f} s (it has {ray.cluster_resources().get('CPU', 0):g} "
                                "CPUs); give fewer --workers or add nodes")
            where = [self._get(ref) for ref in started]
        except BaseException:
            for actor in actors:
                ray.kill(actor)
            raise
        return actors, setup, where

    def _get(self, ref):
        """``ray.get``, with an error of hecc's raised inside an actor raised as itself."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, HeccError):
                raise cause from None
            raise

    def _stream(self, graph, eval_keys, total: int, payload, progress, unit: str, stats=None):
        """Yield (index, result, eval seconds) for batches 0..total-1 in order; ``payload(i)``
        gives batch i's ciphertexts (per input, bytes), asked for when an actor is free."""
        ray = self.ray
        lost = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
        self._connect()
        actors, setup, where = self._start(graph, eval_keys)
        if stats is not None:
            stats.workers = len(actors)
        idle = collections.deque(range(len(actors)))
        pending = collections.deque(range(total))
        sent: dict[int, tuple] = {}  # batch -> (chunk refs, counts), kept until its result is in
        inflight: dict = {}  # result ref -> (actor, batch)
        probes: dict = {}  # ready ref of a restarting actor -> actor
        reprobe: list[tuple[float, int]] = []
        results, done, next_out = {}, 0, 0
        stalled = None
        try:
            while next_out < total:
                while idle and pending:
                    a, i = idle.popleft(), pending.popleft()
                    if i not in sent:
                        sent[i] = self._chunks(payload(i))
                    refs, counts = sent[i]
                    inflight[actors[a].evaluate.remote(setup, refs, counts, i)] = (a, i)
                now = time.monotonic()
                for at, a in [r for r in reprobe if r[0] <= now]:
                    reprobe.remove((at, a))
                    probes[actors[a].setup.remote(setup)] = a
                if not inflight:
                    stalled = stalled or now
                    if now - stalled > STALL_SECONDS:
                        raise WorkerDied(f"every worker of the cluster died and none came back within "
                                         f"{STALL_SECONDS:.0f} s; {total - done} of {total} batches are "
                                         "not evaluated. Check the cluster (`ray status`)")
                else:
                    stalled = None
                ready, _ = ray.wait(list(inflight) + list(probes), num_returns=1, timeout=PROBE_SECONDS)
                for ref in ready:
                    if ref in probes:
                        a = probes.pop(ref)
                        try:
                            where[a] = ray.get(ref)
                            idle.append(a)
                        except lost:
                            reprobe.append((time.monotonic() + PROBE_SECONDS, a))
                        continue
                    a, i = inflight.pop(ref)
                    try:
                        out, seconds, pid = self._get(ref)
                    except lost as exc:
                        pid, node = where[a]
                        self.retried.append(i)
                        self.notice(f"cluster worker {a} (pid {pid} on node {node}) died while evaluating "
                                    f"{unit.split()[-1]} {i + 1} of {total} ({type(exc).__name__}); "
                                    f"{unit.split()[-1]} {i + 1} runs again on another worker")
                        pending.appendleft(i)
                        probes[actors[a].setup.remote(setup)] = a
                        continue
                    results[i] = (out, seconds)
                    del sent[i]
                    idle.append(a)
                    done += 1
                    count_progress(progress, done, total, unit)
                while next_out in results:
                    out, seconds = results.pop(next_out)
                    yield next_out, out, seconds
                    next_out += 1
            if self.retried:
                n, what = len(self.retried), unit.split()[-1]
                self.notice(f"{n} {what}{('es' if what == 'batch' else 's') if n > 1 else ''} "
                            f"{'were' if n > 1 else 'was'} evaluated again after a worker died; the results "
                            "are complete")
        finally:
            for actor in actors:
                ray.kill(actor)
            del setup, sent

    def _chunks(self, batch: list[list[bytes]]):
        """One batch's ciphertexts in object-store chunks of about CHUNK_BYTES, and the count
        per input."""
        counts = [len(group) for group in batch]
        refs, part, size = [], [], 0
        for blob in (b for group in batch for b in group):
            part.append(blob)
            size += len(blob)
            if size >= CHUNK_BYTES:
                refs.append(self._put(part))
                part, size = [], 0
        if part or not refs:
            refs.append(self._put(part))
        return refs, counts
