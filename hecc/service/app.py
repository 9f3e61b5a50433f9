"""The service's HTTP interface (Starlette): every request is checked before it changes anything.

    GET    /v1/health            {"status": "ok", "programs": {layout: fingerprint}, ...}
    GET    /v1/program           the artifact (clients need it to encrypt and decrypt)
    POST   /v1/keysets           body: eval.keys; X-Hecc-Registration: 32 hex digits the client
                                 chose -> {"keyset", "token"} (201; the same client again: 200)
    POST   /v1/jobs              body: encrypted inputs; Authorization: Bearer TOKEN;
                                 Idempotency-Key: K (a retry with the same K is the same job)
                                 -> {"job", "state"} (202)
    GET    /v1/jobs/ID?wait=S    the job's state, waiting up to S seconds for it to end
    GET    /v1/jobs/ID/result    the encrypted result (409 while it runs)
    DELETE /v1/jobs/ID           forget an ended job
    GET    /metrics              Prometheus text: jobs, queue, evaluation seconds, requests

A body streams to a file under DATA/uploads with a size limit derived from the program (the
evaluation keys' members, or ``max_inputs`` inputs' ciphertexts) and a time limit per chunk;
it is then read with ``containers.read_container``, the checks of the CLI, and its message is
the CLI's. Errors are JSON ``{"error": message}`` with a 4xx status: 400 a malformed or foreign
file, 401 a missing or unknown token, 404 no such job (for this key set: another key set's job is
not told apart from none), 408 an upload that stalls or goes too slowly (and the connection is
closed: its rest is not waited for), 409 a conflict, 413 too large, 503 a full queue or too many
uploads at once (with Retry-After). A 5xx is a bug in hecc. Retries of a submission (one
Idempotency-Key) are one job, even when they arrive at once; a result is sent whole (or 404)
even when its job is deleted while it is asked for.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import tempfile
import time
from collections import Counter

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from ..backends.common import inputs_per_batch
from ..clientserver import file_layout, fingerprint, member_limits
from ..containers import HEADER_BYTES_BASE, HEADER_BYTES_PER_MEMBER, KEY_MEMBERS, ciphertext_groups, read_container
from ..errors import UserError
from .store import IDEMPOTENCY_KEY, JOB_ID, REGISTRATION_ID, Conflict

ZIP_BYTES_PER_MEMBER = 256  # local header, central directory entry, a name
MAX_WAIT_SECONDS = 60.0


class HTTPError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class Limits:
    """What the service accepts (from ``hecc serve``'s options)."""

    def __init__(self, max_queue: int = 64, max_inputs: int = 64, max_uploads: int = 16,
                 upload_timeout: float = 30.0, max_keysets: int = 1000, min_upload_rate: int = 256 << 10):
        self.max_queue, self.max_inputs, self.max_uploads = max_queue, max_inputs, max_uploads
        self.upload_timeout, self.max_keysets, self.min_upload_rate = upload_timeout, max_keysets, min_upload_rate


class _Program:
    """One layout's program as the service checks files against it."""

    def __init__(self, program, max_inputs: int):
        from ..backends.tenseal import input_groups
        self.program, self.layout = program, program.layout
        self.fingerprint, self.limits = fingerprint(program), member_limits(program)
        self.groups, self.per_batch = input_groups(program.graph), inputs_per_batch(program.graph)
        members = sum(self.groups) * -(-max_inputs // self.per_batch)
        self.input_bytes = (HEADER_BYTES_BASE + members * (HEADER_BYTES_PER_MEMBER + ZIP_BYTES_PER_MEMBER
                                                         + self.limits("input", "b0/i0/0")))
        self.key_bytes = HEADER_BYTES_BASE + sum(self.limits("eval", name) + ZIP_BYTES_PER_MEMBER
                                                 for name in KEY_MEMBERS["eval"])


def _message(exc: Exception, path: str, name: str) -> str:
    return str(exc).replace(path, name)


class Service:
    """The state the handlers share: the store, the programs, the limits, the counters."""

    def __init__(self, store, programs: dict, limits: Limits, workers=None):
        self.store, self.limits, self.workers = store, limits, workers
        self.programs = {layout: _Program(p, limits.max_inputs) for layout, p in programs.items()}
        self.tokens = {rec["token_sha256"]: (keyset, rec["layout"]) for keyset, rec in store.keysets().items()}
        self.uploads = 0
        self.requests: Counter = Counter()
        self.counts: Counter = Counter()
        self.started = time.time()

    # ------------------------------------------------------------ requests

    def keyset_of(self, request: Request) -> tuple[str, str]:
        auth = request.headers.get("authorization")
        if auth is None:
            raise HTTPError(401, "this request needs the key set's token (header Authorization: Bearer "
                                 "TOKEN), which registering the key set gave")
        scheme, _, token = auth.partition(" ")
        found = self.tokens.get(hashlib.sha256(token.strip().encode()).hexdigest()) if scheme.lower() == "bearer" else None
        if found is None:
            raise HTTPError(401, "unknown token: no key set registered here has it (register the key set "
                                 "with POST /v1/keysets)")
        return found

    async def receive(self, request: Request, limit: int, what: str) -> str:
        """The body into a file under uploads (its path), within ``limit`` bytes and the time limits."""
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HTTPError(400, f"Content-Length {length[:40]!r} is not a number of bytes")
            if int(length) > limit:
                raise HTTPError(413, f"the body is {int(length)} bytes; {what} of this program is at most {limit} bytes")
        if self.uploads >= self.limits.max_uploads:
            raise HTTPError(503, f"{self.uploads} uploads are in progress, the most this service takes at "
                                 "once; retry shortly", retry_after=2)
        if shutil.disk_usage(self.store.root).free < 2 * limit + (256 << 20):
            raise HTTPError(503, "the service's disk is nearly full; retry later", retry_after=30)
        self.uploads += 1
        fd, path = tempfile.mkstemp(dir=self.store.path("uploads"))
        timeout = self.limits.upload_timeout
        deadline = time.monotonic() + timeout + (int(length) if length else limit) / self.limits.min_upload_rate
        try:
            size, chunks = 0, request.stream().__aiter__()
            too_slow = (f"the upload of {what} took too long (slower than "
                        f"{self.limits.min_upload_rate >> 10} KiB/s); it was dropped")
            with os.fdopen(fd, "wb") as f:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise HTTPError(408, too_slow)
                    try:
                        chunk = await asyncio.wait_for(chunks.__anext__(), min(timeout, left))
                    except StopAsyncIteration:
                        break
                    except asyncio.TimeoutError:
                        if left < timeout:  # the upload's deadline passed, not a pause of ``timeout``
                            raise HTTPError(408, too_slow) from None
                        raise HTTPError(408, f"no byte of the body came for {timeout:g} s; the upload was "
                                             "dropped") from None
                    size += len(chunk)
                    if size > limit:
                        raise HTTPError(413, f"the body is over {limit} bytes, the most {what} of this "
                                             "program can be")
                    f.write(chunk)
            if size == 0:
                raise HTTPError(400, f"the request has no body; send {what} as the body")
            return path
        except ClientDisconnect:
            os.unlink(path)
            raise HTTPError(400, "the client closed the connection before the body was complete") from None
        except BaseException:
            os.unlink(path)
            raise
        finally:
            self.uploads -= 1

    def check_keys(self, path: str) -> tuple[str, str]:
        """(keyset, layout) of an uploaded evaluation-key file, checked like ``hecc eval`` checks."""
        name = "the uploaded eval.keys"
        layout = file_layout(path)
        if layout is not None and layout not in self.programs:
            raise UserError(f"{name} is for the {layout} program of the artifact; this service runs "
                            f"{', '.join(self.programs)} (make keys with `hecc keygen --layout "
                            f"{next(iter(self.programs))}`)")
        prog = self.programs[layout or next(iter(self.programs))]
        try:
            header, _ = read_container(path, ("eval",), prog.fingerprint, prog.limits, layout=prog.layout)
        except UserError as exc:
            raise UserError(_message(exc, path, name)) from None
        return header["keyset"], prog.layout

    def check_input(self, path: str, keyset: str, layout: str) -> int:
        """The number of inputs in an uploaded ciphertext file of ``keyset``, checked like
        ``hecc eval`` checks."""
        name, prog = "the uploaded ciphertexts", self.programs[layout]
        try:
            header, files = read_container(path, ("input",), prog.fingerprint, prog.limits, keyset, layout)
            ciphertext_groups(header, files, prog.groups, prog.per_batch, name)
        except UserError as exc:
            raise UserError(_message(exc, path, name)) from None
        inputs = sum(header["sizes"])
        if inputs > self.limits.max_inputs:
            raise HTTPError(413, f"{name} hold {inputs} inputs; this service takes at most "
                                 f"{self.limits.max_inputs} per job (submit them as several jobs)")
        return inputs

    def job_of(self, request: Request) -> tuple[str, dict]:
        keyset, _ = self.keyset_of(request)
        job = request.path_params["job"]
        record = self.store.job(job) if JOB_ID.match(job) else None
        if record is None or record.get("keyset") != keyset:
            raise HTTPError(404, f"no job {job[:40]} for this key set")
        return job, record


async def _checked(fn, *args):
    """A check run off the event loop; a UserError (the CLI's message) is a 400."""
    try:
        return await asyncio.to_thread(fn, *args)
    except UserError as exc:
        raise HTTPError(400, str(exc)) from None


def _service(request: Request) -> Service:
    return request.app.state.service


async def health(request: Request):
    s = _service(request)
    return JSONResponse({"status": "ok", "programs": {k: p.fingerprint for k, p in s.programs.items()},
                         "pending": s.store.pending()})


async def program(request: Request):
    return FileResponse(_service(request).store.path("program.hecc"), media_type="application/octet-stream",
                        filename="program.hecc")


async def register(request: Request):
    s = _service(request)
    registration = request.headers.get("x-hecc-registration", "")
    if not REGISTRATION_ID.match(registration):
        raise HTTPError(400, "registering a key set needs the header X-Hecc-Registration: 32 hexadecimal "
                             "digits the client chose (and keeps, to register again safely)")
    limit = max(p.key_bytes for p in s.programs.values())
    path = await s.receive(request, limit, "an evaluation-key file")
    try:
        keyset, layout = await _checked(s.check_keys, path)
        if len(s.tokens) >= s.limits.max_keysets and keyset not in {k for k, _ in s.tokens.values()}:
            raise HTTPError(403, f"this service holds {s.limits.max_keysets} key sets, its most")
        try:
            token, created = s.store.register(keyset, layout, registration, path)
        except Conflict as exc:
            raise HTTPError(409, str(exc)) from None
    finally:
        if os.path.exists(path):
            os.unlink(path)
    s.tokens[hashlib.sha256(token.encode()).hexdigest()] = (keyset, layout)
    s.counts["keysets_registered"] += created
    return JSONResponse({"keyset": keyset, "layout": layout, "token": token}, status_code=201 if created else 200)


async def submit(request: Request):
    s = _service(request)
    keyset, layout = s.keyset_of(request)
    key = request.headers.get("idempotency-key") or secrets.token_hex(16)
    if not IDEMPOTENCY_KEY.match(key):
        raise HTTPError(400, "Idempotency-Key must be 1 to 64 letters, digits, '-' or '_'")
    job = s.store.job_id(keyset, key)
    known = s.store.job(job) is not None
    if not known and s.store.pending() >= s.limits.max_queue:
        raise HTTPError(503, f"the queue is full ({s.limits.max_queue} jobs); retry later", retry_after=5)
    path = await s.receive(request, s.programs[layout].input_bytes, "an encrypted-input file")
    try:
        inputs = await _checked(s.check_input, path, keyset, layout)
        if s.store.job(job) is not None:  # a retry of a job accepted before or while this was checked
            return JSONResponse({"job": job, **s.store.state(job)}, status_code=200)
        if s.store.pending() >= s.limits.max_queue:
            raise HTTPError(503, f"the queue is full ({s.limits.max_queue} jobs); retry later", retry_after=5)
        s.store.submit(job, keyset, layout, path, inputs)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    s.counts["jobs_submitted"] += 1
    return JSONResponse({"job": job, "state": "queued"}, status_code=202)


async def job_state(request: Request):
    s = _service(request)
    job, _ = s.job_of(request)
    raw = request.query_params.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        raise HTTPError(400, f"wait={raw[:40]!r} is not a number of seconds") from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise HTTPError(400, f"wait must be between 0 and {MAX_WAIT_SECONDS:g} seconds")
    deadline = time.monotonic() + wait
    state = s.store.state(job)
    while state["state"] in ("queued", "running") and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if s.store.job(job) is None:
            raise HTTPError(404, f"no job {job} for this key set")
        state = s.store.state(job)
    return JSONResponse({"job": job, **state})


async def result(request: Request):
    s = _service(request)
    job, _ = s.job_of(request)
    state = s.store.state(job)
    if state["state"] == "failed":
        raise HTTPError(422, f"job {job} failed: {state['error']}")
    if state["state"] != "done":
        raise HTTPError(409, f"job {job} is {state['state']}; its result is not there yet (GET /v1/jobs/{job}?wait=S)")
    try:  # opened here: a DELETE of the job meanwhile cannot take the file from under the answer
        f = open(s.store.result_path(job), "rb")
    except FileNotFoundError:
        raise HTTPError(404, f"no job {job} for this key set") from None
    size = os.fstat(f.fileno()).st_size

    async def chunks():
        with f:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                yield chunk
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers={"Content-Length": str(size)})


async def delete(request: Request):
    s = _service(request)
    job, _ = s.job_of(request)
    state = s.store.state(job)["state"]
    if state in ("queued", "running"):
        raise HTTPError(409, f"job {job} is {state}; a job is deleted once it ended")
    s.store.delete(job)
    return JSONResponse({"job": job, "state": "deleted"})


async def metrics(request: Request):
    s = _service(request)
    work = s.workers.stats() if s.workers else {"jobs": 0, "failed": 0, "seconds": 0.0}
    pending = s.store.pending()
    rows = [("hecc_jobs_submitted_total", "counter", "jobs accepted since the service started", s.counts["jobs_submitted"]),
            ("hecc_jobs_evaluated_total", "counter", "jobs evaluated since the service started", work["jobs"]),
            ("hecc_jobs_failed_total", "counter", "jobs that failed since the service started", work["failed"]),
            ("hecc_evaluation_seconds_total", "counter", "seconds the workers spent evaluating jobs", round(work["seconds"], 6)),
            ("hecc_queue_length", "gauge", "jobs queued or running", pending),
            ("hecc_keysets", "gauge", "registered key sets", len(s.tokens)),
            ("hecc_worker_restarts_total", "counter", "evaluation processes restarted after dying",
             s.workers.restarts if s.workers else 0),
            ("hecc_uptime_seconds", "gauge", "seconds since the service started", round(time.time() - s.started, 3))]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    lines += ["# HELP hecc_http_responses_total HTTP responses by status code",
              "# TYPE hecc_http_responses_total counter"]
    lines += [f'hecc_http_responses_total{{code="{code}"}} {n}' for code, n in sorted(s.requests.items())]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


async def _http_error(request: Request, exc: HTTPError):
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
    if exc.status == 408:  # a dropped upload: the server closes the connection rather than read on
        headers["Connection"] = "close"
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _user_error(request: Request, exc: UserError):
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _starlette_error(request: Request, exc):
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


class _CountResponses:
    """ASGI wrapper: counts responses by status (the metrics)."""

    def __init__(self, app, counter: Counter):
        self.app, self.counter = app, counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start":
                self.counter[message["status"]] += 1
            await send(message)
        await self.app(scope, receive, counted)


def make_app(service: Service):
    """The ASGI application of ``service``."""
    from starlette.exceptions import HTTPException
    routes = [Route("/v1/health", health, methods=["GET"]),
              Route("/v1/program", program, methods=["GET"]),
              Route("/v1/keysets", register, methods=["POST"]),
              Route("/v1/jobs", submit, methods=["POST"]),
              Route("/v1/jobs/{job}", job_state, methods=["GET"]),
              Route("/v1/jobs/{job}", delete, methods=["DELETE"]),
              Route("/v1/jobs/{job}/result", result, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers={HTTPError: _http_error, UserError: _user_error,
                                                       HTTPException: _starlette_error})
    app.state.service = service
    return _CountResponses(app, service.requests)
