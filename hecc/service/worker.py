"""The service's evaluation workers: processes that take jobs from the store's queue and run them.

Each worker is a child of the ``hecc serve`` process, started with ``python -m
hecc.service.worker DATA NAME [--cluster ADDRESS]``. It claims the oldest queued job by renaming
its marker (so two workers never take the same job), evaluates it with ``clientserver.Server``
(the evaluation keys of the job's key set, never a secret key) on one core here or on the Ray
cluster, writes the result atomically and drops the marker. The last ``CACHED_KEYSETS`` key sets
it used stay loaded, so the next job of one of them skips loading its keys and encoding weights. A job whose input the checks of
``Server`` refuse fails with the CLI's message; a bug fails it with "internal error". Workers
die with their parent (PR_SET_PDEATHSIG), so a SIGKILLed service leaves no evaluation running
on its state: the next start requeues what was claimed.

``Workers`` (in the serve process) starts them, restarts one that died, and fails the job it
was evaluating (a job that kills its worker would kill the next one too).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict

from ..errors import UserError

POLL_SECONDS = 0.05
START_SECONDS = 120.0  # a worker loads the artifact before it is ready
CACHED_KEYSETS = 4  # key sets a worker keeps loaded (SEAL context, keys, encoded weights) between jobs


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(0)


class _JobProgress:
    """Counted progress of one job, into the store (the client's progress bar reads it)."""

    def __init__(self, store, job: str):
        self.store, self.job = store, job

    def __call__(self, message: str) -> None:
        pass

    def count(self, done: int, total: int, unit: str) -> None:
        self.store.write_progress(self.job, done, total, unit)


def _stats_path(store, name: str) -> str:
    return store.path("workers", f"{name}.json")


def run_worker(data: str, name: str, cluster: str | None = None) -> None:
    from ..api import load
    from ..clientserver import Server
    from .store import Store, write_json
    store = Store(data)
    program = load(store.path("program.hecc"))
    programs = {layout: program.with_layout(layout) for layout in program.layouts}
    stats = {"jobs": 0, "failed": 0, "seconds": 0.0}
    write_json(_stats_path(store, name), stats)  # ready: the service waits for this at its start
    servers: OrderedDict = OrderedDict()  # (keyset, layout) -> Server, its SEAL context and keys loaded
    while True:
        claimed = store.claim(name)
        if claimed is None:
            time.sleep(POLL_SECONDS)
            continue
        marker, job = claimed
        record = store.job(job)
        result = store.result_path(job)
        if record is None or os.path.exists(result):  # deleted, or done before a crash
            os.unlink(marker)
            continue
        start, error = time.perf_counter(), None
        try:
            server = servers.pop((record["keyset"], record["layout"]), None)
            if server is None:
                keys = store.path("keysets", record["keyset"], "eval.keys")
                server = Server(programs[record["layout"]], keys, cluster=cluster, workers=1)
            servers[record["keyset"], record["layout"]] = server  # the most recently used last
            while len(servers) > CACHED_KEYSETS:
                servers.popitem(last=False)
            server.progress = _JobProgress(store, job)
            server.evaluate(store.path("jobs", job, "input.ct"), result)
        except UserError as exc:
            error = str(exc).replace(store.path("jobs", job) + os.sep, "").replace(store.root + os.sep, "")
        except Exception as exc:  # a bug: the job fails with its name, the worker goes on
            error = f"internal error in the service: {type(exc).__name__}: {exc}"
            sys.stderr.write(f"hecc serve: job {job}: {error}\n")
        stats["jobs"] += 1
        stats["failed"] += error is not None
        stats["seconds"] += time.perf_counter() - start
        store.finish(marker, job, error)
        write_json(_stats_path(store, name), stats)


class Workers:
    """The evaluation processes of one service, watched by a thread: one that dies is
    restarted and the job it held fails with the reason."""

    def __init__(self, store, count: int, cluster: str | None = None, log=None):
        self.store, self.count, self.cluster = store, count, cluster
        self.log = log or (lambda line: sys.stderr.write(f"hecc serve: {line}\n"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()
        self.restarts = 0
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _start(self, name: str) -> None:
        args = [sys.executable, "-m", "hecc.service.worker", self.store.root, name, "--parent", str(os.getpid())]
        if self.cluster:
            args += ["--cluster", self.cluster]
        # started in the state folder: `python -m` puts its working directory first on sys.path,
        # and a source checkout there (hecc/ without its mapped subpackages) would shadow the
        # installed hecc
        self.procs[name] = subprocess.Popen(args, stdin=subprocess.DEVNULL, cwd=self.store.root)

    def start(self) -> None:
        for name in os.listdir(self.store.path("workers")):  # counts of an earlier start
            os.unlink(self.store.path("workers", name))
        for i in range(self.count):
            self._start(f"w{i}")
        deadline = time.monotonic() + START_SECONDS
        for name, proc in self.procs.items():
            while not os.path.exists(_stats_path(self.store, name)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    how = f"exit code {proc.returncode}" if proc.returncode is not None else \
                        f"not ready after {START_SECONDS:g} s"
                    raise UserError(f"the evaluation worker {name} could not start ({how}); its error is "
                                    "above. Is hecc installed in the Python that runs `hecc serve`?")
                time.sleep(POLL_SECONDS)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopping.wait(0.5):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or self.stopping.is_set():
                    continue
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                why = (f"the evaluation process died ({how}) while it evaluated this job; the job is "
                       "not run again (if the machine ran out of memory, submit fewer inputs per job)")
                failed = self.store.fail_running(name, why)
                self.log(f"worker {name} died ({how}); failed job(s): {', '.join(failed) or 'none'}; restarting it")
                self.restarts += 1
                self._start(name)

    def stats(self) -> dict:
        """Summed over the workers since the service started: jobs, failed, seconds."""
        total = {"jobs": 0, "failed": 0, "seconds": 0.0}
        for name in self.procs:
            try:
                with open(_stats_path(self.store, name), "rb") as f:
                    data = json.loads(f.read(4096))
                for key in total:
                    total[key] += data.get(key, 0)
            except (OSError, ValueError, AttributeError):
                pass
        return total

    def stop(self) -> None:
        self.stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="hecc.service.worker")
    p.add_argument("data")
    p.add_argument("name")
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--cluster")
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        run_worker(args.data, args.name, args.cluster)
    except UserError as exc:  # the state it was given cannot be used (a damaged program.hecc)
        sys.stderr.write(f"hecc serve: worker {args.name}: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
