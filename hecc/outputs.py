"""One rule for every file hecc writes.

- An output never names a key file or a file the same command reads (``check_output`` refuses it,
  ``--force`` or not).
- An existing file is replaced only when it is of the kind the command writes (``looks_ours``:
  an artifact for ``compile``, a ciphertext file for ``encrypt``/``eval``, a numpy file for
  ``run``/``decrypt``, hecc's JSON, SVG or PNG) or with ``--force``.
- Its folder must exist and be writable, which is checked before any long work.
- ``atomic_output`` writes a temporary file in the same folder, fsyncs it and renames it over the
  target: a reader sees the old file or the new one, never half of one. The temporary file is
  removed on any error and on SIGTERM/SIGINT (``cleanup_on_signals``); a failed write (disk full,
  read-only folder) is a ``UserError`` that names the path and the reason.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import tempfile
import zipfile

from .errors import UserError

class Terminated(BaseException):
    """SIGTERM arrived: unwind like KeyboardInterrupt so every ``finally`` runs."""


def _on_signal(signum, frame):
    raise Terminated(signum)


def cleanup_on_signals() -> None:
    """Turn SIGTERM into an exception (SIGINT already is one), so temporary outputs and worker
    pools are cleaned up on the way out. Called once by the CLI's main process."""
    signal.signal(signal.SIGTERM, _on_signal)


KEY_FILE_NAMES = ("secret.key", "eval.keys")


def is_key_file(path: str) -> bool:
    """A hecc key file, by name or by content."""
    if os.path.basename(path) in KEY_FILE_NAMES:
        return True
    return container_kind(path) in ("secret", "eval")


def container_kind(path: str) -> str | None:
    """The kind (secret, eval, input, output) of a hecc key or ciphertext file; None otherwise."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("header.json")
            if info.file_size > 1 << 20:
                return None
            kind = json.loads(zf.read(info)).get("kind")
        return kind if isinstance(kind, str) else None
    except Exception:  # unreadable, not a zip, no header: not one of ours
        return None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str, looks_ours, force: bool = False, reads: tuple = (), what: str = "output") -> None:
    """Refuse an output path that would destroy something: a key file, one of the command's
    inputs (``reads``), a directory, or an existing file of another kind (unless ``force``);
    and one that cannot be written (missing or read-only folder). Cheap: call it first."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a directory; give a file path")
    if os.path.lexists(path) and is_key_file(path):
        raise UserError(f"{what} {path} is a hecc key file; hecc never writes over keys with another "
                        "kind of file. Choose another path")
    for source in reads:
        if source and os.path.exists(source) and os.path.exists(path) and _same_file(source, path):
            raise UserError(f"{what} {path} is also an input of this command; write the result to "
                            "another path")
    if os.path.lexists(path) and not force and not looks_ours(path):
        raise UserError(f"{path} exists and is not a file hecc wrote (of the kind this command writes); choose "
                        "another path or pass --force")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: the folder {folder} is not writable")


AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000


_LIBC = None


def _link(fd: int, path: str) -> bool:
    """Give the nameless (O_TMPFILE) file ``fd`` the name ``path``."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    libc = _LIBC
    if libc.linkat(fd, b"", AT_FDCWD, os.fsencode(path), AT_EMPTY_PATH) == 0:
        return True
    try:
        os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)
        return True
    except OSError:
        return False


_NAMELESS: dict[int, bool] = {}  # per device: can nameless files be written and named there


def _nameless(folder: str, mode: int) -> int | None:
    """A nameless file in ``folder``, where the file system can name it afterwards."""
    device = os.stat(folder).st_dev
    if _NAMELESS.get(device) is False or not hasattr(os, "O_TMPFILE"):
        return None
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, mode)
    except OSError:
        _NAMELESS[device] = False
        return None
    if device not in _NAMELESS:  # try once whether it can be named
        probe = os.path.join(folder, f".hecc-probe.{secrets.token_hex(6)}")
        _NAMELESS[device] = _link(fd, probe)
        with contextlib.suppress(OSError):
            os.unlink(probe)
        os.close(fd)
        return _nameless(folder, mode)
    return fd


@contextlib.contextmanager
def atomic_outputs(targets):
    """Binary files to write several paths through (``targets``: (path, mode) pairs), all or
    none: each is written as a nameless file in its folder (O_TMPFILE) and fsynced; only when
    every one is complete are they named and renamed over their paths, in order. A process
    killed while writing (even by SIGKILL) leaves nothing behind (only a SIGKILL between the
    two system calls that name one file and rename it, a few microseconds, leaves a hidden
    ``.NAME.*.tmp`` beside it); a failed write (disk full,
    read-only folder) replaces nothing and is a UserError naming the path and the reason. Where
    the file system cannot do that, named temporary files are used and removed on any error and
    on SIGTERM/SIGINT."""
    staged = []  # [path, file, temporary name or None]
    current = targets[0][0] if targets else ""
    try:
        try:
            for path, mode in targets:
                current = path = os.fspath(path)
                folder = os.path.dirname(os.path.abspath(path))
                named = None
                fd = _nameless(folder, mode)
                if fd is None:
                    fd, named = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
                    os.fchmod(fd, mode)
                staged.append([path, os.fdopen(fd, "wb"), named])
            yield [entry[1] for entry in staged]
            for entry in staged:
                current, f = entry[0], entry[1]
                f.flush()
                os.fsync(f.fileno())
            # every file is complete: name each and rename it over its path at once, in order,
            # so a SIGKILL can leave a named temporary file only between those two system calls
            for entry in staged:
                current, f = entry[0], entry[1]
                if entry[2] is None:
                    folder = os.path.dirname(os.path.abspath(current))
                    name = os.path.join(folder, f".{os.path.basename(current)}.{secrets.token_hex(6)}.tmp")
                    if not _link(f.fileno(), name):
                        raise OSError(f"the file system cannot name the file written for {current}")
                    entry[2] = name
                os.replace(entry[2], current)
                entry[2] = None
        except OSError as exc:
            raise UserError(f"cannot write {current}: {exc.strerror or exc}") from None
    finally:
        for _, f, named in staged:
            with contextlib.suppress(OSError):  # a failed write was reported; its buffer is dropped
                f.close()
            if named is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(named)


@contextlib.contextmanager
def atomic_output(path: str, mode: int = 0o644):
    """A binary file to write ``path`` through, atomically (see ``atomic_outputs``)."""
    with atomic_outputs([(path, mode)]) as (f,):
        yield f


def write_bytes(path: str, data: bytes, mode: int = 0o644) -> None:
    with atomic_output(path, mode) as f:
        f.write(data)


def is_numpy_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        return head == b"\x93NUMPY" or zipfile.is_zipfile(path)
    except OSError:
        return False


def is_ciphertext_file(path: str) -> bool:
    return container_kind(path) in ("input", "output")


def is_hecc_json(path: str) -> bool:
    """Run statistics hecc wrote (a JSON object with hecc's keys)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
        return isinstance(data, dict) and "backend" in data and "seconds" in data
    except (OSError, ValueError):
        return False


PICTURE_MARK = "hecc"


def is_hecc_picture(path: str) -> bool:
    """An SVG or PNG hecc drew (it marks both)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return (path.endswith(".svg") and b"<!-- drawn by hecc -->" in head) or \
        (path.endswith(".png") and head.startswith(b"\x89PNG") and b"Software\x00hecc" in head)
