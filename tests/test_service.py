"""`hecc serve` and `hecc infer`: the real service as a process on 127.0.0.1, real HTTP clients.

CryptoNets digits through the service equal `hecc run --backend tenseal`; several clients with
their own key sets at once, none able to read another's job; a SIGKILL in the middle of a load
loses no key set and no finished result, and every request is answered correctly in the end.
(Hostile requests and the fuzz are in test_service_hostile.py.)"""
import json
import os
import secrets
import subprocess
import threading

import numpy as np
import pytest

import hecc
from conftest import EXAMPLES, assert_close
from service_util import HECC, ServiceProcess, answer, request

CRYPTONETS = os.path.join(EXAMPLES, "cryptonets_mnist")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    art = root / "cn.hecc"
    subprocess.run([HECC, "compile", os.path.join(CRYPTONETS, "model.onnx"), "--calibration",
                    os.path.join(CRYPTONETS, "input.npy"), "--layout", "slots", "-o", str(art), "-q"], check=True)
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    expected = hecc.load(str(art)).run(x, backend="reference")
    return root, art, x, next(iter(expected.values()))


def _cli(*args, cwd=None):
    proc = subprocess.run([HECC, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_hecc_infer_equals_hecc_run_with_tenseal(setup):
    root, art, x, expected = setup
    np.save(root / "x6.npy", x[:6])
    with ServiceProcess(art, root / "data-infer") as service:
        proc = _cli("infer", art, root / "x6.npy", "--server", service.url, "--keys", root / "keys-infer",
                    "-o", root / "y-infer.npy")
        assert proc.returncode == 0, proc.stderr
        # the second call reuses the key set and its registration (no second upload of eval.keys)
        again = _cli("infer", art, root / "x6.npy", "--server", service.url, "--keys", root / "keys-infer",
                     "-o", root / "y-again.npy", "--output-mode", "argmax")
        assert again.returncode == 0, again.stderr
        assert "registering" not in again.stderr
        _, _, body = request(service.url, "GET", "/metrics")
        assert "hecc_keysets 1\n" in body.decode()
        assert service.stop() == 0 and "hecc serve: stopped (SIGTERM)" in service.stderr()
    ran = _cli("run", art, "--input", root / "x6.npy", "--backend", "tenseal", "--layout", "slots",
               "-o", root / "y-run.npy", "-q")
    assert ran.returncode == 0, ran.stderr
    served, local = np.load(root / "y-infer.npy"), np.load(root / "y-run.npy")
    assert (served.argmax(1) == local.argmax(1)).all()
    assert (np.load(root / "y-again.npy") == served.argmax(1)).all()
    assert_close(served, local, rel=2e-2, what="service against hecc run")
    assert_close(served, expected[:6], rel=2e-2, what="service against the reference")
    # the token is the client's and private; the secret key never reached the service
    keys = root / "keys-infer"
    assert oct(os.stat(keys / "service.json").st_mode & 0o777) == "0o600"
    secret = (keys / "secret.key").read_bytes()
    for folder, _, files in os.walk(root / "data-infer"):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                assert secret[-4096:] not in f.read(), name


def _submit(service, client, x, key=None):
    """Encrypt ``x`` and submit it as a job with the client's saved token: (job, token)."""
    path = os.path.join(client.keys_dir, f"x-{secrets.token_hex(4)}.ct")
    client.encrypt({client.program.inputs[0][0]: x}, path)
    token = json.load(open(os.path.join(client.keys_dir, "service.json")))[service.url]["token"]
    with open(path, "rb") as f:
        status, _, body = request(service.url, "POST", "/v1/jobs", f.read(),
                                  {"Authorization": f"Bearer {token}", "Idempotency-Key": key or secrets.token_hex(8)})
    assert status == 202, body
    return answer(body)["job"], token


def test_clients_at_once_each_see_only_their_own_jobs(setup):
    root, art, x, expected = setup
    program = hecc.load(str(art))
    clients = [hecc.Client(program, str(root / f"keys-load-{i}")) for i in range(4)]
    results, errors = {}, []

    def work(i):
        try:
            results[i] = [clients[i].infer(x[4 * (3 * i + r):4 * (3 * i + r + 1)], server=service.url, deadline=120)
                          for r in range(3)]
        except Exception as exc:  # reported below with the client's number
            errors.append((i, repr(exc)))

    with ServiceProcess(art, root / "data-load", "--workers", "2") as service:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        for i, outs in results.items():
            for r, out in enumerate(outs):
                got = next(iter(out.values()))
                want = expected[4 * (3 * i + r):4 * (3 * i + r + 1)]
                assert (got.argmax(1) == want.argmax(1)).all(), (i, r)
        # a job of client 0, asked for with client 1's token (or none, or a made-up one)
        job, token0 = _submit(service, clients[0], x[:2])
        token1 = json.load(open(os.path.join(clients[1].keys_dir, "service.json")))[service.url]["token"]
        for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/result"):
            assert request(service.url, "GET", path, headers={"Authorization": f"Bearer {token1}"})[0] == 404
            assert request(service.url, "DELETE", path.removesuffix("/result"),
                           headers={"Authorization": f"Bearer {token1}"})[0] == 404
            assert request(service.url, "GET", path, headers={"Authorization": f"Bearer {'0' * 64}"})[0] == 401
            assert request(service.url, "GET", path)[0] == 401
        status, _, body = request(service.url, "GET", f"/v1/jobs/{job}?wait=30",
                                  headers={"Authorization": f"Bearer {token0}"})
        assert status == 200 and answer(body)["state"] == "done", body
        status, _, body = request(service.url, "GET", "/metrics")
        text = body.decode()
        assert "hecc_keysets 4\n" in text and "hecc_jobs_evaluated_total 13\n" in text, text


def test_sigkill_in_the_middle_of_a_load_loses_nothing(setup):
    """Finished results and key sets survive; queued and running jobs run again; the clients
    (retrying while the service is down) all get the right answers."""
    root, art, x, expected = setup
    program = hecc.load(str(art))
    data = root / "data-kill"
    service = ServiceProcess(art, data).start()
    try:
        # one client's jobs by hand: a finished one whose result is not downloaded yet
        owner = hecc.Client(program, str(root / "keys-kill-owner"))
        owner.infer(x[:1], server=service.url)  # keys made and registered
        first, token = _submit(service, owner, x[:3])
        assert answer(request(service.url, "GET", f"/v1/jobs/{first}?wait=30",
                              headers={"Authorization": f"Bearer {token}"})[2])["state"] == "done"
        # and a load of clients in threads, killed in its middle
        clients = [hecc.Client(program, str(root / f"keys-kill-{i}")) for i in range(3)]
        results, errors = {}, []

        def work(i):
            try:
                results[i] = [clients[i].infer(x[8 * i + 2 * r:8 * i + 2 * r + 2], server=service.url, deadline=180)
                              for r in range(4)]
            except Exception as exc:
                errors.append((i, repr(exc)))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clients))]
        for t in threads:
            t.start()
        waiting = [_submit(service, owner, x[10 + i:12 + i])[0] for i in range(3)]
        registered = {name for name in os.listdir(data / "keysets") if (data / "keysets" / name / "record.json").exists()}
        service.kill()
        assert any(t.is_alive() for t in threads), "the load ended before the kill; nothing was tested"
        assert registered >= {json.load(open(root / "keys-kill-owner" / "service.json"))[service.url]["keyset"]}
        service.start()  # the same port, the same --data
        for t in threads:
            t.join(300)
        assert not errors, errors
        for i, outs in results.items():
            for r, out in enumerate(outs):
                want = expected[8 * i + 2 * r:8 * i + 2 * r + 2]
                assert (next(iter(out.values())).argmax(1) == want.argmax(1)).all(), (i, r)
        kept = {name for name in os.listdir(data / "keysets") if (data / "keysets" / name / "record.json").exists()}
        assert registered <= kept
        auth = {"Authorization": f"Bearer {token}"}
        for job, rows in [(first, x[:3])] + [(j, x[10 + i:12 + i]) for i, j in enumerate(waiting)]:
            status, _, body = request(service.url, "GET", f"/v1/jobs/{job}?wait=60", headers=auth)
            assert status == 200 and answer(body)["state"] == "done", body
            status, _, body = request(service.url, "GET", f"/v1/jobs/{job}/result", headers=auth)
            assert status == 200
            (root / "r.ct").write_bytes(body)
            got = next(iter(owner.decrypt(str(root / "r.ct")).values()))
            want = next(iter(program.run(rows, backend="reference").values()))
            assert (got.argmax(1) == want.argmax(1)).all(), job
        assert not os.listdir(data / "uploads")
    finally:
        service.stop()


def test_hecc_infer_waits_for_a_service_that_is_starting(setup):
    """A client started before the service retries refused connections, then gets its answer;
    after the deadline it stops with one message."""
    root, art, x, expected = setup
    np.save(root / "x2.npy", x[:2])
    service = ServiceProcess(art, root / "data-late", port=0).start()
    port = service.port
    service.stop()
    late = subprocess.Popen([HECC, "infer", str(art), str(root / "x2.npy"), "--server", f"http://127.0.0.1:{port}",
                             "--keys", str(root / "keys-late"), "-o", str(root / "y-late.npy")],
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []  # the service starts once the client has found it unreachable (under load the
        for line in late.stderr:  # client's key generation took longer than the service's start)
            seen.append(line)
            if "cannot be reached" in line:
                break
        service.start(timeout=60)
        _, rest = late.communicate(timeout=180)
        err = "".join(seen) + rest
        assert late.returncode == 0, err
        assert "cannot be reached" in err and "retrying" in err
        assert (np.load(root / "y-late.npy").argmax(1) == expected[:2].argmax(1)).all()
    finally:
        service.stop()
    gone = _cli("infer", art, root / "x2.npy", "--server", f"http://127.0.0.1:{port}", "--keys", root / "keys-late",
                "-o", root / "y-gone.npy", "--timeout", "2", "-q")
    assert gone.returncode == 2
    assert "cannot be reached" in gone.stderr and "gave up after 2 s" in gone.stderr
    assert not (root / "y-gone.npy").exists()


def test_serve_refuses_bad_setups_with_one_message(setup, tmp_path):
    root, art, x, _ = setup
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    proc = _cli("serve", art, "--data", foreign, "--port", "0")
    assert proc.returncode == 2 and "not a hecc service's state" in proc.stderr
    assert (foreign / "notes.txt").read_text() == "mine" and os.listdir(foreign) == ["notes.txt"]
    with ServiceProcess(art, tmp_path / "data") as service:
        busy = _cli("serve", art, "--data", tmp_path / "data2", "--port", service.port)
        assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{service.port}" in busy.stderr
        wrong = _cli("infer", art, os.path.join(CRYPTONETS, "input.npy"), "--server", service.url.replace("http", "https"),
                     "--keys", tmp_path / "k", "-o", tmp_path / "y.npy")
        assert wrong.returncode == 2 and "http://HOST:PORT" in wrong.stderr
    other = tmp_path / "other.hecc"
    assert _cli("compile", os.path.join(CRYPTONETS, "model.onnx"), "--calibration",
                os.path.join(CRYPTONETS, "input.npy"), "--layout", "batch", "-o", other, "-q").returncode == 0
    taken = _cli("serve", other, "--data", tmp_path / "data", "--port", "0")
    assert taken.returncode == 2 and "another program" in taken.stderr
    for bad in (["--workers", "0"], ["--max-queue", "0"], ["--port", "70000"], ["--upload-timeout", "0"]):
        proc = _cli("serve", art, "--data", tmp_path / "data3", *bad)
        assert proc.returncode == 2, (bad, proc.stderr)


def test_a_job_committed_just_before_a_crash_is_queued_at_the_next_start(tmp_path):
    """A SIGKILL between a job's record (its commit) and its queue marker: the next start queues it."""
    from hecc.service.store import Store
    (tmp_path / "program.hecc").write_bytes(b"x")
    store = Store.create_or_open(str(tmp_path / "data"), {"slots": "f" * 64}, str(tmp_path / "program.hecc"))
    for job in ("1" * 32, "3" * 32):
        upload = store.path("uploads", "body")
        with open(upload, "wb") as f:
            f.write(b"ciphertexts")
        store.submit(job, "2" * 32, "slots", upload, 1)
    for marker in os.listdir(store.path("queue")):
        if marker.endswith("1" * 32):
            os.unlink(store.path("queue", marker))  # the crash came before the marker
    assert store.pending() == 1
    store = Store.create_or_open(str(tmp_path / "data"), {"slots": "f" * 64}, str(tmp_path / "program.hecc"))
    assert store.pending() == 2 and store.state("1" * 32)["state"] == "queued"
    claimed = [store.claim("w0")[1], store.claim("w0")[1]]
    assert claimed == ["1" * 32, "3" * 32]  # in the order they were submitted


def test_a_worker_that_cannot_start_stops_the_service_with_its_reason(setup, tmp_path):
    root, art, x, _ = setup
    data = tmp_path / "data"
    with ServiceProcess(art, data):
        pass
    (data / "program.hecc").write_bytes(b"not an artifact any more")
    proc = _cli("serve", art, "--data", data, "--port", "0")
    assert proc.returncode == 2, proc.stderr
    assert "hecc serve: worker w0:" in proc.stderr and "could not start (exit code 2)" in proc.stderr
    assert "listening" not in proc.stderr
