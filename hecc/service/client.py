"""The client of a ``hecc serve`` service: ``hecc infer`` and ``Client.infer``.

One inference is: make a key set if the keys folder has none, register its evaluation keys with
the service (once; the token is kept in ``KEYS/service.json``, mode 0600), encrypt the inputs,
submit them as a job, wait for it (a progress bar from the job's counted progress), download the
encrypted result, decrypt it here and forget the job on the server. The secret key never leaves
this process; what crosses the network is the evaluation keys, the input ciphertexts and the
result ciphertexts.

Every step is safe to retry, so a service that restarts (or a lost answer) costs time, not a
wrong or lost answer: a registration carries a registration id chosen here and saved before it is
sent (registering again gives the same token), a job carries an idempotency key (submitting
again gives the same job), and a connection refused or reset, a 503 or a 408 is retried with
backoff (503 after its Retry-After) until ``deadline`` seconds have passed; a job that has not
ended ``deadline`` seconds after it was submitted is given up too. Other 4xx answers are
the service's message as a ``ServiceError``. Only the standard library's ``http.client`` is used,
so the client needs no extra.
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import tempfile
import time
import urllib.parse

from ..errors import UserError
from ..outputs import write_bytes
from ..progress import count_progress

STATE_FILE = "service.json"
RETRIED = (408, 502, 503, 504)
WAIT_SECONDS = 20
MAX_ANSWER_BYTES = 1 << 20  # a JSON answer; results stream to a file


class ServiceError(UserError):
    """The service refused a request (its message), or could not be reached in time."""


class Unauthorized(ServiceError):
    """The service does not know the token (it lost its state, or it is another service)."""


class Connection:
    """Requests to one service at ``url`` (http://host:port), retried while it restarts."""

    def __init__(self, url: str, deadline: float = 600.0, timeout: float = 120.0, notice=None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname or parsed.path not in ("", "/") or parsed.query:
            raise UserError(f"--server {url!r}: give the service's address as http://HOST:PORT")
        try:
            self.port = parsed.port or 80
        except ValueError:
            raise UserError(f"--server {url!r}: the port is not a number from 1 to 65535") from None
        self.url, self.host = url.rstrip("/"), parsed.hostname
        self.deadline, self.timeout, self.notice = deadline, timeout, notice

    def request(self, method: str, path: str, body: str | bytes | None = None, headers: dict | None = None,
                save_to: str | None = None) -> tuple[int, dict]:
        """(status, JSON answer) of a request, retried on a refused or broken connection, 408,
        502-504; ``body`` is bytes or a file path (sent as a stream); ``save_to`` receives a
        200's body. A 4xx other than 408 raises ``ServiceError`` with the service's message."""
        start, wait, said = time.monotonic(), 0.5, False
        while True:
            try:
                status, answer, retry_after = self._once(method, path, body, headers or {}, save_to)
            except (ConnectionError, socket.timeout, http.client.HTTPException, OSError) as exc:
                status, answer, retry_after = None, {"error": f"{type(exc).__name__}: {exc}"}, None
            if status is not None and status not in RETRIED:
                if status == 401:
                    raise Unauthorized(f"{self.url}: {answer.get('error', 'unauthorized')}")
                if 400 <= status < 500:
                    raise ServiceError(f"{self.url} refused {method} {path.split('?')[0]} ({status}): "
                                       f"{answer.get('error', 'no reason given')}")
                if status >= 500:
                    raise ServiceError(f"{self.url} failed on {method} {path.split('?')[0]} ({status}): "
                                       f"{answer.get('error', 'an internal error')}")
                return status, answer
            left = self.deadline - (time.monotonic() - start)
            why = (f"answered {status} ({answer.get('error', 'no reason given')})" if status
                   else f"cannot be reached ({answer['error']})")
            if left <= 0:
                raise ServiceError(f"the service at {self.url} {why}; gave up after {self.deadline:g} s")
            if self.notice and not said:
                self.notice(f"the service at {self.url} {why}; retrying for up to {left:.0f} s")
                said = True
            pause = min(max(wait, retry_after or 0), left, 30.0)
            time.sleep(pause)
            wait = min(wait * 2, 8.0)

    def _once(self, method, path, body, headers, save_to):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            headers = dict(headers)
            if isinstance(body, str):
                headers["Content-Length"] = str(os.path.getsize(body))
                with open(body, "rb") as f:
                    conn.request(method, path, body=f, headers=headers)
            else:
                conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            retry = response.getheader("Retry-After")
            retry_after = float(retry) if retry and retry.isdigit() else None
            if response.status == 200 and save_to is not None:
                with open(save_to, "wb") as f:
                    shutil.copyfileobj(response, f, 1 << 20)
                return 200, {}, None
            raw = response.read(MAX_ANSWER_BYTES)
            try:
                answer = json.loads(raw) if raw else {}
            except ValueError:
                answer = {"error": raw[:200].decode("utf-8", "replace")}
            return response.status, answer if isinstance(answer, dict) else {}, retry_after
        finally:
            conn.close()


def _state_path(keys_dir: str) -> str:
    return os.path.join(keys_dir, STATE_FILE)


def _load_state(keys_dir: str) -> dict:
    try:
        with open(_state_path(keys_dir), "rb") as f:
            state = json.loads(f.read(MAX_ANSWER_BYTES))
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_state(keys_dir: str, state: dict) -> None:
    write_bytes(_state_path(keys_dir), json.dumps(state, indent=1, sort_keys=True).encode(), 0o600)


def token(client, conn: Connection, refresh: bool = False) -> str:
    """The token of the client's key set at this service: the saved one, or a registration of
    ``eval.keys`` (its registration id saved first, so a retry registers the same way)."""
    from ..clientserver import EVAL
    keyset = client.keyset()
    state = _load_state(client.keys_dir)
    entry = state.get(conn.url) if isinstance(state.get(conn.url), dict) else {}
    if entry.get("keyset") != keyset:
        entry = {"keyset": keyset, "registration": secrets.token_hex(16)}
    if entry.get("token") and not refresh:
        return entry["token"]
    entry.pop("token", None)
    state[conn.url] = entry
    _save_state(client.keys_dir, state)
    if client.progress:
        client.progress(f"registering the evaluation keys with {conn.url}")
    _, answer = conn.request("POST", "/v1/keysets", os.path.join(client.keys_dir, EVAL),
                             {"X-Hecc-Registration": entry["registration"],
                              "Content-Type": "application/octet-stream"})
    if answer.get("keyset") != keyset or not isinstance(answer.get("token"), str):
        raise ServiceError(f"{conn.url} answered the registration of key set {keyset} with "
                           f"{str(answer)[:200]}; it is not a hecc service")
    entry["token"] = answer["token"]
    _save_state(client.keys_dir, state)
    return entry["token"]


def check_program(client, conn: Connection) -> None:
    """The service must run the client's program in its layout."""
    _, health = conn.request("GET", "/v1/health")
    programs = health.get("programs")
    if not isinstance(programs, dict):
        raise ServiceError(f"{conn.url} is not a hecc service (GET /v1/health answered {str(health)[:200]})")
    if programs.get(client.program.layout) != client.fingerprint:
        offered = ", ".join(programs) or "nothing"
        raise ServiceError(f"the service at {conn.url} runs another program than this artifact's "
                           f"{client.program.layout} program (it offers {offered}); use the artifact it "
                           f"serves (GET {conn.url}/v1/program) or another service")


def infer(client, inputs: dict, server: str, output_mode: str = "logits",
          round_digits: int | None = None, deadline: float = 600.0, allow_out_of_range: bool = False) -> dict:
    """``Client.infer``: the decrypted outputs of ``inputs`` evaluated by the service at ``server``."""
    from ..clientserver import SECRET
    conn = Connection(server, deadline, notice=client.progress)
    check_program(client, conn)
    if not os.path.exists(os.path.join(client.keys_dir, SECRET)):
        client.keygen()
    auth = {"Authorization": f"Bearer {token(client, conn)}"}
    with tempfile.TemporaryDirectory(prefix="hecc-infer-") as tmp:
        sent, got = os.path.join(tmp, "input.ct"), os.path.join(tmp, "result.ct")
        client.encrypt(inputs, sent, allow_out_of_range)
        headers = {"Idempotency-Key": secrets.token_hex(16), "Content-Type": "application/octet-stream"}
        try:
            _, answer = conn.request("POST", "/v1/jobs", sent, {**headers, **auth})
        except Unauthorized:  # the service lost its state (or was replaced): register again
            auth = {"Authorization": f"Bearer {token(client, conn, refresh=True)}"}
            _, answer = conn.request("POST", "/v1/jobs", sent, {**headers, **auth})
        job = answer.get("job")
        if not isinstance(job, str) or not job.isalnum():
            raise ServiceError(f"{conn.url} answered a job submission with {str(answer)[:200]}")
        if client.progress:
            client.progress(f"job {job} submitted; waiting for the service")
        state, since = answer, time.monotonic()
        while state.get("state") not in ("done", "failed"):
            if time.monotonic() - since > deadline:
                raise ServiceError(f"job {job} is still {state.get('state')} on {conn.url} after {deadline:g} s; "
                                   "it stays there (wait longer with --timeout, or try again later)")
            _, state = conn.request("GET", f"/v1/jobs/{job}?wait={WAIT_SECONDS}", headers=auth)
            if state.get("state") == "running" and state.get("total"):
                count_progress(client.progress, int(state.get("done", 0)), int(state["total"]),
                               str(state.get("unit", "part(s)")))
        if state["state"] == "failed":
            raise ServiceError(f"the service could not evaluate job {job}: {state.get('error')}")
        conn.request("GET", f"/v1/jobs/{job}/result", headers=auth, save_to=got)
        outputs = client.decrypt(got, output_mode, round_digits)
        try:
            conn.request("DELETE", f"/v1/jobs/{job}", headers=auth)
        except ServiceError:
            pass  # the result is ours already; the service keeps the job until someone deletes it
    return outputs
