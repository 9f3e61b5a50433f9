"""CryptoNets on a real local Ray cluster: a head and one more node, each a separate `ray start`
process bound to this machine with one CPU and a small object store, started and stopped here
(by their process group, nothing else). Results on the cluster equal the local run's (CKKS
encryption is randomized: same classes, values within 1e-3 relative), in both layouts; a Ray
worker killed with SIGKILL mid-batch has its work run again (whole batches, or the rows of a
batch shared among the workers); the secret key never reaches the
object store nor Ray's temporary folder."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import hecc  # noqa: E402

import procutil  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
CRYPTONETS = os.path.join(ROOT, "examples", "cryptonets_mnist")
BIN = os.path.dirname(sys.executable)
HECC = os.path.join(BIN, "hecc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`ray start --block` processes, each the leader of its own process group."""

    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="hecc-ray-")  # short: Ray's socket paths have a limit
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs = []
        common = ["--block", "--num-cpus", "1", "--object-store-memory", "100000000",
                  "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        try:
            self._start(["--head", "--port", str(self.port), "--temp-dir", self.temp_dir,
                         "--include-dashboard", "false", "--dashboard-port", str(_free_port()), *common])
            self._wait_nodes(1)
            self._start(["--address", self.address, *common])
            self._wait_nodes(2)
        except BaseException:
            self.stop()
            raise

    def _start(self, args):
        log = open(os.path.join(self.temp_dir, f"ray-start-{len(self.procs)}.log"), "wb")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.procs.append(subprocess.Popen([os.path.join(BIN, "ray"), "start", *args], stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True, env=env))

    def _wait_nodes(self, count, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                assert proc.poll() is None, open(os.path.join(self.temp_dir, "ray-start-0.log")).read()
            out = subprocess.run([os.path.join(BIN, "ray"), "status", "--address", self.address],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.count(" node_") >= count:
                return
            time.sleep(1)
        raise AssertionError(f"the local Ray cluster did not reach {count} nodes")

    def stop(self):
        for proc in reversed(self.procs):
            with_suppress(os.killpg, proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with_suppress(os.killpg, proc.pid, signal.SIGKILL)
                proc.wait()
        time.sleep(1)
        for proc in self.procs:  # stragglers of our process groups
            with_suppress(os.killpg, proc.pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def with_suppress(fn, *args):
    try:
        fn(*args)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.stop()


@pytest.fixture(scope="module")
def cryptonets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x)
    prog.save(str(root / "cn.hecc"))
    np.save(root / "x4.npy", x[:4])
    return prog, x[:4], root, {}


def _close(out, local, precision=1e-3):
    """Two encrypted runs (each its own keys and noise): the same classes, values within twice
    a run's error."""
    np.testing.assert_array_equal(out.argmax(1), local.argmax(1))
    assert np.abs(out - local).max() <= 2 * precision * np.abs(local).max()


def test_cluster_runs_equal_the_local_runs_and_keep_the_secret_key(cluster, cryptonets, monkeypatch):
    from test_faults import SecretKeyScanner

    from hecc.backends import seal_bytes
    from hecc.backends.tenseal import _Seal
    from hecc.executors.cluster import ClusterExecutor
    prog, x, _, locals_ = cryptonets
    put, secrets_made = [], []
    real_put, real_export = ClusterExecutor._put, _Seal.export

    def recording_put(self, obj):
        put.append(obj)
        return real_put(self, obj)

    def recording_export(self):
        out = real_export(self)
        if "secret" in out:
            secrets_made.append(out["secret"])
        return out
    monkeypatch.setattr(ClusterExecutor, "_put", recording_put)
    monkeypatch.setattr(_Seal, "export", recording_export)
    timings = {}
    for layout in ("slots", "batch"):
        start = time.perf_counter()
        local = locals_[layout] = prog.run(x, backend="tenseal", layout=layout)["logits"]
        timings[f"local {layout}"] = time.perf_counter() - start
        start = time.perf_counter()
        out = prog.run(x, backend="tenseal", layout=layout, cluster=cluster.address)["logits"]
        timings[f"cluster {layout}"] = time.perf_counter() - start
        _close(out, local, max(1e-3, prog.artifact.manifest["predicted_precision"][layout]))
        stats = prog.last_stats
        assert stats["layout"] == layout and stats["workers"] == 2
        assert stats["batches"] == (1 if layout == "batch" else len(x))
    print(f"\n[ray] seconds: {timings}")

    # what went to the object store: the program, evaluation keys and ciphertexts, no secret key
    scanner = SecretKeyScanner(prog)
    assert secrets_made and all(scanner.loads(s) for s in secrets_made), "the scanner must know a secret key"
    blobs = []

    def walk(obj, where):
        if isinstance(obj, (bytes, bytearray)):
            blobs.append((where, bytes(obj)))
        elif isinstance(obj, dict):
            assert "secret" not in obj, where
            for k, v in obj.items():
                walk(v, f"{where}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}/{i}")
    for i, obj in enumerate(put):
        walk(obj, f"put {i}")
    assert len(blobs) > 784
    hits = [w for where, data in blobs for w, blob in scanner._blobs(where, data) if scanner.loads(blob)]
    assert not hits, f"secret keys in the object store: {hits[:5]}"
    assert not any(s in data for s in secrets_made for _, data in blobs)
    assert all(seal_bytes.inflate(data, 1 << 26) for _, data in blobs[-4:])  # ciphertexts, as sent
    # and nothing in Ray's folder (logs, spilled objects) is a secret key
    hits = scanner.scan([cluster.temp_dir])
    assert not hits, f"secret keys under Ray's temporary folder: {hits}"


@pytest.mark.parametrize("shared", [True, False], ids=["rows-shared", "whole-batch"])
def test_killed_ray_worker_has_its_work_run_again(cluster, cryptonets, tmp_path, shared):
    """One batch on two workers has its large layers' rows shared among them (when one is
    killed, the driver evaluates the batch again); on one worker it runs whole (Ray restarts the
    killed worker and the batch runs again there)."""
    prog, x, root, locals_ = cryptonets
    local = locals_.get("batch")
    if local is None:
        local = locals_["batch"] = prog.run(x, backend="tenseal", layout="batch")["logits"]
    out_path = tmp_path / "y.npy"
    proc = subprocess.Popen([HECC, "run", str(root / "cn.hecc"), "--input", str(root / "x4.npy"),
                             "--backend", "tenseal", "--layout", "batch", "--cluster", cluster.address,
                             "--output", str(out_path), "-q", *([] if shared else ["--workers", "1"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    task = "ray::EvalWorker.partial" if shared else "ray::EvalWorker.evaluate"
    victim, deadline = None, time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        busy = [p for p in procutil.pids() if procutil.cmdline(p).startswith(task)]
        if busy:
            time.sleep(1)  # let it compute a while
            victim = busy[0]
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.1)
    if victim is None:
        proc.kill()
        pytest.fail(f"no Ray worker seen running {task}; the run ended: {proc.communicate()[1]}")
    out, err = procutil.communicate_or_fail(proc, 180, "the run did not finish after its worker was killed")
    print(f"\n[ray fault] killed pid {victim} ({task}); exit {proc.returncode}; stderr:\n{err.strip()}")
    assert proc.returncode == 0, err
    if shared:
        assert "a cluster worker died while evaluating its rows of batch 1" in err, err
        assert "batch 1 is evaluated again here" in err, err
    else:
        assert f"pid {victim}" in err and "died while evaluating batch 1 of 1" in err, err
        assert "runs again on another worker" in err, err
    assert "1 batch was evaluated again; the results are complete" in err, err
    _close(np.load(out_path), local)


def test_server_evaluates_on_the_cluster(cluster, cryptonets, tmp_path):
    """The client/server split: `hecc eval --cluster` with eval.keys only (slots layout)."""
    _, _, root, _ = cryptonets

    def run(*args):
        proc = subprocess.run([HECC, *map(str, args)], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc
    run("keygen", root / "cn.hecc", "--out", "keys", "--layout", "slots", "-q")
    run("encrypt", root / "cn.hecc", root / "x4.npy", "--keys", "keys", "-o", "x.ct", "-q")
    run("eval", root / "cn.hecc", "x.ct", "--eval-keys", "keys/eval.keys", "-o", "local.ct", "-q")
    run("eval", root / "cn.hecc", "x.ct", "--eval-keys", "keys/eval.keys", "-o", "y.ct", "--cluster",
        cluster.address, "-q")
    run("decrypt", root / "cn.hecc", "local.ct", "--keys", "keys", "-o", "local.npy", "-q")
    run("decrypt", root / "cn.hecc", "y.ct", "--keys", "keys", "-o", "y.npy", "-q")
    # the same ciphertexts and keys: SEAL's evaluation is deterministic, so equal to the bit
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.load(tmp_path / "local.npy"))


def test_workers_are_sized_by_the_clusters_cpus_and_memory(cluster, cryptonets, monkeypatch):
    """Each worker asks Ray for the memory of one batch plus its keys; a run that cannot fit
    says so before any work, not after a timeout."""
    from hecc.executors import cluster as cluster_mod
    prog, x, _, _ = cryptonets
    with pytest.raises(hecc.UserError, match=r"--workers 3: the Ray cluster has room for 2 workers"):
        prog.run(x, backend="tenseal", layout="batch", cluster=cluster.address, workers=3)
    monkeypatch.setattr(cluster_mod, "worker_bytes", lambda graph, keys: 1 << 50)
    with pytest.raises(hecc.UserError, match=r"no node of the Ray cluster has a CPU and 1048576.00 GiB"):
        prog.run(x, backend="tenseal", layout="batch", cluster=cluster.address)


def test_service_evaluates_on_the_cluster(cluster, cryptonets, tmp_path):
    """`hecc serve --cluster`: the service's workers hand their jobs to the cluster; `hecc infer`
    gets the same classes as the plaintext program."""
    from service_util import ServiceProcess
    prog, x, root, _ = cryptonets
    with ServiceProcess(root / "cn.hecc", tmp_path / "data", "--cluster", cluster.address) as service:
        proc = subprocess.run([HECC, "infer", root / "cn.hecc", root / "x4.npy", "--server", service.url, "--keys",
                               tmp_path / "keys", "--layout", "slots", "-o", tmp_path / "y.npy", "-q"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr + service.stderr()
    expected = prog.run(x, backend="reference")["logits"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy").argmax(1), expected.argmax(1))
