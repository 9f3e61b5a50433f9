"""The cluster executor: batches (or inputs) evaluated by actors on a Ray cluster.

Ray is an optional extra (``pip install 'hecc[ray]'``), imported only by this package's cluster
modules and only when a cluster is asked for. The driver (the process that calls ``run`` or ``evaluate``) connects to a
running cluster (``ray start --head`` on one machine, ``ray start --address`` on the others) and:

- puts the program (its final IR text and weights) and the evaluation keys into the object store
  once; never the secret key: in ``run`` keys, encryption and decryption stay in the driver, and
  only ciphertexts (as bytes) and evaluation keys go out. Every object the driver sends goes
  through ``ClusterExecutor._put``;
- starts one actor (``cluster_worker.EvalWorker``) per CPU of the cluster, as many as each node's
  memory holds at one batch's predicted peak plus the keys (or ``workers``); each rebuilds the
  SEAL context from the program's parameters, loads the evaluation keys from bytes and encodes
  weights once, for the life of the run;
- evaluates the batches that do not divide evenly among the actors first, with the rows of
  their large layers shared among all the actors (``cluster_rows``), then streams whole batches
  to idle actors, one in flight per actor, each batch's ciphertexts in a few object-store chunks
  (a CryptoNets batch is 144 MB), and hands results back in batch order;
- when an actor's process or node dies, runs its batch again on another actor, says so on
  stderr, and takes the actor back once Ray has restarted it (``max_restarts=-1``); the results
  are those of an undisturbed run. A run whose every worker is gone for ``STALL_SECONDS`` stops
  with ``WorkerDied``.
"""
from __future__ import annotations

import collections
import os
import time

import numpy as np

from ..backends.common import RunStats
from ..errors import HeccError, UserError, WorkerDied
from ..progress import count_progress, notice as stderr_notice
from .cluster_rows import ClusterRows, RemoteRows
from .cluster_worker import EvalWorker

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


class ClusterExecutor:
    """Batches on the Ray cluster at ``address`` (host:port of the head, or ``auto``), one actor
    per CPU or ``workers`` actors. ``notice`` receives the lines about retried work (stderr)."""

    def __init__(self, address: str, workers: int | None = None, notice=None):
        self.ray = _import_ray()
        if workers is not None and workers < 1:
            raise UserError(f"--workers {workers}: give at least 1")
        self.address, self.workers = address, workers
        self.notice = notice or stderr_notice
        self.retried: list[int] = []  # batches run again, in the order they were

    # --- the two entry points ------------------------------------------------------------------
    def run(self, backend, stacked, stats: RunStats | None = None, progress=None) -> list[np.ndarray]:
        """``hecc run``: keys made and kept here; each batch encrypted here, evaluated on the
        cluster, decrypted here; outputs in input order."""
        from ..backends.tenseal import TensealBackend, decrypt_batch, encrypt_batch
        stats = stats or RunStats()
        start = time.perf_counter()
        backend = TensealBackend(backend.graph, streams=False)  # the actors share rows of plain segments
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
        unit = "input" if backend.per_batch == 1 else "batch"
        for i, result, seconds in self._stream(backend, eval_keys, len(spans), payload, progress, unit, stats):
            stats.seconds["eval"] += seconds
            t = time.perf_counter()
            outputs.append(decrypt_batch(backend, result, *spans[i], i))
            stats.seconds["decrypt"] += time.perf_counter() - t
        stats.eval_wall_seconds = time.perf_counter() - wall
        return [np.concatenate([o[k] for o in outputs]) for k in range(len(backend.outputs))]

    def evaluate(self, graph, eval_keys: dict[str, bytes], batches, progress=None) -> list[list[list[bytes]]]:
        """The server: serialized ciphertexts per batch in, serialized results per batch out."""
        from ..backends.tenseal import server_backend
        backend = server_backend(graph, eval_keys, streams=False)  # bad keys: the typed error, here and now
        unit = "evaluated input" if backend.per_batch == 1 else "evaluated batch"
        return [result for _, result, _ in
                self._stream(backend, eval_keys, len(batches), lambda i: batches[i], progress, unit)]

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

    def _launch(self, graph, eval_keys):
        """Create the actors and ask each to set itself up; returns without waiting for them."""
        from ..ir import print_graph
        ray = self.ray
        need = worker_bytes(graph, eval_keys)
        count = self._capacity(need)
        program = self._put({"text": print_graph(graph), "constants": dict(graph.constants)})
        keys = self._put(eval_keys)
        actor_class = ray.remote(num_cpus=1, memory=need, max_restarts=-1, max_task_retries=0)(EvalWorker)
        actors = [actor_class.remote() for _ in range(count)]
        setup = [program, keys]
        return actors, setup, [a.setup.remote(setup) for a in actors]

    def _capacity(self, need: int) -> int:
        """How many workers to start: one per CPU of the live nodes, as many as each node's
        memory (Ray's ``memory`` resource) holds at ``need`` bytes each, or ``--workers``."""
        fit = 0
        for node in self.ray.nodes():
            if node.get("Alive"):
                res = node.get("Resources", {})
                fit += min(int(res.get("CPU", 0)), int(res.get("memory", 0) // max(need, 1)))
        gib = need / 2 ** 30
        if fit == 0:
            raise UserError(f"no node of the Ray cluster has a CPU and {gib:.2f} GiB of memory for one "
                            "worker of this program (the predicted peak of one batch plus its keys); add "
                            "nodes with more memory, or give this program a smaller batch")
        if self.workers is not None and self.workers > fit:
            raise UserError(f"--workers {self.workers}: the Ray cluster has room for {fit} workers of this "
                            f"program ({gib:.2f} GiB each: one batch's predicted peak plus its keys)")
        return self.workers or fit

    def _await(self, started) -> list:
        """Wait for the actors' setup; per actor, its (pid, node address)."""
        ray = self.ray
        ready, waiting = ray.wait(started, num_returns=len(started), timeout=START_SECONDS)
        if waiting:
            raise UserError(f"only {len(ready)} of {len(started)} workers started on the cluster within "
                            f"{START_SECONDS:.0f} s (it has {ray.cluster_resources().get('CPU', 0):g} "
                            "CPUs); give fewer --workers or add nodes")
        return [self._get(ref) for ref in started]

    def _get(self, ref):
        """``ray.get``, with an error of hecc's raised inside an actor raised as itself."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (HeccError, *lost_errors(self.ray))):
                raise cause from None
            raise

    def _stream(self, backend, eval_keys, total: int, payload, progress, unit: str, stats=None):
        """Yield (index, result, eval seconds) for batches 0..total-1 in order; ``payload(i)``
        gives batch i's ciphertexts (per input, bytes); the first is made while the actors
        start, the next ones while the driver waits for actors.

        With ``total`` not a multiple of the actors, the first ``total % actors`` batches are
        evaluated by the driver's ``backend`` with the rows of their large linear layers shared
        among all the actors (``_shared_batch``, as the local pool does with its last batches);
        the rest go whole to the actors, one batch per actor at a time. No actor waits idle for
        the last batch."""
        ray = self.ray
        lost = lost_errors(ray)
        self._connect()
        actors, setup, started = self._launch(backend.graph, eval_keys)
        try:
            shared = 0
            if len(actors) > 1 and any(backend.splittable(i) for i in range(len(backend.segments))):
                shared = total % len(actors)
            encrypted: dict[int, list] = {}  # payloads made ahead, while the actors work

            def fetch(i):
                return encrypted.pop(i) if i in encrypted else payload(i)

            def ahead():
                """One more whole batch's payload made while the driver waits for actors."""
                for i in range(shared, min(total, shared + len(actors))):
                    if i not in encrypted and i not in sent:
                        encrypted[i] = payload(i)
                        return
            sent: dict[int, tuple] = {}  # batch -> (chunk refs, counts), kept until its result is in
            if total:
                encrypted[0] = payload(0)  # while the actors start
            where = self._await(started)
        except BaseException:
            for actor in actors:
                ray.kill(actor)
            raise
        if stats is not None:
            stats.workers = len(actors)
        done = 0
        try:
            # first the batches that cannot keep every actor busy on its own: their rows shared
            splitter = ClusterRows(self, actors, setup, ahead)
            for i in range(shared):
                splitter.batch = i
                batch = fetch(i)
                start = time.perf_counter()
                try:
                    out = self._shared_batch(backend, batch, i, splitter)
                except lost as exc:  # a worker (or its node) died with its rows
                    self.notice(f"a cluster worker died while evaluating its rows of {unit.split()[-1]} {i + 1} "
                                f"({type(exc).__name__}); {unit.split()[-1]} {i + 1} is evaluated again here")
                    self.retried.append(i)
                    out = self._shared_batch(backend, batch, i, None)
                finally:
                    self._release(splitter)
                seconds = time.perf_counter() - start
                done += 1
                count_progress(progress, done, total, unit)
                yield i, out, seconds
            # then whole batches, one per actor at a time
            idle = collections.deque(range(len(actors)))
            pending = collections.deque(range(shared, total))
            inflight: dict = {}  # result ref -> (actor, batch)
            probes: dict = {}  # ready ref of a restarting actor -> actor
            reprobe: list[tuple[float, int]] = []
            results, next_out = {}, shared
            stalled = None
            while next_out < total:
                while idle and pending:
                    a, i = idle.popleft(), pending.popleft()
                    if i not in sent:
                        sent[i] = self._chunks(fetch(i))
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
                self.notice(f"after a worker died, {n} {what}{('es' if what == 'batch' else 's') if n > 1 else ''} "
                            f"{'were' if n > 1 else 'was'} evaluated again; the results "
                            "are complete")
        finally:
            for actor in actors:
                ray.kill(actor)
            sent.clear()  # the object store frees what only these refs held
            encrypted.clear()

    def _release(self, splitter) -> None:
        try:
            splitter.release()
        except lost_errors(self.ray):
            pass  # a restarting actor holds nothing

    def _shared_batch(self, backend, batch: list[list[bytes]], number: int, rows) -> list[list[bytes]]:
        """Batch ``number`` evaluated by ``backend`` here with the rows of its large layers
        shared among the actors (``rows``; None: all here). Its ciphertexts go to the object
        store as they came; whoever reads them first checks them, as ``evaluate_batch`` does."""
        from ..backends import seal_bytes
        env = {op.result: RemoteRows(self._put_blobs(cts), (op.result.type.level, backend.scales[op.result],
                                                            f"batch {number}, input {op.attrs['name']!r}"))
               for op, cts in zip(backend.inputs, batch)}
        env = backend._evaluate(env, rows)
        return [[seal_bytes.to_bytes(ct) for ct in env[op.operands[0]]] for op in backend.decrypts]

    def _chunks(self, batch: list[list[bytes]]):
        """One batch's ciphertexts in object-store chunks of about CHUNK_BYTES, and the count
        per input."""
        slices = self._put_blobs([b for group in batch for b in group])
        return [ref for ref, _, _ in slices], [len(group) for group in batch]

    def _put_blobs(self, blobs: list[bytes]) -> list[tuple]:
        """``blobs`` in object-store chunks of about CHUNK_BYTES: (ref, 0, count) per chunk."""
        slices, part, size = [], [], 0
        for blob in blobs:
            part.append(blob)
            size += len(blob)
            if size >= CHUNK_BYTES:
                slices.append((self._put(part), 0, len(part)))
                part, size = [], 0
        if part or not slices:
            slices.append((self._put(part), 0, len(part)))
        return slices


def worker_bytes(graph, eval_keys: dict[str, bytes]) -> int:
    """Memory one worker asks Ray for: the predicted peak of one batch's ciphertexts (twice: the
    serialized input and its results beside the live values) plus the evaluation keys."""
    from ..backends.common import predicted_peak_bytes
    return 2 * predicted_peak_bytes(graph, streams=False) + sum(len(v) for v in eval_keys.values())


def lost_errors(ray) -> tuple:
    """Ray's exceptions for work lost with its worker process or node."""
    return (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
            ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
