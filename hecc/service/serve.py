"""``hecc serve``: the process that runs a service (the HTTP side on uvicorn, workers as children).

The socket is bound here before anything starts, so a port in use is one clear message, and
``--port 0`` takes a free port (the line ``hecc serve: listening on http://HOST:PORT`` on stderr
says which). SIGTERM or SIGINT stop it (exit 0): uvicorn finishes the requests under way, then the workers
are stopped; a job they were evaluating runs again at the next start.
"""
from __future__ import annotations

import os
import signal
import socket
import sys

from ..errors import UserError


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror} (another service on that port? "
                        "pick another with --port)") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def _head_timeout(seconds: float):
    """uvicorn's h11 protocol, closing a connection whose request head is not complete within
    ``seconds`` of the connection opening or of its last response (uvicorn times out a connection
    idle between requests, not one that sends half a request line and stalls: enough of those
    would hold every connection the service takes)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeout(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc):
            self._timer.cancel()
            super().connection_lost(exc)

        def _arm(self):
            timer = getattr(self, "_timer", None)
            if timer is not None:
                timer.cancel()
            waiting = self.cycle  # a new request head replaces it
            self._timer = self.loop.call_later(seconds, lambda: self.cycle is waiting and self.transport.close())
    return HeadTimeout


def serve(artifact_path: str, data: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          cluster: str | None = None, limits=None, log=None) -> None:
    """Run the service of the artifact at ``artifact_path`` with its state in ``data`` until
    SIGTERM or SIGINT."""
    try:
        import uvicorn  # the extra: said before anything starts
        from .app import Limits, Service, make_app
    except ImportError as exc:
        raise UserError(f"hecc serve needs the serve extra ({exc.name} is missing): "
                        "pip install 'hecc[serve]'") from None

    from ..api import load
    from ..backends.common import key_memory_bytes, predicted_peak_bytes
    from ..executors.local import fitting_workers
    from ..clientserver import fingerprint
    from .store import Store
    from .worker import CACHED_KEYSETS, Workers
    log = log or (lambda line: (sys.stderr.write(f"hecc serve: {line}\n"), sys.stderr.flush()))
    if workers < 1:
        raise UserError(f"--workers {workers}: a service needs at least one evaluation worker")
    program = load(artifact_path)
    if not program.encrypted:
        why = program.artifact.manifest.get("not_encrypted_because", "")
        raise UserError(f"{artifact_path} has no CKKS program ({why}); there is nothing to serve")
    programs = {layout: program.with_layout(layout) for layout in program.layouts}
    store = Store.create_or_open(data, {k: fingerprint(p) for k, p in programs.items()}, artifact_path)
    sock = _bind(host, port)
    per = max(predicted_peak_bytes(p.graph) + CACHED_KEYSETS * key_memory_bytes(p.graph) for p in programs.values())
    if not cluster:  # a worker evaluates one job at a time: at most this much memory each
        workers = fitting_workers(per, workers, workers, notice=log)
    service = Service(store, programs, limits or Limits())
    pool = Workers(store, workers, cluster, log)
    service.workers = pool
    config = uvicorn.Config(make_app(service), log_level="warning", access_log=False, timeout_graceful_shutdown=10,
                            limit_concurrency=256, http=_head_timeout(service.limits.upload_timeout))
    server = uvicorn.Server(config)
    address, bound = sock.getsockname()[:2]
    shown = f"[{address}]" if ":" in address else address
    pool.start()
    stopped = []  # uvicorn stops on SIGTERM/SIGINT, then raises the signal again: ours notes it
    previous = {sig: signal.signal(sig, lambda number, _: stopped.append(number))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log(f"listening on http://{shown}:{bound} ({', '.join(programs)} program, {workers} worker(s) of "
            f"{per / 2 ** 30:.2f} GiB predicted, {len(service.tokens)} key set(s), {store.pending()} job(s) "
            f"pending, state in {os.path.abspath(data)})")
        server.run(sockets=[sock])
    finally:
        pool.stop()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log(f"stopped ({signal.Signals(stopped[0]).name})" if stopped else "stopped")
