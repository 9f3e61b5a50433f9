"""Executors apart from backends: the TenSEAL backend manages no process, the local executor runs
in process or on forked workers with equal results, and --cluster without Ray says what to install."""
from __future__ import annotations

import inspect
import os
import sys

import numpy as np
import pytest

import hecc
from hecc import cli
from hecc.backends import tenseal as tenseal_backend
from hecc.executors import LocalExecutor, executor_for

CRYPTONETS = os.path.join(os.path.dirname(__file__), "..", "examples", "cryptonets_mnist")


def test_the_tenseal_backend_has_no_process_management():
    source = inspect.getsource(tenseal_backend)
    for word in ("forked_map", "multiprocessing", "os.fork", "ProcessPool", "anonymous_file", "_ACTIVE"):
        assert word not in source, word


def test_local_executor_in_process_and_forked_agree():
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x).with_layout("slots")
    one = prog.run(x[:3], backend="tenseal", workers=1)["logits"]
    assert prog.last_stats["workers"] == 1
    two = prog.run(x[:3], backend="tenseal", workers=2)["logits"]
    assert prog.last_stats["workers"] == 2
    np.testing.assert_array_equal(one.argmax(1), two.argmax(1))
    # each run has its own keys and noise, each within twice the prediction of the exact result
    predicted = prog.artifact.manifest["predicted_precision"]["slots"]
    assert np.abs(one - two).max() <= 4 * predicted * np.abs(one).max()
    assert isinstance(executor_for(3), LocalExecutor) and executor_for(3).workers == 3


def test_cluster_without_ray_says_to_install_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    with pytest.raises(hecc.UserError, match=r"pip install 'hecc\[ray\]'"):
        executor_for(None, "127.0.0.1:6379")
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))[:2]
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x, layout="slots")
    prog.save(str(tmp_path / "cn.hecc"))
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    code = cli.main(["run", str(tmp_path / "cn.hecc"), "--input", str(tmp_path / "x.npy"), "--backend",
                     "tenseal", "--cluster", "127.0.0.1:6379", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "hecc[ray]" in err and "Traceback" not in err, err
    with pytest.raises(hecc.UserError, match="tenseal backend only"):
        prog.run(x, backend="sim", cluster="127.0.0.1:6379")


def test_batches_side_by_side_are_limited_by_the_memory_available(monkeypatch):
    """The local pool evaluates as many batches at once as their predicted memory fits in what
    is available, and says so; a batch that does not fit alone is told it may be killed."""
    from hecc.executors import local
    per = 3 << 30
    said = []
    monkeypatch.setattr(local, "available_bytes", lambda: 100 << 30)
    assert local.fitting_workers(per, 4, 10, said.append) == 4 and not said
    monkeypatch.setattr(local, "available_bytes", lambda: 7 << 30)
    assert local.fitting_workers(per, 4, 10, said.append) == 2
    assert said[-1] == "2 of 4 batches side by side: each needs 3.0 GiB (predicted) and 7.0 GiB are available"
    assert local.fitting_workers(per, 4, 1, said.append) == 4  # one batch: its rows are shared
    monkeypatch.setattr(local, "available_bytes", lambda: 2 << 30)
    assert local.fitting_workers(per, 2, 5, said.append) == 1
    assert "predicted memory for one batch is 3.0 GiB and 2.0 GiB are available" in said[-1]


def test_forked_calls_run_a_closure_while_the_caller_works_and_end_with_the_block():
    """``forked_calls`` hands a closure over the caller's data to forked processes (nothing but
    the items and results is pickled) and returns their results in order while the caller goes
    on; leaving the block kills what still runs."""
    import time
    from hecc.backends.workers import forked_calls
    data = np.arange(10)
    with forked_calls(lambda k: (int(data[k]) * 2, os.getpid()), [3, 4], 2) as results:
        mine = int(data.sum())
        found = list(results())
    assert [value for value, _ in found] == [6, 8] and mine == 45
    assert all(pid != os.getpid() for _, pid in found)
    start = time.monotonic()
    with forked_calls(time.sleep, [60], 1):
        pass
    assert time.monotonic() - start < 10
