"""The service's durable state under ``--data``: key sets, jobs and the queue, as files.

    DATA/service.json                 which program this state belongs to (fingerprint per layout)
    DATA/secret                       32 random bytes (0600): tokens and job ids are HMACs of it
    DATA/program.hecc                 the artifact served at GET /v1/program (a copy)
    DATA/keysets/<keyset>/eval.keys   a registered key set ...
    DATA/keysets/<keyset>/record.json ... and its record (layout, sha256 of its token and of the
                                      client's registration id); written last: it is the commit
    DATA/jobs/<id>/input.ct           a job's encrypted input, then job.json (its commit), then
                                      result.ct or error.json when it ends; progress while it runs
    DATA/queue/<seq>-<id>             a queued job (an empty marker; FIFO by seq)
    DATA/running/<worker>/<seq>-<id>  the marker moved (renamed) by the worker that claimed it
    DATA/uploads/                     bodies being received (emptied at start)

Every file is written whole and renamed into place (``outputs.atomic_output``), and every state
change is a rename, so a SIGKILL at any point leaves either the old or the new state. Opening
the store after a crash puts the markers of jobs that were running back in the queue: they run
again, and a job whose result was written before the crash is not evaluated twice.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import stat
import time

from ..errors import UserError
from ..outputs import write_bytes

FORMAT = "hecc-service"
JOB_ID = re.compile(r"[0-9a-f]{32}\Z")
KEYSET_ID = re.compile(r"[0-9a-f]{32}\Z")
REGISTRATION_ID = re.compile(r"[0-9a-f]{32}\Z")
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
MARKER = re.compile(r"(\d{20})-([0-9a-f]{32})\Z")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _read_json(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_json(path: str, data: dict, mode: int = 0o644) -> None:
    write_bytes(path, json.dumps(data, sort_keys=True).encode(), mode)


class Store:
    """The state of one service (see the module docstring). One process (the HTTP side)
    registers key sets and submits jobs; workers claim, finish and fail them."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        with open(os.path.join(self.root, "secret"), "rb") as f:
            self._secret = f.read(64)

    # ---------------------------------------------------------------- opening

    @classmethod
    def create_or_open(cls, root: str, programs: dict[str, str], artifact_path: str) -> "Store":
        """The store at ``root`` for the program with fingerprints ``programs`` (layout ->
        fingerprint): made if ``root`` is new or empty, reopened if it holds this program's state;
        a folder holding anything else is refused (nothing the user owns is touched)."""
        root = os.path.abspath(root)
        marker = os.path.join(root, "service.json")
        if os.path.lexists(root) and (not os.path.isdir(root) or os.path.islink(root)):
            raise UserError(f"--data {root} is not a folder; give the service a folder for its state")
        if os.path.isdir(root) and os.listdir(root):
            state = _read_json(marker)
            if state is None or state.get("format") != FORMAT:
                raise UserError(f"--data {root} holds files that are not a hecc service's state; give a "
                                "new or empty folder")
            if state.get("programs") != programs:
                raise UserError(f"--data {root} holds the state of a service for another program "
                                f"(fingerprints {state.get('programs')}); its key sets and jobs do not "
                                "belong to this artifact. Give another --data folder")
        else:
            parent = os.path.dirname(root)
            if not os.path.isdir(parent):
                raise UserError(f"cannot create --data {root}: {parent} does not exist")
            os.makedirs(root, 0o700, exist_ok=True)
            os.chmod(root, 0o700)
            for sub in ("keysets", "jobs", "queue", "running", "uploads", "workers"):
                os.makedirs(os.path.join(root, sub), exist_ok=True)
            write_bytes(os.path.join(root, "secret"), secrets.token_bytes(32), 0o600)
            shutil.copyfile(artifact_path, os.path.join(root, ".program.tmp"))
            os.replace(os.path.join(root, ".program.tmp"), os.path.join(root, "program.hecc"))
            write_json(marker, {"format": FORMAT, "version": 1, "programs": programs})
        if stat.S_IMODE(os.stat(os.path.join(root, "secret")).st_mode) & 0o077:
            raise UserError(f"{root}/secret is readable by other users; run `chmod 600 {root}/secret`")
        store = cls(root)
        store.recover()
        return store

    def recover(self) -> None:
        """After a crash or a stop: jobs that were running go back to the queue, a job committed
        (job.json) whose marker was not made yet is queued, partial uploads are dropped."""
        for worker in os.listdir(self.path("running")):
            folder = self.path("running", worker)
            for marker in os.listdir(folder):
                os.replace(os.path.join(folder, marker), self.path("queue", marker))
        queued = {m.group(2) for m in map(MARKER.match, os.listdir(self.path("queue"))) if m}
        for job in os.listdir(self.path("jobs")):
            record = self.job(job)
            if record is None or job in queued or self.state(job)["state"] in ("done", "failed"):
                continue
            seq = record.get("seq")
            seq = seq if isinstance(seq, int) and 0 <= seq < 10 ** 20 else time.time_ns()
            with open(self.path("queue", f"{seq:020d}-{job}"), "wb"):
                pass
        for name in os.listdir(self.path("uploads")):
            os.unlink(self.path("uploads", name))

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def hmac(self, *parts: str) -> str:
        return hmac.new(self._secret, "|".join(parts).encode(), hashlib.sha256).hexdigest()

    # ---------------------------------------------------------------- key sets

    def keysets(self) -> dict[str, dict]:
        """Every registered key set: keyset -> record."""
        out = {}
        for keyset in os.listdir(self.path("keysets")):
            record = _read_json(self.path("keysets", keyset, "record.json"))
            if KEYSET_ID.match(keyset) and record is not None:
                out[keyset] = record
        return out

    def register(self, keyset: str, layout: str, registration: str, upload: str) -> tuple[str, bool]:
        """Register the checked ``eval.keys`` at ``upload`` as key set ``keyset`` for the client
        with ``registration`` id: (token, created). The same client registering again gets the
        same token (a retry is safe); another client is refused (``Conflict``)."""
        token = self.hmac("token", keyset, registration)
        folder = self.path("keysets", keyset)
        record = _read_json(os.path.join(folder, "record.json"))
        if record is not None:
            if not hmac.compare_digest(record.get("registration_sha256", ""), _sha(registration)):
                raise Conflict(f"key set {keyset} is registered already, by another client; a key set "
                               "is registered once (make a new one with `hecc keygen`)")
            os.unlink(upload)
            return token, False
        os.makedirs(folder, exist_ok=True)
        os.replace(upload, os.path.join(folder, "eval.keys"))
        write_json(os.path.join(folder, "record.json"),
                   {"layout": layout, "token_sha256": _sha(token), "registration_sha256": _sha(registration),
                    "registered": time.time()})
        return token, True

    # ---------------------------------------------------------------- jobs

    def job_id(self, keyset: str, idempotency_key: str) -> str:
        return self.hmac("job", keyset, idempotency_key)[:32]

    def job(self, job: str) -> dict | None:
        """A job's record (keyset, layout, seq), or None when there is no such job."""
        if not JOB_ID.match(job):
            return None
        return _read_json(self.path("jobs", job, "job.json"))

    def submit(self, job: str, keyset: str, layout: str, upload: str, inputs: int) -> None:
        """Queue the checked input at ``upload`` as ``job``."""
        folder = self.path("jobs", job)
        os.makedirs(folder, exist_ok=True)
        os.replace(upload, os.path.join(folder, "input.ct"))
        seq = time.time_ns()
        write_json(os.path.join(folder, "job.json"),
                   {"keyset": keyset, "layout": layout, "seq": seq, "inputs": inputs, "submitted": time.time()})
        with open(self.path("queue", f"{seq:020d}-{job}"), "wb"):
            pass

    def state(self, job: str) -> dict:
        """``{"state": queued|running|done|failed, ...}`` of an existing job."""
        folder = self.path("jobs", job)
        if os.path.exists(os.path.join(folder, "result.ct")):
            return {"state": "done"}
        error = _read_json(os.path.join(folder, "error.json"))
        if error is not None:
            return {"state": "failed", "error": str(error.get("error", "the evaluation failed"))}
        progress = _read_json(os.path.join(folder, "progress.json"))
        if progress is not None:
            return {"state": "running", **{k: progress[k] for k in ("done", "total", "unit") if k in progress}}
        return {"state": "queued"}

    def delete(self, job: str) -> None:
        for marker in self._markers(job):
            os.unlink(marker)
        shutil.rmtree(self.path("jobs", job), ignore_errors=True)

    def _markers(self, job: str) -> list[str]:
        found = [self.path("queue", m) for m in os.listdir(self.path("queue")) if m.endswith(job)]
        for worker in os.listdir(self.path("running")):
            folder = self.path("running", worker)
            found += [os.path.join(folder, m) for m in os.listdir(folder) if m.endswith(job)]
        return found

    def pending(self) -> int:
        """Jobs queued or running."""
        running = sum(len(os.listdir(self.path("running", w))) for w in os.listdir(self.path("running")))
        return len(os.listdir(self.path("queue"))) + running

    # ---------------------------------------------------------------- the worker's side

    def claim(self, worker: str) -> tuple[str, str] | None:
        """The oldest queued job, moved to this worker: (marker path, job id); None if none."""
        folder = self.path("running", worker)
        os.makedirs(folder, exist_ok=True)
        for marker in sorted(os.listdir(self.path("queue"))):
            match = MARKER.match(marker)
            if match is None:
                continue
            mine = os.path.join(folder, marker)
            try:
                os.rename(self.path("queue", marker), mine)
            except FileNotFoundError:
                continue  # another worker took it
            return mine, match.group(2)
        return None

    def finish(self, marker: str, job: str, error: str | None = None) -> None:
        """A claimed job ended: its result (written by the worker at ``result_path``) or
        ``error`` is in place; its marker goes. A job is done once its result is in place, so
        its client may have deleted it (and the marker) already."""
        if error is not None:
            write_json(self.path("jobs", job, "error.json"), {"error": error})
        for path in (self.path("jobs", job, "progress.json"), marker):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def fail_running(self, worker: str, why: str) -> list[str]:
        """The jobs of a worker that died: failed with ``why`` (unless their result was
        written); their ids."""
        folder = self.path("running", worker)
        failed = []
        if not os.path.isdir(folder):
            return failed
        for marker in os.listdir(folder):
            match = MARKER.match(marker)
            job = match.group(2) if match else None
            if job and os.path.isdir(self.path("jobs", job)) and not os.path.exists(self.path("jobs", job, "result.ct")):
                self.finish(os.path.join(folder, marker), job, why)
                failed.append(job)
            else:
                os.unlink(os.path.join(folder, marker))
        return failed

    def result_path(self, job: str) -> str:
        return self.path("jobs", job, "result.ct")

    def write_progress(self, job: str, done: int, total: int, unit: str) -> None:
        write_json(self.path("jobs", job, "progress.json"), {"done": done, "total": total, "unit": unit})


class Conflict(UserError):
    """A request that contradicts the service's state (a key set registered by another client)."""
