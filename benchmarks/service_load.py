"""Load and restart test of `hecc serve` (the encrypted-inference service) with CryptoNets MNIST,
slots layout: C concurrent clients, each with its own key set, each doing R requests of D test
digits in sequence through ``hecc.Client(...).infer(x, server=url)``.

Measured and checked:
- every answer: logits within --atol + --rtol * max|reference logit| of the plaintext reference
  (``hecc.load(art).run(x, backend="reference")``) and the same argmax, except where the
  reference's top two logits are closer than --tie-margin (a near tie CKKS noise may flip:
  counted and listed, not a failure); accuracy against the labels is reported;
- latency of each request end to end (encrypt, upload, wait, download, decrypt), p50/p95/max,
  throughput (requests/s, digits/s) over the load, and per client the key generation and the
  registration of the evaluation keys (done before the load starts, timed apart);
- isolation: after its requests each client submits one more job (the low-level steps: encrypt,
  POST /v1/jobs with its token and an Idempotency-Key, wait); before the client downloads and
  deletes it, the job is asked for with another client's own token (GET state, GET result,
  DELETE: each must be 404), with a random token and with none (401); the owner's token must
  see it (200); after the owner deleted it, the owner gets 404;
- held results: this process is one more client; before the load it submits --held-jobs jobs and
  waits until they are done, and it downloads them (checked like the others) and deletes them only
  after the load, so finished results sit on the server during the whole load (and the kill);
- --kill-after S: S seconds into the load the server is SIGKILLed and started again on the same
  port with the same --data while the clients keep retrying. The key sets registered (DATA/keysets/*/
  record.json) and the finished results (DATA/jobs/*/result.ct) seen just before the kill must all
  be there after the restart, or the result must have been deleted by its own client (each client
  logs the DELETEs it sends); the held results must be among them; no client may have had to
  register again; every request must still be answered correctly; the evaluation workers must die
  with the killed server;
- the service's HTTP responses by status (GET /metrics, per server instance; a 5xx is a bug) and
  the peak RSS of the server's process tree (sampled sum of VmRSS of `hecc serve` and its
  workers, and the sum of their VmHWM).

    python benchmarks/service_load.py [--clients 16] [--requests 10] [--digits 4] [--workers 2]
                                      [--kill-after S] [--data ../shared/data/mnist.npz]
                                      [--artifact ART] [--keep]

Run it from the repository root. Writes benchmarks/results/service_load.json; exits 1 when any
check fails (each failure is printed, a client's exception with the client's number).
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

import hecc

HERE = os.path.dirname(os.path.abspath(__file__))
CRYPTONETS = os.path.join(HERE, "..", "examples", "cryptonets_mnist")
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from service_util import HECC, ServiceProcess  # noqa: E402  (the tests' service process)
UPLOAD_HEADERS = {"Content-Type": "application/octet-stream"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def images(path):
    """MNIST test images as the CryptoNets example takes them: (N, 1, 28, 28) float32 pixels / 255,
    and their labels; the example's 64 digits when the .npz is missing."""
    if os.path.exists(path):
        with np.load(path) as d:
            return (d["x_test"].astype(np.float32) / 255)[:, None], d["y_test"].astype(np.int64)
    log(f"{path} not found: using the example's 64 digits (examples/cryptonets_mnist/input.npy)")
    return np.load(os.path.join(CRYPTONETS, "input.npy")), np.load(os.path.join(CRYPTONETS, "labels.npy"))


def digits_of(client: int, request: int, requests: int, digits: int, total: int) -> list[int]:
    """Test-image indices of one request (request ``requests`` is the isolation job): distinct
    within a request, and across all requests while the test set lasts."""
    base = (client * (requests + 1) + request) * digits
    return [(base + i) % total for i in range(digits)]


# ---------------------------------------------------------------- the server process

def proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    return children


def process_tree(pid: int) -> list[int]:
    children, out, todo = proc_children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Service(ServiceProcess):
    """The service process of tests/service_util.py, plus the memory of its process tree."""

    def __init__(self, artifact: str, data: str, extra: list[str]):
        super().__init__(artifact, data, *extra)
        self.peak_rss_kib, self.hwm_kib = 0, []  # sampled sum of VmRSS; sum of VmHWM per instance

    def start(self, timeout: float = 120.0) -> "Service":
        super().start(timeout)
        self.hwm_kib.append(0)
        return self

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr().splitlines()[-lines:])

    def sample(self) -> None:
        """The memory of the process tree now: the sum of VmRSS (its peak kept) and of VmHWM."""
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = process_tree(self.proc.pid)
        self.peak_rss_kib = max(self.peak_rss_kib, sum(status_kib(p, "VmRSS") for p in tree))
        self.hwm_kib[-1] = max(self.hwm_kib[-1], sum(status_kib(p, "VmHWM") for p in tree))

    def kill(self) -> dict:
        """SIGKILL, as a crash; waits for the workers, which must die with it."""
        self.sample()
        workers = [p for p in process_tree(self.proc.pid) if p != self.proc.pid]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        deadline = time.monotonic() + 15
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in workers if alive(p)]
        return {"worker_pids": workers, "workers_alive_after_15s": left}

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.sample()
        return super().stop()


def raw(url: str, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
        retry_for: float = 120.0) -> tuple[int, dict]:
    """(status, JSON answer) of one request, retried only while the service cannot be reached."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + retry_for
    while True:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            try:
                answer = json.loads(data) if data else {}
            except ValueError:
                answer = {"text": data[:2000].decode(errors="replace")}
            return response.status, answer if isinstance(answer, dict) else {}
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            conn.close()


def metrics(url: str) -> dict:
    """The service's counters (GET /metrics): keysets, jobs, HTTP responses by status."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out, codes = {}, {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        found = re.match(r'hecc_http_responses_total\{code="(\d+)"\}', name)
        if found:
            codes[found.group(1)] = int(float(value))
        else:
            out[name] = float(value)
    out["http_responses"] = codes
    return out


def state_of(data: str) -> tuple[set[str], set[str]]:
    """(key sets with a record.json, jobs with a result.ct) in the service's --data folder."""
    keysets = {k for k in os.listdir(os.path.join(data, "keysets"))
               if os.path.exists(os.path.join(data, "keysets", k, "record.json"))}
    done = {j for j in os.listdir(os.path.join(data, "jobs"))
            if os.path.exists(os.path.join(data, "jobs", j, "result.ct"))}
    return keysets, done


# ---------------------------------------------------------------- one client (a process of its own)

def client_main(c: int, artifact: str, keys_dir: str, url: str, batches: list, deadline: float,
                out, go, checked) -> None:
    """Client ``c``: keys and registration, then ``go``, then its requests (``batches``: one
    array of digits per request, the last one for the isolation job), everything sent to ``out``."""
    from hecc.service import client as service_client
    report = {"client": c, "requests": [], "events": [], "retry_notices": 0, "error": None, "phase": "start"}
    events = report["events"]
    original = service_client.Connection.request

    def recorded(self, method, path, body=None, headers=None, save_to=None):
        """Connection.request, logged (the job ids submitted and deleted, registrations)."""
        start = time.time()
        try:
            status, answer = original(self, method, path, body, headers, save_to)
        except Exception as exc:
            events.append({"t": start, "method": method, "path": path.split("?")[0],
                           "outcome": f"{type(exc).__name__}: {str(exc)[:300]}"})
            raise
        if method != "GET":
            events.append({"t": start, "method": method, "path": path.split("?")[0], "outcome": status,
                           "job": answer.get("job")})
        return status, answer

    def progress(message):
        if "retrying" in str(message):
            report["retry_notices"] += 1

    service_client.Connection.request = recorded
    tempfile.tempdir = os.path.join(keys_dir + ".tmp")  # under the run's folder, even if this process is killed
    try:
        os.makedirs(tempfile.tempdir, exist_ok=True)
        prog = hecc.load(artifact)
        if prog.layout != "slots" and "slots" in prog.layouts:
            prog = prog.with_layout("slots")
        client = hecc.Client(prog, keys_dir, progress)
        name = prog.inputs[0][0]
        report["phase"] = "keygen"
        start = time.perf_counter()
        client.keygen()
        report["keygen_seconds"] = time.perf_counter() - start
        report["phase"] = "registration"
        start = time.perf_counter()
        conn = service_client.Connection(url, deadline)
        service_client.token(client, conn)
        report["register_seconds"] = time.perf_counter() - start
        out.put(("ready", c, {"keygen_seconds": report["keygen_seconds"],
                              "register_seconds": report["register_seconds"]}))
        report["phase"] = "waiting for the start"
        if not go.wait(3600):
            raise RuntimeError("the load was not started within an hour")
        for r, x in enumerate(batches[:-1]):
            report["phase"] = f"request {r}"
            start_wall, start = time.time(), time.perf_counter()
            y = client.infer(x, server=url, deadline=deadline)
            seconds = time.perf_counter() - start
            report["requests"].append({"request": r, "logits": next(iter(y.values())).tolist(), "seconds": seconds,
                                       "start": start_wall, "end": time.time()})
        report["phase"] = "isolation job"
        report["isolation"] = isolation_job(client, service_client, conn, url, name, batches[-1], c, out,
                                            checked)
    except BaseException as exc:  # everything goes to the report, with the client's number
        report["error"] = f"client {c} failed in {report['phase']}: {type(exc).__name__}: {exc}\n" + \
                          traceback.format_exc()
    finally:
        service_client.Connection.request = original
        out.put(("done", c, report))


def isolation_job(client, service_client, conn, url, name, x, c, out, checked) -> dict:
    """One job by hand: encrypt, submit, wait until done; the main process tries it with other
    tokens (``out``, then ``checked``); then download, decrypt, delete, and see it is gone."""
    result = {}
    auth = {"Authorization": f"Bearer {service_client.token(client, conn)}"}
    with tempfile.TemporaryDirectory(prefix="hecc-load-iso-") as tmp:
        sent, got = os.path.join(tmp, "input.ct"), os.path.join(tmp, "result.ct")
        client.encrypt({name: x}, sent)
        headers = {**UPLOAD_HEADERS, **auth, "Idempotency-Key": secrets.token_hex(16)}
        _, answer = conn.request("POST", "/v1/jobs", sent, headers)
        job = answer["job"]
        state = answer
        while state.get("state") not in ("done", "failed"):
            _, state = conn.request("GET", f"/v1/jobs/{job}?wait=20", headers=auth)
        result["job"], result["state"] = job, state.get("state")
        out.put(("isolation", c, job))
        result["checked_by_main"] = checked.wait(600)
        conn.request("GET", f"/v1/jobs/{job}/result", headers=auth, save_to=got)
        result["logits"] = next(iter(client.decrypt(got).values())).tolist()
        conn.request("DELETE", f"/v1/jobs/{job}", headers=auth)
        try:
            status, _ = conn.request("GET", f"/v1/jobs/{job}", headers=auth)
            result["after_delete"] = status
        except service_client.ServiceError as exc:
            result["after_delete"] = 404 if "(404)" in str(exc) else str(exc)[:300]
    return result


# ---------------------------------------------------------------- the main process

class Held:
    """A client in the main process whose jobs are finished before the load starts and only
    downloaded after it: finished results that sit on the server across the kill."""

    def __init__(self, artifact: str, keys_dir: str, url: str, deadline: float):
        from hecc.service import client as service_client
        prog = hecc.load(artifact).with_layout("slots")
        self.sc, self.client, self.name = service_client, hecc.Client(prog, keys_dir), prog.inputs[0][0]
        self.client.keygen()
        self.conn = service_client.Connection(url, deadline)
        self.auth = {"Authorization": f"Bearer {service_client.token(self.client, self.conn)}"}
        self.jobs: list[str] = []

    def submit(self, x: np.ndarray) -> None:
        with tempfile.TemporaryDirectory(prefix="hecc-load-held-") as tmp:
            path = os.path.join(tmp, "input.ct")
            self.client.encrypt({self.name: x}, path)
            headers = {**UPLOAD_HEADERS, **self.auth, "Idempotency-Key": secrets.token_hex(16)}
            self.jobs.append(self.conn.request("POST", "/v1/jobs", path, headers)[1]["job"])

    def wait(self) -> list[str]:
        states = []
        for job in self.jobs:
            state = {}
            while state.get("state") not in ("done", "failed"):
                state = self.conn.request("GET", f"/v1/jobs/{job}?wait=20", headers=self.auth)[1]
            states.append(state["state"])
        return states

    def collect(self) -> list[np.ndarray]:
        """Each job's result, downloaded and decrypted; then the job deleted."""
        out = []
        with tempfile.TemporaryDirectory(prefix="hecc-load-held-") as tmp:
            for job in self.jobs:
                path = os.path.join(tmp, f"{job}.ct")
                self.conn.request("GET", f"/v1/jobs/{job}/result", headers=self.auth, save_to=path)
                out.append(next(iter(self.client.decrypt(path).values())))
                self.conn.request("DELETE", f"/v1/jobs/{job}", headers=self.auth)
        return out


def token_of(keys_dir: str, url: str) -> str | None:
    try:
        with open(os.path.join(keys_dir, "service.json")) as f:
            return json.load(f)[url.rstrip("/")]["token"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_isolation(url: str, job: str, owner_token: str, other_token: str | None) -> dict:
    """The job of one client asked for by another client's token, a random one and none."""
    found = {}

    def ask(label, method, path, token, expected):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, answer = raw(url, method, path, headers)
        found[label] = {"status": status, "expected": expected, "ok": status == expected}
        if status != expected:
            found[label]["answer"] = answer

    ask("owner_token_state", "GET", f"/v1/jobs/{job}", owner_token, 200)
    if other_token:
        ask("other_client_state", "GET", f"/v1/jobs/{job}", other_token, 404)
        ask("other_client_result", "GET", f"/v1/jobs/{job}/result", other_token, 404)
        ask("other_client_delete", "DELETE", f"/v1/jobs/{job}", other_token, 404)
    random_token = secrets.token_hex(32)
    ask("random_token_state", "GET", f"/v1/jobs/{job}", random_token, 401)
    ask("random_token_result", "GET", f"/v1/jobs/{job}/result", random_token, 401)
    ask("no_token_result", "GET", f"/v1/jobs/{job}/result", None, 401)
    return found


def grade(logits, reference, labels, atol, rtol, tie_margin) -> dict:
    """Per request: the service's logits against the reference."""
    y, ref = np.asarray(logits, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    err = np.abs(y - ref).max(axis=1)
    allowed = atol + rtol * np.abs(ref).max(axis=1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    same = y.argmax(1) == ref.argmax(1)
    return {"err": err, "within": err <= allowed, "same": same, "tie": ~same & (margin < tie_margin),
            "margin": margin, "correct_label": y.argmax(1) == labels, "ref_correct_label": ref.argmax(1) == labels}


def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=10, help="requests per client (plus one isolation job)")
    ap.add_argument("--digits", type=int, default=4, help="test digits per request")
    ap.add_argument("--workers", type=int, default=2, help="hecc serve --workers")
    ap.add_argument("--kill-after", type=float, metavar="S",
                    help="SIGKILL the server S seconds into the load, then start it again")
    ap.add_argument("--held-jobs", type=int, default=2,
                    help="jobs of one more client (this process) finished before the load and downloaded "
                         "only after it: results that must survive the kill")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    ap.add_argument("--artifact", help="a compiled CryptoNets artifact (default: compiled here, slots layout)")
    ap.add_argument("--deadline", type=float, default=900.0,
                    help="the clients' deadline per request step (Client.infer(deadline=))")
    ap.add_argument("--timeout", type=float, default=7200.0, help="give up on the whole load after S seconds")
    ap.add_argument("--atol", type=float, default=1.0, help="logit tolerance: atol + rtol * max|reference|")
    ap.add_argument("--rtol", type=float, default=0.02)
    ap.add_argument("--tie-margin", type=float, default=1.0,
                    help="an argmax differing from the reference's is accepted (and counted) when the "
                         "reference's top two logits are closer than this")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "service_load.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (keys, --data, serve.log)")
    args = ap.parse_args()
    if args.clients < 1 or args.requests < 1 or args.digits < 1 or args.workers < 1:
        ap.error("--clients, --requests, --digits and --workers must be at least 1")

    failures: list[str] = []
    x_all, y_all = images(args.data)
    tmp = tempfile.mkdtemp(prefix="hecc-service-load-")
    ctx = multiprocessing.get_context("spawn")
    procs, service = [], None
    try:
        artifact = args.artifact
        compile_seconds = None
        if artifact is None:
            artifact = os.path.join(tmp, "cryptonets-slots.hecc")
            start = time.perf_counter()
            subprocess.run([HECC, "compile", os.path.join(CRYPTONETS, "model.onnx"), "--calibration",
                            os.path.join(CRYPTONETS, "input.npy"), "--layout", "slots", "-o", artifact, "-q"],
                           check=True)
            compile_seconds = time.perf_counter() - start
        prog = hecc.load(artifact)
        if "slots" not in prog.layouts:
            raise SystemExit(f"{artifact} has no slots layout (it has {prog.layouts})")
        plan = {c: [digits_of(c, r, args.requests, args.digits, len(x_all)) for r in range(args.requests + 1)]
                for c in range(args.clients)}
        plan[args.clients] = [digits_of(args.clients, h, args.requests, args.digits, len(x_all))
                              for h in range(args.held_jobs)]  # the held jobs
        used = sorted({i for rows in plan.values() for idx in rows for i in idx})
        reference = dict(zip(used, next(iter(prog.run(x_all[used], backend="reference").values()))))
        log(f"artifact {artifact}: layouts {prog.layouts}; {len(used)} distinct test digits; reference done")

        data = os.path.join(tmp, "data")
        service = Service(artifact, data, ["--workers", str(args.workers), "--max-queue", str(max(64, 4 * args.clients)),
                           "--max-inputs", str(max(64, args.digits))])
        start = time.perf_counter()
        service.start()
        url = service.url
        log(f"hecc serve --workers {args.workers} listening on {url} (started in {time.perf_counter() - start:.1f} s)")

        out, go = ctx.Queue(), ctx.Event()
        checked = [ctx.Event() for _ in range(args.clients)]
        keys = [os.path.join(tmp, "keys", f"c{c:02d}") for c in range(args.clients)]
        os.makedirs(os.path.join(tmp, "keys"))
        for c in range(args.clients):
            batches = [x_all[idx] for idx in plan[c]]
            p = ctx.Process(target=client_main, name=f"client-{c}",
                            args=(c, artifact, keys[c], url, batches, args.deadline, out, go, checked[c]))
            p.start()
            procs.append(p)

        reports: dict[int, dict] = {}
        ready: dict[int, dict] = {}
        isolation: dict[int, dict] = {}
        pending_isolation: list[tuple[int, str]] = []
        kill: dict = {"requested_after_seconds": args.kill_after, "done": False}
        setup_start = time.monotonic()

        def handle(message):
            kind, c, payload = message
            if kind == "ready":
                ready[c] = payload
            elif kind == "done":
                reports[c] = payload
                if payload["error"]:
                    failures.append(payload["error"].splitlines()[0])
                    log(payload["error"])
            elif kind == "isolation":
                pending_isolation.append((c, payload))

        def pump(seconds):
            try:
                handle(out.get(timeout=seconds))
            except queue.Empty:
                pass
            for c, p in enumerate(procs):  # a client that died without a report
                if p.exitcode not in (None, 0) and c not in reports:
                    reports[c] = {"client": c, "requests": [], "events": [], "retry_notices": 0,
                                  "error": f"client {c} died with exit code {p.exitcode} without a report"}
                    failures.append(reports[c]["error"])
            service.sample()

        log(f"{args.clients} clients: generating keys and registering them ...")
        held = Held(artifact, os.path.join(tmp, "keys", "held"), url, args.deadline)
        for idx in plan[args.clients]:
            held.submit(x_all[idx])
        held_states = held.wait()
        if any(s != "done" for s in held_states):
            failures.append(f"held jobs ended {held_states}")
        while len(ready) + len(reports) < args.clients and time.monotonic() - setup_start < args.timeout:
            pump(0.5)
        setup_seconds = time.monotonic() - setup_start
        registered_at_start = len(state_of(data)[0])
        if registered_at_start != len(ready) + 1:
            failures.append(f"{len(ready)} clients and this process registered, but the service holds "
                            f"{registered_at_start} key sets")
        log(f"{len(ready)} clients ready in {setup_seconds:.1f} s; the load starts "
            f"({args.requests} requests x {args.digits} digits each)")
        t0 = time.time()
        go.set()
        load_deadline = time.monotonic() + args.timeout
        instance_metrics = []
        while len(reports) < args.clients:
            if time.monotonic() > load_deadline:
                failures.append(f"the load did not end within --timeout {args.timeout:g} s")
                break
            pump(0.2)
            while pending_isolation:
                c, job = pending_isolation.pop(0)
                owner = token_of(keys[c], url)
                others = [d for d in list(range(c + 1, args.clients)) + list(range(c))
                          if token_of(keys[d], url)]
                other = others[0] if others else None
                isolation[c] = {"job": job, "other_client": other,
                                "checks": check_isolation(url, job, owner, token_of(keys[other], url) if other is not None else None)}
                checked[c].set()
            if args.kill_after is not None and not kill["done"] and time.time() - t0 >= args.kill_after:
                try:
                    instance_metrics.append(metrics(url))
                except OSError as exc:
                    instance_metrics.append({"error": str(exc)})
                keysets_before, done_before = state_of(data)
                pending_before = len(os.listdir(os.path.join(data, "queue"))) + sum(
                    len(os.listdir(os.path.join(data, "running", w))) for w in os.listdir(os.path.join(data, "running")))
                killed_at = time.time()
                died = service.kill()
                log(f"SIGKILLed the server {killed_at - t0:.1f} s into the load ({len(keysets_before)} key sets, "
                    f"{len(done_before)} finished results, {pending_before} jobs queued or running); starting it again")
                service.start()
                restarted_at = time.time()
                keysets_after, done_after = state_of(data)
                kill.update({"done": True, "at_seconds": killed_at - t0, "downtime_seconds": restarted_at - killed_at,
                             "keysets_before": sorted(keysets_before), "done_results_before": sorted(done_before),
                             "jobs_pending_before": pending_before, "keysets_after": sorted(keysets_after),
                             "results_after": sorted(done_after), "after_time": restarted_at,
                             "same_port": service.url == url, **died})
                if service.url != url:
                    failures.append(f"the restarted server listens on {service.url}, not {url}")
                if died["workers_alive_after_15s"]:
                    failures.append(f"worker processes {died['workers_alive_after_15s']} outlived the SIGKILLed server")
                log(f"restarted in {restarted_at - killed_at:.1f} s")
        for p in procs:
            p.join(30)
        held_answers = held.collect()
        try:
            instance_metrics.append(metrics(service.url))
        except OSError as exc:
            instance_metrics.append({"error": str(exc)})
        service.sample()
        keysets_final, done_final = state_of(data)
        jobs_left = sorted(os.listdir(os.path.join(data, "jobs")))
        stopped = service.stop()

        # ------------------------------------------------------------ grading
        latencies, rows, errs, agree, ties, within, correct, ref_correct, wrong = [], 0, [], 0, [], 0, 0, 0, []
        ends, spanning, reregistrations, retry_notices = [], 0, {}, 0
        for c in range(args.clients):
            rep = reports.get(c, {"requests": [], "events": [], "error": f"client {c} sent no report"})
            if c not in reports:
                failures.append(rep["error"])
            got = {q["request"]: q for q in rep["requests"]}
            if not rep.get("error") and len(got) != args.requests:
                failures.append(f"client {c} answered {len(got)} of {args.requests} requests")
            for r, q in sorted(got.items()):
                idx = plan[c][r]
                g = grade(q["logits"], [reference[i] for i in idx], y_all[idx], args.atol, args.rtol, args.tie_margin)
                latencies.append(q["seconds"])
                ends.append(q["end"])
                if kill.get("done") and q["start"] < t0 + kill["at_seconds"] < q["end"]:
                    spanning += 1
                rows += len(idx)
                errs.append(float(g["err"].max()))
                agree += int(g["same"].sum())
                within += int(g["within"].sum())
                correct += int(g["correct_label"].sum())
                ref_correct += int(g["ref_correct_label"].sum())
                for k in np.flatnonzero(g["tie"]):
                    ties.append({"client": c, "request": r, "digit": idx[k], "reference_margin": float(g["margin"][k]),
                                 "max_abs_error": float(g["err"][k])})
                for k in np.flatnonzero(~g["within"] | (~g["same"] & ~g["tie"])):
                    wrong.append({"client": c, "request": r, "digit": idx[k], "max_abs_error": float(g["err"][k]),
                                  "argmax": int(np.argmax(q["logits"][k])), "reference_argmax": int(np.argmax(reference[idx[k]])),
                                  "reference_margin": float(g["margin"][k])})
            registrations = [e for e in rep["events"] if e["method"] == "POST" and e["path"] == "/v1/keysets"]
            reregistrations[c] = len(registrations) - 1
            retry_notices += rep.get("retry_notices", 0)
        if wrong:
            failures.append(f"{len(wrong)} wrong answer(s): {wrong[:5]}")
        if any(n > 0 for n in reregistrations.values()):
            failures.append(f"clients had to register their key set again (per client: {reregistrations})")

        # isolation
        iso = {"jobs_checked": 0, "requests": 0, "as_expected": 0, "other_client_404": 0,
               "random_or_no_token_401": 0, "owner_200": 0, "answers_correct": 0,
               "gone_after_owner_delete": 0, "failed": []}
        for c in range(args.clients):
            mine = reports.get(c, {}).get("isolation")
            if c not in isolation:
                if not reports.get(c, {}).get("error"):
                    failures.append(f"client {c}: its isolation job was not checked")
                continue
            iso["jobs_checked"] += 1
            for label, check in isolation[c]["checks"].items():
                iso["requests"] += 1
                iso["as_expected"] += check["ok"]
                if check["ok"]:
                    key = ("other_client_404" if label.startswith("other") else
                           "owner_200" if label.startswith("owner") else "random_or_no_token_401")
                    iso[key] += 1
                else:
                    iso["failed"].append({"client": c, "check": label, **check})
            if isolation[c]["other_client"] is None:
                iso["failed"].append({"client": c, "check": "other_client", "why": "no other client had a token"})
            if mine:
                idx = plan[c][args.requests]
                g = grade(mine["logits"], [reference[i] for i in idx], y_all[idx], args.atol, args.rtol, args.tie_margin)
                if (g["within"] & (g["same"] | g["tie"])).all():
                    iso["answers_correct"] += 1
                else:
                    iso["failed"].append({"client": c, "check": "answer", "max_abs_error": float(g["err"].max())})
                if mine.get("after_delete") == 404:
                    iso["gone_after_owner_delete"] += 1
                else:
                    iso["failed"].append({"client": c, "check": "after_delete", "got": mine.get("after_delete")})
        held_report = {"jobs": len(held.jobs), "answers_correct": 0}
        for h, y in enumerate(held_answers):
            idx = plan[args.clients][h]
            g = grade(y, [reference[i] for i in idx], y_all[idx], args.atol, args.rtol, args.tie_margin)
            held_report["answers_correct"] += bool((g["within"] & (g["same"] | g["tie"])).all())
        if held_report["answers_correct"] != len(held.jobs):
            failures.append(f"held jobs: {held_report['answers_correct']} of {len(held.jobs)} answers correct")
        if iso["failed"]:
            failures.append(f"isolation: {len(iso['failed'])} check(s) failed: {iso['failed'][:5]}")
        if args.clients < 2:
            failures.append("isolation: needs at least 2 clients to try another client's token")

        # kill and restart
        if args.kill_after is not None:
            if not kill["done"]:
                failures.append(f"the load ended before --kill-after {args.kill_after:g} s: no kill happened")
            else:
                deleted = {}
                for rep in reports.values():
                    for e in rep["events"]:
                        if e["method"] == "DELETE":
                            deleted.setdefault(e["path"].rsplit("/", 1)[1], []).append(e["t"])
                before, after = set(kill["done_results_before"]), set(kill["results_after"])
                missing = before - after
                by_client = {j for j in missing if any(t < kill["after_time"] for t in deleted.get(j, []))}
                lost = sorted(missing - by_client)
                lost_keysets = sorted(set(kill["keysets_before"]) - set(kill["keysets_after"]))
                lost_keysets_final = sorted(set(kill["keysets_before"]) - keysets_final)
                held_jobs = set(held.jobs)
                kill["held_results"] = {"done_before": len(held_jobs & before), "there_after": len(held_jobs & after),
                                        "of": len(held_jobs)}
                if not held_jobs <= before & after:
                    failures.append(f"held results: {kill['held_results']} (all must be finished before the kill "
                                    "and there after the restart)")
                kill.update({"results_still_there": len(before & after), "results_deleted_by_their_client": len(by_client),
                             "results_lost": lost, "keysets_lost": lost_keysets, "keysets_lost_by_the_end": lost_keysets_final,
                             "requests_spanning_the_kill": spanning})
                if lost:
                    failures.append(f"results lost in the restart: {lost}")
                if lost_keysets or lost_keysets_final:
                    failures.append(f"key sets lost in the restart: {lost_keysets or lost_keysets_final}")
                for key in ("keysets_before", "keysets_after", "done_results_before", "results_after"):
                    kill[key] = len(kill[key])
                kill.pop("after_time", None)
        server_errors = {code: n for m in instance_metrics for code, n in m.get("http_responses", {}).items()
                         if code.startswith("5") and code not in ("503",)}
        if server_errors:
            failures.append(f"the service answered 5xx (a bug in hecc): {server_errors}")
        serve_log = service.stderr()
        internal = [line for line in serve_log.splitlines() if "internal error" in line or "Traceback" in line]
        if internal:
            failures.append(f"the serve log has {len(internal)} internal error(s): {internal[:3]}")

        load_wall = (max(ends) - t0) if ends else None
        n_req = len(latencies)
        results = {
            "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "model": "cryptonets_mnist", "layout": "slots",
            "parameters": prog.with_layout("slots").parameters,
            "clients": args.clients, "requests_per_client": args.requests, "digits_per_request": args.digits,
            "workers": args.workers, "compile_seconds": compile_seconds,
            "serve_options": service.extra,
            "setup": {"seconds": setup_seconds, "eval_key_bytes": os.path.getsize(os.path.join(tmp, "keys", "held", "eval.keys")), "clients_ready": len(ready), "keysets_registered": registered_at_start,
                      "keygen_seconds": {"p50": percentile([r["keygen_seconds"] for r in ready.values()], 50),
                                         "max": max([r["keygen_seconds"] for r in ready.values()], default=None)},
                      "register_seconds": {"p50": percentile([r["register_seconds"] for r in ready.values()], 50),
                                           "max": max([r["register_seconds"] for r in ready.values()], default=None)},
                      "note": "all clients generate keys and register at once, before the load; not in the latencies"},
            "load": {"requests_answered": n_req, "requests_expected": args.clients * args.requests,
                     "digits": rows, "wall_seconds": load_wall,
                     "requests_per_second": n_req / load_wall if load_wall else None,
                     "digits_per_second": rows / load_wall if load_wall else None,
                     "latency_seconds": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                                         "max": max(latencies, default=None), "min": min(latencies, default=None)},
                     "client_retry_notices": retry_notices},
            "answers": {"argmax_agreement": agree / rows if rows else None, "near_ties_flipped": ties,
                        "within_tolerance": within / rows if rows else None,
                        "max_abs_error": max(errs, default=None),
                        "tolerance": {"atol": args.atol, "rtol": args.rtol, "tie_margin": args.tie_margin},
                        "accuracy": correct / rows if rows else None,
                        "reference_accuracy": ref_correct / rows if rows else None, "wrong": wrong},
            "isolation": iso, "held_jobs": held_report,
            "kill_restart": kill if args.kill_after is not None else None,
            "server": {"peak_rss_mib_sampled": round(service.peak_rss_kib / 1024, 1),
                       "sum_vmhwm_mib_per_instance": [round(k / 1024, 1) for k in service.hwm_kib],
                       "metrics_per_instance": instance_metrics, "exit_code_on_sigterm": stopped,
                       "jobs_left_in_data": len(jobs_left), "keysets_in_data": len(keysets_final)},
            "client_errors": [r["error"] for r in reports.values() if r.get("error")],
            "failures": failures, "ok": not failures,
        }
        print(json.dumps(results, indent=2))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        log(f"wrote {args.out}")
        lat = results["load"]["latency_seconds"]
        if n_req:
            log(f"{n_req} requests of {args.digits} digits by {args.clients} clients in {load_wall:.1f} s: "
                f"{n_req / load_wall:.2f} requests/s, {rows / load_wall:.1f} digits/s; latency p50 {lat['p50']:.2f} s, "
                f"p95 {lat['p95']:.2f} s, max {lat['max']:.2f} s; argmax agreement {agree / rows:.4f}, "
                f"accuracy {correct / rows:.4f}, max |error| {max(errs):.3g}; isolation {iso['as_expected']}/"
                f"{iso['requests']} as expected; peak server RSS {service.peak_rss_kib / 1024:.0f} MiB")
        if jobs_left:
            log(f"note: {len(jobs_left)} job(s) are left in the service's data (clients delete theirs)")
    except BaseException:
        if service is not None and service.proc is not None:
            log("serve.log (last lines):\n" + service.log_tail())
        raise
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
        if service is not None:
            service.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        log("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    log("all checks passed")


if __name__ == "__main__":
    main()
