"""Executors: where a backend's batches (or inputs) run.

A backend evaluates one program on one batch (or one input) in the process that calls it. An
executor decides where that happens and owns everything about processes: starting workers
(each loads the context and keys and encodes weights once), handing them work, progress,
retries, and what happens when a worker dies.

- ``LocalExecutor(workers)``: this process (``workers=1``) or forked workers on this machine;
  a worker that dies ends the run (``WorkerDied``).
- ``ClusterExecutor(address, workers)``: actors on a Ray cluster (the optional ``hecc[ray]``
  extra); a worker or node that dies has its batches run again elsewhere.

Both offer ``run(backend, stacked, stats, progress)`` (``hecc run``: keys, encryption and
decryption stay in this process) and ``evaluate(graph, eval_keys, batches, progress)`` (the
server: serialized ciphertexts in, serialized results out, no secret key).
"""
from __future__ import annotations

from .local import LocalExecutor


def executor_for(workers: int | None = None, cluster: str | None = None):
    """The executor for a run: a Ray cluster at ``cluster``, otherwise this machine."""
    if cluster:
        from .cluster import ClusterExecutor
        return ClusterExecutor(cluster, workers)
    return LocalExecutor(workers)


__all__ = ["LocalExecutor", "executor_for"]
