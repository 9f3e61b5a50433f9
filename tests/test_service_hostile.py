"""Hostile requests against a real ``hecc serve`` process on 127.0.0.1.

Every kind of bad request (a truncated, oversized, compressed, foreign, edited or misplaced file,
a wrong or missing token, another client's job, a slow upload, a malformed header or parameter,
a wrong method) gets a 4xx whose JSON ``error`` is a message a user can act on -- for a bad file,
the very message ``hecc eval`` gives for it -- naming no path of the service's own; the service
goes on serving, and nothing changed in its state (no key set appeared, no job, no upload left
behind). A bounded hypothesis fuzz of the endpoints (random methods, paths, headers, bodies and
mutated valid files) gets no 5xx and leaves the process alive; and after all of it a valid client
still registers, submits, waits, downloads and decrypts the right classes.
"""
from __future__ import annotations

import gzip
import http.client
import io
import json
import os
import re
import socket
import string
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import hecc
import hecc.cli
import hostile
from conftest import EXAMPLES
from hecc.clientserver import Client, Server
from hecc.errors import UserError
from service_util import ServiceProcess, answer, request
from test_clientserver import _model  # a small model: another program than CryptoNets

UPLOAD_TIMEOUT = 2  # seconds without a byte before an upload is dropped (--upload-timeout)
MAX_INPUTS = 8  # --max-inputs: an input upload may be ~30 MB, more than eval.keys (~20 MB)
UPLOAD_NAME = {"eval": "the uploaded eval.keys", "input": "the uploaded ciphertexts"}
STATUSES: dict[str, object] = {}  # kind -> the status(es) it got (shown with pytest -s at the end)
FUZZ = Counter()  # the statuses the fuzz got
FUZZ_MESSAGES = Counter()  # the messages of its 4xx (their start)


class Svc:
    """The service under test and the files the cases are made of."""

    def __init__(self, root):
        self.root = root
        self.data = root / "data"
        self._bytes = {}

    def bytes(self, name: str) -> bytes:
        """The bytes of the file ``root/name`` (cached: eval.keys is ~20 MB)."""
        if name not in self._bytes:
            self._bytes[name] = (self.root / name).read_bytes()
        return self._bytes[name]

    def auth(self, who="a") -> dict:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def snapshot(self):
        """What a refused request must not change: the key sets (their records) and the jobs."""
        keysets = {k: (self.data / "keysets" / k / "record.json").read_bytes()
                   for k in sorted(os.listdir(self.data / "keysets"))}
        return keysets, sorted(os.listdir(self.data / "jobs"))

    def metric(self, name: str) -> float:
        status, _, body = request(self.url, "GET", "/metrics")
        assert status == 200
        found = re.search(rf"^{re.escape(name)} (\S+)$", body.decode(), re.M)
        assert found, f"no {name} in /metrics"
        return float(found.group(1))

    def assert_no_server_error(self) -> None:
        """No 5xx counted since the start, no traceback in the log, and still serving."""
        status, _, body = request(self.url, "GET", "/metrics")
        codes = re.findall(r'hecc_http_responses_total\{code="(\d+)"\}', body.decode())
        assert codes and all(int(c) < 500 for c in codes), body.decode()
        log = self.proc.stderr()
        assert "Traceback" not in log and "internal error" not in log, log[-3000:]
        self.assert_serving()

    def assert_serving(self, body: bytes = b"") -> None:
        """The process lives and answers, left no upload behind, and ``body`` (an answer) names
        no path of the service's."""
        assert self.proc.running(), self.proc.stderr()[-3000:]
        status, _, health = request(self.url, "GET", "/v1/health", timeout=30)
        assert status == 200 and answer(health).get("status") == "ok", (status, health)
        for secret_place in (str(self.data), str(self.root), "uploads/tmp"):
            assert secret_place.encode() not in body, f"the answer reveals {secret_place}: {body[:500]!r}"
        deadline = time.monotonic() + 5
        while os.listdir(self.data / "uploads") and time.monotonic() < deadline:
            time.sleep(0.05)  # an upload the client abandoned ends when the service notices
        assert os.listdir(self.data / "uploads") == []

    def wait_done(self, job: str, who="a") -> dict:
        deadline = time.monotonic() + 120
        while True:
            status, _, body = request(self.url, "GET", f"/v1/jobs/{job}?wait=20", None, self.auth(who))
            state = answer(body)
            assert status == 200, (status, body)
            if state["state"] not in ("queued", "running"):
                return state
            assert time.monotonic() < deadline, f"job {job} did not end"


def _submit(svc, name: str, who="a") -> str:
    status, _, body = request(svc.url, "POST", "/v1/jobs", svc.bytes(name), svc.auth(who))
    assert status == 202, (status, body)
    return answer(body)["job"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-service")
    s = Svc(root)
    example = os.path.join(EXAMPLES, "cryptonets_mnist")
    art = str(root / "cn.hecc")
    assert hecc.cli.main(["compile", os.path.join(example, "model.onnx"), "--calibration",
                          os.path.join(example, "input.npy"), "--layout", "slots", "-o", art, "-q"]) == 0
    s.art, s.prog = art, hecc.load(art)
    s.x = np.load(os.path.join(example, "input.npy"))[:MAX_INPUTS + 1]
    (name, _), = s.prog.inputs
    for who in ("a", "b"):
        Client(s.prog, root / who).keygen()
    a, b = Client(s.prog, root / "a"), Client(s.prog, root / "b")
    a.encrypt({name: s.x[:1]}, str(root / "xa1.ct"))
    a.encrypt({name: s.x[:4]}, str(root / "xa4.ct"))
    a.encrypt({name: s.x[:MAX_INPUTS + 1]}, str(root / "xa9.ct"))
    b.encrypt({name: s.x[:1]}, str(root / "xb1.ct"))
    # another program: a small model, its keys in two layouts and a ciphertext
    tx = np.random.default_rng(1).uniform(-1, 1, (10, 4)).astype(np.float32)
    np.save(root / "tx.npy", tx)
    tiny = str(root / "tiny.hecc")
    assert hecc.cli.main(["compile", _model(str(root / "tiny.onnx"), 0), "--calibration",
                          str(root / "tx.npy"), "-o", tiny, "-q"]) == 0
    for layout in ("slots", "batch"):
        prog = hecc.load(tiny).with_layout(layout)
        Client(prog, root / f"tiny-{layout}").keygen()
    Client(hecc.load(tiny).with_layout("slots"), root / "tiny-slots").encrypt({"x": tx[:1]}, str(root / "tiny.ct"))

    s.proc = ServiceProcess(art, s.data, "--upload-timeout", UPLOAD_TIMEOUT, "--max-inputs", MAX_INPUTS).start()
    s.url = s.proc.url
    try:
        s.registration = {"a": "a" * 32, "b": "b" * 32}
        s.tokens, s.keysets = {}, {}
        for who in ("a", "b"):
            status, _, body = request(s.url, "POST", "/v1/keysets", s.bytes(f"{who}/eval.keys"),
                                      {"X-Hecc-Registration": s.registration[who]})
            assert status == 201, (status, body)
            s.tokens[who], s.keysets[who] = answer(body)["token"], answer(body)["keyset"]
        s.jobs = {"a": _submit(s, "xa1.ct", "a"), "b": _submit(s, "xb1.ct", "b")}
        for who, job in s.jobs.items():
            assert s.wait_done(job, who)["state"] == "done"
        status, _, body = request(s.url, "GET", f"/v1/jobs/{s.jobs['a']}/result", None, s.auth("a"))
        assert status == 200
        (root / "ya1.ct").write_bytes(body)  # an encrypted result: a file of the wrong kind to upload
        # the CLI's checks, to compare messages with: `hecc eval` with a's evaluation keys
        s.server = Server(s.prog, str(root / "a" / "eval.keys"), workers=1)
        yield s
    finally:
        s.proc.stop()
        if STATUSES:
            print("\nbad-request kinds and their statuses:")
            for kind, status in STATUSES.items():
                print(f"  {status}  {kind}")
        if FUZZ:
            print(f"fuzz: {sum(FUZZ.values())} cases, statuses {dict(sorted(FUZZ.items(), key=str))}")
            for message, n in FUZZ_MESSAGES.most_common():
                print(f"  {n:4}  {message}")


def cli_message(svc, kind: str, path: str) -> str:
    """The CLI's message for the file at ``path`` read as evaluation keys (``hecc eval
    --eval-keys PATH``) or as encrypted inputs (``hecc eval ... PATH --eval-keys a/eval.keys``),
    its path named as the service names an upload."""
    try:
        if kind == "eval":
            Server(svc.prog, path, workers=1)
        else:
            svc.server.evaluate(path, str(svc.root / "never.ct"))
    except UserError as exc:
        return str(exc).replace(path, UPLOAD_NAME[kind])
    raise AssertionError(f"the CLI accepts {path}")


# ------------------------------------------------------------------------------ hostile files

def _zip(data: bytes):
    """(header bytes, members without the header, the zip comment) of a container."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
        comment = zf.comment
    return members.pop("header.json"), members, comment


def _rezip(header: bytes, members, comment: bytes, compressions=None) -> bytes:
    return hostile.write_zip([("header.json", header), *(members.items() if isinstance(members, dict)
                                                         else members)], comment, compressions=compressions)


def zip_bomb(svc, name: str, member: str, size: int = 128 << 20) -> bytes:
    """``name`` with ``member`` replaced by ``size`` zero bytes deflated to a few hundred KB (its
    digest in the header fixed: only the compression gives it away)."""
    header, members, _ = _zip(svc.bytes(name))
    doc = json.loads(header)
    zeros = b"\0" * size
    doc["members"][member] = hostile.sha256(zeros)
    members[member] = zeros
    return hostile.container_bytes(doc, members, fix=False, compressions={member: zipfile.ZIP_DEFLATED})


def tampered(svc, name: str) -> bytes:
    """``name`` with its header edited (another hecc version) but the digest beside it kept."""
    header, members, comment = _zip(svc.bytes(name))
    doc = json.loads(header)
    doc["hecc_version"] = "9.9.9"
    return _rezip(json.dumps(doc, sort_keys=True).encode(), members, comment)


def garbage_header(svc, name: str) -> bytes:
    """``name`` whose header.json is not JSON (its digest matching, so the parse is reached)."""
    header, members, _ = _zip(svc.bytes(name))
    return hostile.container_bytes(header[: len(header) // 2] + b"\xff{]", members, fix=False)


def swapped(svc, name: str, first: str, second: str) -> bytes:
    """``name`` with the contents of two members exchanged (the header as it was)."""
    header, members, comment = _zip(svc.bytes(name))
    members[first], members[second] = members[second], members[first]
    return _rezip(header, members, comment)


def flipped(svc, name: str) -> bytes:
    data = bytearray(svc.bytes(name))
    data[len(data) // 2] ^= 0x10
    return bytes(data)


def schema_broken(svc, name: str) -> bytes:
    """``name`` whose header claims impossible ``sizes``, with every digest recomputed (an edit
    that reaches the schema checks behind the digests)."""
    header, members, _ = _zip(svc.bytes(name))
    doc = json.loads(header)
    doc["sizes"] = [-1] * len(doc["sizes"])
    return hostile.container_bytes(doc, members)


def gzip_bomb() -> bytes:
    return gzip.compress(b"\0" * (64 << 20), compresslevel=1)


# ------------------------------------------------------------------------------ the bad requests

@dataclass
class Bad:
    method: str
    path: str
    body: bytes | None = None
    headers: dict = field(default_factory=dict)
    status: int = 400
    cli: str | None = None  # "eval" or "input": the message is the CLI's for this body
    says: tuple = ()  # phrases the message holds


def _reg() -> dict:
    return {"X-Hecc-Registration": os.urandom(16).hex()}


def _keys(body, **kw) -> Bad:
    return Bad("POST", "/v1/keysets", body, _reg(), cli="eval", **kw)


def _input(svc, body, **kw) -> Bad:
    return Bad("POST", "/v1/jobs", body, svc.auth("a"), cli="input", **kw)


CASES = {
    # files uploaded as evaluation keys
    "truncated eval.keys": lambda s: _keys(s.bytes("a/eval.keys")[:len(s.bytes("a/eval.keys")) // 2],
                                           says=("truncated",)),
    "non-zip bytes as eval.keys": lambda s: _keys(b"this is not a zip file\n" * 100),
    "zip bomb (a compressed member) as eval.keys": lambda s: _keys(zip_bomb(s, "a/eval.keys", "galois"),
                                                                     says=("compressed",)),
    "gzip bomb body with Content-Encoding: gzip": lambda s: Bad(
        "POST", "/v1/keysets", gzip_bomb(), {**_reg(), "Content-Encoding": "gzip"}, cli="eval"),
    "secret key as eval.keys": lambda s: _keys(s.bytes("a/secret.key"),
                                               says=("secret key", "must never receive")),
    "input ciphertexts as eval.keys": lambda s: _keys(s.bytes("xa1.ct"), says=("encrypted-input",)),
    "eval.keys of another program": lambda s: _keys(s.bytes("tiny-slots/eval.keys"),
                                                    says=("another model",)),
    "eval.keys of another layout": lambda s: Bad("POST", "/v1/keysets", s.bytes("tiny-batch/eval.keys"), _reg(),
                                                 says=("batch", "slots", "hecc keygen --layout slots")),
    "garbage header.json in eval.keys": lambda s: _keys(garbage_header(s, "a/eval.keys"),
                                                        says=("not JSON",)),
    "tampered header in eval.keys": lambda s: _keys(tampered(s, "a/eval.keys"),
                                                    says=("does not match the digest",)),
    "members swapped in eval.keys": lambda s: _keys(swapped(s, "a/eval.keys", "public", "relin")),
    "a bit flipped in eval.keys": lambda s: _keys(flipped(s, "a/eval.keys")),
    "eval.keys registered by another client": lambda s: Bad(
        "POST", "/v1/keysets", s.bytes("a/eval.keys"), _reg(), 409, says=("registered already",)),
    "empty body as eval.keys": lambda s: Bad("POST", "/v1/keysets", b"", _reg(), says=("no body",)),
    "missing X-Hecc-Registration": lambda s: Bad("POST", "/v1/keysets", s.bytes("a/eval.keys"), {},
                                                 says=("X-Hecc-Registration",)),
    "invalid X-Hecc-Registration": lambda s: Bad("POST", "/v1/keysets", b"x",
                                                 {"X-Hecc-Registration": "../../" + "a" * 26},
                                                 says=("X-Hecc-Registration",)),
    "Content-Length over the limit (no body sent)": lambda s: Bad(
        "POST", "/v1/keysets", None, {**_reg(), "Content-Length": str(10 ** 12)}, 413, says=("at most",)),
    # files uploaded as encrypted inputs
    "truncated ciphertexts": lambda s: _input(s, s.bytes("xa4.ct")[:len(s.bytes("xa4.ct")) * 2 // 3],
                                              says=("truncated",)),
    "ciphertexts of a foreign key set": lambda s: _input(s, s.bytes("xb1.ct"), says=("key set",)),
    "ciphertexts of another program": lambda s: _input(s, s.bytes("tiny.ct"), says=("another model",)),
    "eval.keys as ciphertexts": lambda s: _input(s, s.bytes("a/eval.keys"), says=("evaluation-key",)),
    "an encrypted result as ciphertexts": lambda s: _input(s, s.bytes("ya1.ct"), says=("encrypted-result",)),
    "zip bomb (a compressed member) as ciphertexts": lambda s: _input(s, zip_bomb(s, "xa1.ct", "b0/i0/0"),
                                                                        says=("compressed",)),
    "tampered header in ciphertexts": lambda s: _input(s, tampered(s, "xa1.ct"),
                                                       says=("does not match the digest",)),
    "invalid sizes in ciphertexts (digests fixed)": lambda s: _input(s, schema_broken(s, "xa4.ct"),
                                                                     says=("sizes",)),
    "members swapped in ciphertexts": lambda s: _input(s, swapped(s, "xa4.ct", "b0/i0/0", "b1/i0/0")),
    "more inputs than --max-inputs": lambda s: Bad("POST", "/v1/jobs", s.bytes("xa9.ct"), s.auth("a"), 413,
                                                   says=(f"at most {MAX_INPUTS}",)),
    "empty body as ciphertexts": lambda s: Bad("POST", "/v1/jobs", b"", s.auth("a"), says=("no body",)),
    "no token": lambda s: Bad("POST", "/v1/jobs", s.bytes("xa1.ct"), {}, 401, says=("Authorization",)),
    "wrong token": lambda s: Bad("POST", "/v1/jobs", s.bytes("xa1.ct"),
                                 {"Authorization": "Bearer " + s.tokens["a"][::-1]}, 401, says=("unknown token",)),
    "a token in another scheme": lambda s: Bad("GET", f"/v1/jobs/{s.jobs['a']}", None,
                                               {"Authorization": "Basic " + s.tokens["a"]}, 401),
    "invalid Idempotency-Key": lambda s: Bad("POST", "/v1/jobs", s.bytes("xa1.ct"),
                                             {**s.auth("a"), "Idempotency-Key": "../" + "k" * 70},
                                             says=("Idempotency-Key",)),
    # jobs
    "unknown job id": lambda s: Bad("GET", f"/v1/jobs/{'0' * 32}", None, s.auth("a"), 404, says=("no job",)),
    "path-traversal job id": lambda s: Bad("GET", "/v1/jobs/..%2F..%2Fsecret", None, s.auth("a"), 404),
    "dot-dot job id": lambda s: Bad("GET", "/v1/jobs/%2e%2e/result", None, s.auth("a"), 404, says=("no job",)),
    "another client's job": lambda s: Bad("GET", f"/v1/jobs/{s.jobs['b']}", None, s.auth("a"), 404),
    "another client's result": lambda s: Bad("GET", f"/v1/jobs/{s.jobs['b']}/result", None, s.auth("a"), 404),
    "deleting another client's job": lambda s: Bad("DELETE", f"/v1/jobs/{s.jobs['b']}", None, s.auth("a"), 404),
    "wait=abc": lambda s: Bad("GET", f"/v1/jobs/{s.jobs['a']}?wait=abc", None, s.auth("a"),
                              says=("not a number",)),
    "wait=-1": lambda s: Bad("GET", f"/v1/jobs/{s.jobs['a']}?wait=-1", None, s.auth("a"), says=("between",)),
    "wait=nan": lambda s: Bad("GET", f"/v1/jobs/{s.jobs['a']}?wait=nan", None, s.auth("a"), says=("between",)),
    "wait=1e999": lambda s: Bad("GET", f"/v1/jobs/{s.jobs['a']}?wait=1e999", None, s.auth("a"),
                                says=("between",)),
    # methods
    "PUT /v1/jobs": lambda s: Bad("PUT", "/v1/jobs", b"x", s.auth("a"), 405),
    "DELETE /v1/keysets": lambda s: Bad("DELETE", "/v1/keysets", None, {}, 405),
    "POST /v1/health": lambda s: Bad("POST", "/v1/health", b"{}", {}, 405),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_a_bad_request_gets_a_4xx_and_changes_nothing(svc, kind):
    bad = CASES[kind](svc)
    before, keysets = svc.snapshot(), svc.metric("hecc_keysets")
    status, headers, body = request(svc.url, bad.method, bad.path, bad.body, bad.headers)
    STATUSES[kind] = status
    assert status == bad.status, f"{kind}: {status} {body[:400]!r}"
    assert headers.get("content-type", "").startswith("application/json")
    message = answer(body).get("error")
    assert isinstance(message, str) and message, body[:400]
    if bad.cli:
        path = str(svc.root / f"bad-{re.sub(r'[^a-z0-9]+', '-', kind.lower())}")
        with open(path, "wb") as f:
            f.write(bad.body)
        assert message == cli_message(svc, bad.cli, path)
    for phrase in bad.says:
        assert phrase in message, f"{kind}: {message!r} does not say {phrase!r}"
    svc.assert_serving(body)
    assert svc.snapshot() == before, "a refused request changed the service's state"
    assert svc.metric("hecc_keysets") == keysets == 2


def test_the_secret_key_is_refused_as_the_cli_refuses_it(svc):
    """The real ``hecc eval`` process gives the message the service gives (with the path)."""
    import subprocess
    from service_util import HECC
    path = str(svc.root / "a" / "secret.key")
    proc = subprocess.run([HECC, "eval", svc.art, str(svc.root / "xa1.ct"), "--eval-keys", path, "-o",
                           str(svc.root / "never.ct")], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    status, _, body = request(svc.url, "POST", "/v1/keysets", svc.bytes("a/secret.key"), _reg())
    assert status == 400
    message = answer(body)["error"]
    assert message.replace(UPLOAD_NAME["eval"], path) in proc.stderr
    assert "secret key" in message
    svc.assert_serving(body)


def test_a_job_of_another_key_set_is_not_told_apart_from_none(svc):
    unknown = "f" * 32
    answers = []
    for job in (svc.jobs["b"], unknown):
        status, _, body = request(svc.url, "GET", f"/v1/jobs/{job}", None, svc.auth("a"))
        answers.append((status, answer(body)["error"].replace(job, "ID")))
    assert answers[0] == answers[1] and answers[0][0] == 404
    # and b's job is still b's
    status, _, body = request(svc.url, "GET", f"/v1/jobs/{svc.jobs['b']}", None, svc.auth("b"))
    assert status == 200 and answer(body)["state"] == "done"


# ------------------------------------------------------------------------------ raw connections

class Raw:
    """One hand-driven HTTP/1.1 connection: bytes are sent as given while a thread reads the
    answer (the service may answer before a body ends)."""

    def __init__(self, url: str, timeout: float = 30.0):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.answer = None
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            response = http.client.HTTPResponse(self.sock)
            response.begin()
            self.answer = (response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        except (OSError, http.client.HTTPException) as exc:
            self.answer = exc
        self.done.set()

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def result(self, timeout: float):
        assert self.done.wait(timeout), f"no answer within {timeout} s"
        assert isinstance(self.answer, tuple), f"no answer: {self.answer!r}"
        return self.answer

    def closed_within(self, seconds: float, trickle: bytes = b"") -> bool:
        """Whether the service closes the connection within ``seconds`` while ``trickle`` is
        sent every half second."""
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                if self.sock.recv(4096) == b"":
                    return True
            except socket.timeout:
                if trickle and not self.send(trickle):
                    return True
            except OSError:
                return True
        return False

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # the reader's file would keep the socket open
        except OSError:
            pass
        self.sock.close()
        self.done.wait(10)


def _head(method: str, path: str, headers: dict) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_an_oversized_chunked_body_is_413_after_the_running_count(svc):
    before = svc.snapshot()
    raw = Raw(svc.url)
    try:
        raw.send(_head("POST", "/v1/jobs", {**svc.auth("a"), "Transfer-Encoding": "chunked"}))
        chunk = b"%x\r\n" % (1 << 20) + b"\xa5" * (1 << 20) + b"\r\n"
        sent = 0
        while not raw.done.is_set() and sent < 200 and raw.send(chunk):
            sent += 1
        status, _, body = raw.result(30)
    finally:
        raw.close()
    STATUSES["oversized chunked body (no Content-Length)"] = status
    assert status == 413, body
    assert "the most an encrypted-input file of this program can be" in answer(body)["error"]
    assert sent < 200
    svc.assert_serving(body)
    assert svc.snapshot() == before


def test_a_stalled_upload_is_dropped_with_408(svc):
    raw = Raw(svc.url)
    try:
        start = time.monotonic()
        raw.send(_head("POST", "/v1/keysets", {**_reg(), "Content-Length": "100000"}) + b"PK\x03\x04")
        status, headers, body = raw.result(UPLOAD_TIMEOUT + 20)
        took = time.monotonic() - start
        STATUSES["stalled upload (Content-Length, then nothing)"] = status
        assert status == 408, body
        assert UPLOAD_TIMEOUT - 0.5 < took < UPLOAD_TIMEOUT + 10
        assert "dropped" in answer(body)["error"]
        # dropped means dropped: a client trickling bytes does not keep the connection
        assert raw.closed_within(UPLOAD_TIMEOUT + 5, trickle=b"x"), "the connection stays open after the 408"
    finally:
        raw.close()
    svc.assert_serving(body)


def test_an_upload_slower_than_the_least_rate_is_dropped_with_408(svc):
    """A byte a second comes within the per-chunk time limit, but the upload as a whole is too
    slow: its deadline (time limit + length at the least rate) drops it."""
    raw = Raw(svc.url)
    try:
        start = time.monotonic()
        raw.send(_head("POST", "/v1/keysets", {**_reg(), "Content-Length": "1000"}))
        while not raw.done.is_set() and time.monotonic() - start < UPLOAD_TIMEOUT + 20:
            raw.send(b"P")
            raw.done.wait(UPLOAD_TIMEOUT / 3)
        status, _, body = raw.result(5)
        STATUSES["trickled upload (a byte per 0.7 s)"] = status
        assert status == 408, body
        assert "took too long" in answer(body)["error"]
        assert time.monotonic() - start < UPLOAD_TIMEOUT + 10
    finally:
        raw.close()
    svc.assert_serving(body)


def test_unfinished_requests_do_not_block_the_service(svc):
    """Connections that send half a request line, or half a body, and wait: the others are
    answered meanwhile."""
    raws = [Raw(svc.url) for _ in range(6)]
    try:
        raws[0].send(b"GET /v1/hea")
        raws[1].send(b"POST /v1/keysets HTTP/1.1\r\nHost: x\r\nX-Hecc-Reg")
        raws[2].send(_head("POST", "/v1/jobs", {**svc.auth("a"), "Content-Length": "50000"}) + b"PK")
        raws[3].send(_head("POST", "/v1/jobs", {**svc.auth("a"), "Transfer-Encoding": "chunked"}) + b"10\r\nPK")
        for _ in range(3):
            svc.assert_serving()
            status, _, body = request(svc.url, "GET", f"/v1/jobs/{svc.jobs['a']}", None, svc.auth("a"))
            assert status == 200, body
    finally:
        for raw in raws:
            raw.close()
    svc.assert_serving()


def test_many_unfinished_request_heads_are_dropped_in_time(svc):
    raws = []
    try:
        for _ in range(260):
            raw = Raw(svc.url)
            raw.send(b"GET /v1/hea")
            raws.append(raw)
        time.sleep(UPLOAD_TIMEOUT + 5)
        status, _, body = request(svc.url, "GET", "/v1/health")
        assert status == 200, (status, body[:200])
    finally:
        for raw in raws:
            raw.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if request(svc.url, "GET", "/v1/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
    svc.assert_serving()


def test_a_result_asked_for_before_the_job_ends_is_409(svc):
    jobs = [_submit(svc, "xa4.ct", "a") for _ in range(3)]  # the last one waits behind the others
    last = jobs[-1]
    status, _, body = request(svc.url, "GET", f"/v1/jobs/{last}/result", None, svc.auth("a"))
    STATUSES["result before the job ended"] = status
    assert status == 409, body
    assert "not there yet" in answer(body)["error"]
    status, _, body = request(svc.url, "DELETE", f"/v1/jobs/{last}", None, svc.auth("a"))
    STATUSES["delete before the job ended"] = status
    assert status == 409, body
    for job in jobs:
        assert svc.wait_done(job)["state"] == "done"
        assert request(svc.url, "DELETE", f"/v1/jobs/{job}", None, svc.auth("a"))[0] == 200
        status, _, body = request(svc.url, "DELETE", f"/v1/jobs/{job}", None, svc.auth("a"))
        assert status == 404, body
    svc.assert_serving()


def test_retries_of_a_submission_at_once_are_one_job(svc):
    """The same Idempotency-Key sent several times at once (a client retrying over a slow link):
    one job is accepted (202), the others are told it is the same job (200)."""
    submitted = svc.metric("hecc_jobs_submitted_total")
    results = []

    def submit():
        results.append(request(svc.url, "POST", "/v1/jobs", svc.bytes("xa4.ct"),
                               {**svc.auth("a"), "Idempotency-Key": "retried-at-once"}))
    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(status for status, _, _ in results)
    STATUSES["the same submission 4 times at once"] = statuses
    jobs = {answer(body)["job"] for _, _, body in results}
    assert len(jobs) == 1
    assert statuses == [200, 200, 200, 202], [b for _, _, b in results]
    assert svc.metric("hecc_jobs_submitted_total") == submitted + 1
    job, = jobs
    assert svc.wait_done(job)["state"] == "done"
    assert request(svc.url, "DELETE", f"/v1/jobs/{job}", None, svc.auth("a"))[0] == 200
    svc.assert_serving()


def test_a_result_deleted_while_it_is_downloaded_is_200_or_404(svc):
    """The client downloads its result and deletes the job at once (two of its processes, or a
    retry): each request is answered whole or with 404, never with a 5xx or a cut answer."""
    answers = Counter()
    for _ in range(12):
        job = _submit(svc, "xa1.ct", "a")
        assert svc.wait_done(job)["state"] == "done"
        got = {}

        def ask(method, path):
            try:
                got[method] = request(svc.url, method, path, None, svc.auth("a"))
            except (OSError, http.client.HTTPException) as exc:
                got[method] = (repr(exc), {}, b"")
        threads = [threading.Thread(target=ask, args=("GET", f"/v1/jobs/{job}/result")),
                   threading.Thread(target=ask, args=("DELETE", f"/v1/jobs/{job}"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        answers[(got["GET"][0], got["DELETE"][0])] += 1
        status, headers, body = got["GET"]
        assert status in (200, 404), (status, body[:300])
        if status == 200:
            assert len(body) == int(headers["content-length"]) and body.startswith(b"PK")
        assert got["DELETE"][0] in (200, 404)
    STATUSES["result downloaded while the job is deleted (GET, DELETE)"] = dict(answers)
    svc.assert_serving()


def test_a_job_deleted_as_its_worker_ends_it_does_not_stop_the_worker(tmp_path):
    """The client sees "done" as soon as the result is in place and may delete the job before
    the worker has dropped its marker: the worker's finishing steps find nothing to drop."""
    from hecc.service.store import Store
    (tmp_path / "program.hecc").write_bytes(b"an artifact")
    store = Store.create_or_open(str(tmp_path / "data"), {"slots": "f" * 64}, str(tmp_path / "program.hecc"))
    upload = store.path("uploads", "body")
    with open(upload, "wb") as f:
        f.write(b"ciphertexts")
    job = "1" * 32
    store.submit(job, "2" * 32, "slots", upload, 1)
    marker, claimed = store.claim("w0")
    assert claimed == job
    store.write_progress(job, 1, 1, "input(s)")
    with open(store.result_path(job), "wb") as f:
        f.write(b"result")
    assert store.state(job)["state"] == "done"
    store.delete(job)  # the client: GET result, DELETE
    store.finish(marker, job)  # the worker, a moment later
    assert store.job(job) is None and store.pending() == 0


def test_ciphertexts_that_are_not_seal_objects_fail_the_job_not_the_service(svc):
    """Members that pass the file checks (digests right) but are no SEAL ciphertexts: the job
    fails with the CLI's message (422 for its result), the worker lives."""
    header, members, _ = _zip(svc.bytes("xa1.ct"))
    doc = json.loads(header)
    junk = {name: hostile.seal_object(os.urandom(4096)) if i % 2 else os.urandom(100)
            for i, name in enumerate(members)}
    body = hostile.container_bytes(doc, junk)
    status, _, answer_body = request(svc.url, "POST", "/v1/jobs", body, svc.auth("a"))
    assert status == 202, answer_body
    job = answer(answer_body)["job"]
    state = svc.wait_done(job)
    assert state["state"] == "failed"
    assert "not a ciphertext of this program" in state["error"]
    status, _, result_body = request(svc.url, "GET", f"/v1/jobs/{job}/result", None, svc.auth("a"))
    STATUSES["result of a job whose ciphertexts are not SEAL objects"] = status
    assert status == 422, result_body
    assert svc.metric("hecc_worker_restarts_total") == 0
    assert request(svc.url, "DELETE", f"/v1/jobs/{job}", None, svc.auth("a"))[0] == 200
    svc.assert_serving(result_body)


# ------------------------------------------------------------------------------ the fuzz

PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                    max_size=40)
HEX32 = st.text("0123456789abcdef", min_size=32, max_size=32)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=12),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=8)
FIELDS = ["format", "format_version", "kind", "program", "program_layout", "keyset", "members", "layout",
          "sizes", "hecc_version"]
KEY_SEEDS = ["a/eval.keys", "b/eval.keys", "a/secret.key", "tiny-slots/eval.keys", "tiny-batch/eval.keys"]
CT_SEEDS = ["xa1.ct", "xb1.ct", "ya1.ct", "tiny.ct"]


class Body(bytes):
    """A fuzzed body, shown short (a mutated eval.keys is ~20 MB)."""

    def __repr__(self):
        return f"<{len(self)} bytes {bytes(self[:48])!r}...>"

    def _repr_pretty_(self, printer, cycle):
        printer.text(repr(self))


@dataclass(repr=False)
class Fuzzed:
    method: str
    path: str
    headers: list
    body: bytes | None
    length: str  # exact, none, smaller, larger, chunked, garbage

    def __repr__(self):
        body = None if self.body is None else Body(self.body)
        return f"Fuzzed({self.method!r}, {self.path!r}, {self.headers!r}, {body!r}, {self.length!r})"


def _mutate(data: bytes, mutation) -> bytes:
    """``data`` (a valid container) with one hostile edit."""
    how, *args = mutation
    if how == "identity":
        return data
    if how == "truncate":
        return data[: int(args[0] * len(data))]
    if how == "flip":
        out = bytearray(data)
        for where, bit in args[0]:
            out[int(where * len(out))] ^= 1 << bit
        return bytes(out)
    header, members, comment = _zip(data)
    items = list(members.items())
    if how == "swap" and len(items) > 1:
        i, j = args[0] % len(items), args[1] % len(items)
        names = [n for n, _ in items]
        names[i], names[j] = names[j], names[i]
        return _rezip(header, [(n, v) for n, (_, v) in zip(names, items)], comment)
    if how == "drop" and items:
        del items[args[0] % len(items)]
        return _rezip(header, items, comment)
    if how == "dup" and items:
        return _rezip(header, items + [items[args[0] % len(items)]], comment)
    if how == "compress" and items:
        return _rezip(header, items, comment, {items[args[0] % len(items)][0]: zipfile.ZIP_DEFLATED})
    if how == "header":
        return hostile.container_bytes(hostile.json_text(args[0]), members, fix=False)
    if how == "field":
        doc = json.loads(header)
        doc[args[0]] = args[1]
        return hostile.container_bytes(doc, members)
    return data


MUTATIONS = st.one_of(
    st.just(("identity",)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
                                        min_size=1, max_size=6)),
    st.tuples(st.just("swap"), st.integers(0, 99), st.integers(0, 99)),
    st.tuples(st.just("drop"), st.integers(0, 99)),
    st.tuples(st.just("dup"), st.integers(0, 99)),
    st.tuples(st.just("compress"), st.integers(0, 99)),
    st.tuples(st.just("header"), JSON),
    st.tuples(st.just("field"), st.sampled_from(FIELDS), JSON | st.sampled_from(
        ["secret", "eval", "input", "output", "batch", "packed", [[1]], [[4]], [1], [2], [0], "a" * 64])),
)


def _strategies(svc) -> dict:
    """Fuzzed requests by group: registrations (a well-formed X-Hecc-Registration, a hostile
    body), submissions (a valid token, a hostile body), job requests (any id, token, query) and
    anything (any method, path, header and body)."""
    def body_of(seeds):
        mutated = st.tuples(st.sampled_from(seeds), MUTATIONS).map(lambda t: Body(_mutate(svc.bytes(t[0]), t[1])))
        return st.one_of(
            mutated, mutated, mutated, mutated,  # mostly: deep into the file checks
            st.binary(max_size=2048),
            st.binary(max_size=64).map(lambda b: b"PK\x03\x04" + b),
            st.just(b""))

    ids = st.one_of(st.sampled_from([svc.jobs["a"], svc.jobs["b"], "0" * 32, "..", "%2e%2e", "..%2F..%2Fsecret",
                                     "%00", "a" * 300, "%ff%fe", "*"]),
                    HEX32, st.text("0123456789abcdefABCDEF./%", max_size=40),
                    st.text(max_size=20).map(lambda t: quote(t, safe="")))
    query = st.one_of(st.just(""), st.sampled_from(["?wait=0", "?wait=0.3", "?wait=abc", "?wait=-1", "?wait=nan",
                                                    "?wait=1e999", "?wait=61", "?wait=", "?wait=0&wait=x",
                                                    "?wait=%ff", "?wait=" + "9" * 400]),
                      st.text(max_size=20).map(lambda t: "?" + quote(t, safe="=&")))
    paths = st.tuples(st.one_of(
        st.sampled_from(["/v1/health", "/v1/program", "/v1/keysets", "/v1/jobs", "/metrics", "/", "/v1",
                         "/v1/jobs/", "/v1/keysets/" + "a" * 32, "/metrics/", "//v1/health", "/v1/health/"]),
        ids.map(lambda j: f"/v1/jobs/{j}"), ids.map(lambda j: f"/v1/jobs/{j}/result"),
        st.text(max_size=30).map(lambda t: "/" + quote(t, safe="/"))), query).map("".join)
    methods = st.one_of(st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]),
                        st.text(string.ascii_uppercase, min_size=1, max_size=8))
    valid_token = st.sampled_from([f"Bearer {svc.tokens['a']}", f"Bearer {svc.tokens['b']}",
                                   f"bearer   {svc.tokens['a']}  "])
    tokens = st.one_of(valid_token, st.sampled_from([
        f"Basic {svc.tokens['a']}", "Bearer", "Bearer ", f"Bearer {svc.tokens['a'][:-1]}",
        f"Bearer {svc.keysets['a']}", f"Bearer {svc.tokens['a']},{svc.tokens['b']}"]),
        PRINTABLE.map(lambda v: "Bearer " + v), PRINTABLE)
    registrations = st.one_of(st.sampled_from(list(svc.registration.values())), HEX32)
    idempotency = st.one_of(st.sampled_from(["k1", "k2", "-", "_" * 64, "k" * 65, ""]), PRINTABLE)
    extras = st.lists(st.one_of(
        st.sampled_from([("Expect", "100-continue"), ("Content-Type", "multipart/form-data; boundary=x"),
                         ("Content-Encoding", "gzip"), ("Connection", "close"), ("Connection", "keep-alive"),
                         ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Range", "bytes=0-10"),
                         ("Range", "bytes=-1,5-3"), ("If-Range", "garbage"), ("Accept", "*/*"), ("Cookie", "a=b")]),
        st.tuples(st.text(string.ascii_letters + "-", min_size=1, max_size=20), PRINTABLE)), max_size=3)

    def headers(auth, reg, key, extra):
        out = [("Authorization", auth)] if auth is not None else []
        out += [("X-Hecc-Registration", reg)] if reg is not None else []
        out += [("Idempotency-Key", key)] if key is not None else []
        return out + extra

    lengths = st.sampled_from(["exact"] * 6 + ["none", "smaller", "larger", "chunked", "garbage"])
    return {
        "registrations": st.builds(
            Fuzzed, st.just("POST"), st.just("/v1/keysets"),
            st.builds(headers, st.none(), registrations, st.none(), extras),
            body_of(KEY_SEEDS + ["xa1.ct"]), lengths),
        "submissions": st.builds(
            Fuzzed, st.just("POST"), st.just("/v1/jobs"),
            st.builds(headers, valid_token, st.none(), st.none() | idempotency, extras),
            body_of(CT_SEEDS + ["a/eval.keys"]), lengths),
        "job requests": st.builds(
            Fuzzed, st.sampled_from(["GET", "DELETE", "GET", "HEAD"]),
            st.tuples(ids, st.sampled_from(["", "/result"]), query).map(lambda t: f"/v1/jobs/{t[0]}{t[1]}{t[2]}"),
            st.builds(headers, tokens | st.none(), st.none(), st.none(), extras), st.none() | st.binary(max_size=64),
            lengths),
        "anything": st.builds(
            Fuzzed, methods, paths,
            st.builds(headers, tokens | st.none(), st.one_of(registrations, PRINTABLE, st.none()),
                      idempotency | st.none(), extras),
            st.none() | body_of(KEY_SEEDS + CT_SEEDS), lengths),
    }


def send_fuzzed(url: str, req: Fuzzed, lie: int):
    """One fuzzed request on its own connection: (status, body), or None when the service
    closed the connection without an answer (a request whose body never ended)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=90)
    body = req.body or b""
    try:
        conn.putrequest(req.method, req.path, skip_accept_encoding=True)
        for name, value in req.headers:
            conn.putheader(name, value)
        if req.length == "exact" and (body or req.method in ("POST", "PUT", "PATCH")):
            conn.putheader("Content-Length", str(len(body)))
        elif req.length == "smaller" and body:
            conn.putheader("Content-Length", str(lie % len(body)))
            body = body[: lie % len(body) + 64]  # the rest would be read as another request
        elif req.length == "larger":
            conn.putheader("Content-Length", str(len(body) + 1 + lie))
        elif req.length == "chunked":
            conn.putheader("Transfer-Encoding", "chunked")
            step = max(1 + lie % (1 << 20), len(body) // 64)
            body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                            for i in range(0, len(body), step)) + b"0\r\n\r\n"
        elif req.length == "garbage":
            conn.putheader("Content-Length", ["abc", "-1", "1,2", " ", "0x10", "\xb2\xb3"][lie % 6])
        elif req.length == "none":
            body = b""
        conn.endheaders()
        try:
            if body:
                conn.send(body)
            if req.length == "larger":
                conn.sock.shutdown(socket.SHUT_WR)  # the body ends short of its length
        except OSError:
            pass  # the service answered before the body ended and closed the connection
        try:
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            return None  # closed with no answer (one lost in a reset is still counted in /metrics)
    finally:
        conn.close()


FUZZ_CASES = {"registrations": 150, "submissions": 150, "job requests": 100, "anything": 150}


@pytest.mark.parametrize("group", list(FUZZ_CASES))
def test_fuzzing_the_endpoints_finds_no_5xx(svc, group):
    start = time.monotonic()
    keysets = svc.snapshot()[0]
    cases = Counter()

    @settings(max_examples=FUZZ_CASES[group], deadline=None, suppress_health_check=list(HealthCheck))
    @given(_strategies(svc)[group], st.one_of(st.integers(0, 64), st.integers(0, 1 << 40)))
    def fuzz(req, lie):
        got = send_fuzzed(svc.url, req, lie)
        cases[got[0] if got else "closed"] += 1
        if got is not None:
            status, body = got
            message = answer(body).get("error")
            if isinstance(message, str):
                FUZZ_MESSAGES[f"{status} " + re.sub(r"[0-9a-f]{32,}", "ID", message)[:70]] += 1
            assert status < 500, f"{status} for {req!r}: {body[:500]!r}"
            assert str(svc.data).encode() not in body, body[:500]
        assert svc.proc.running(), svc.proc.stderr()[-3000:]
        status, _, _ = request(svc.url, "GET", "/v1/health", timeout=30)
        assert status == 200
    fuzz()
    took = time.monotonic() - start
    FUZZ.update(cases)
    print(f"\nfuzz {group}: {sum(cases.values())} cases in {took:.1f} s: {dict(sorted(cases.items(), key=str))}")
    assert sum(cases.values()) >= FUZZ_CASES[group]
    svc.assert_no_server_error()  # an answer lost in a reset is still counted
    assert svc.snapshot()[0] == keysets, "the fuzz registered a key set"


# ------------------------------------------------------------------------------ and still serving

def test_a_valid_client_still_gets_the_right_classes(svc):
    x = svc.x[:4]
    client = hecc.Client(hecc.load(svc.art), str(svc.root / "final-keys"))
    outputs = client.infer(x, server=svc.url, deadline=300)
    expected = svc.prog.run(x, backend="reference")
    for name, want in expected.items():
        assert (np.asarray(outputs[name]).argmax(-1) == np.asarray(want).argmax(-1)).all()
    assert svc.metric("hecc_keysets") == 3  # a's, b's and this client's: no refused one
    assert len(os.listdir(svc.data / "keysets")) == 3
    svc.assert_no_server_error()
