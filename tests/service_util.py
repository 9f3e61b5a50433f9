"""A real ``hecc serve`` process on 127.0.0.1 for the service tests, and raw HTTP requests to it."""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HECC = shutil.which("hecc") or os.path.join(os.path.dirname(sys.executable), "hecc")
LISTENING = re.compile(r"hecc serve: listening on (http://127\.0\.0\.1:\d+)")


class ServiceProcess:
    """``hecc serve ARTIFACT --data DATA --port PORT ...`` started and stopped by a test; its
    stderr goes to DATA's sibling ``serve.log`` (read for the listening line and by tests)."""

    def __init__(self, artifact, data, *extra, port: int = 0):
        self.artifact, self.data, self.extra, self.port = str(artifact), str(data), extra, port
        self.log = f"{self.data}.serve.log"
        self.proc = None
        self.url = None

    def start(self, timeout: float = 60.0) -> "ServiceProcess":
        offset = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([HECC, "serve", self.artifact, "--data", self.data, "--port",
                                          str(self.port), *map(str, self.extra)],
                                         stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(offset)
                found = LISTENING.search(f.read().decode(errors="replace"))
            if found:
                self.url = found.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])  # a restart listens on the same port
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"hecc serve exited with {self.proc.returncode}:\n{self.stderr()}")
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"hecc serve did not listen within {timeout} s:\n{self.stderr()}")

    def stderr(self) -> str:
        with open(self.log, "rb") as f:
            return f.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean-up runs (its workers die with it)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60.0) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one raw request."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def answer(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
