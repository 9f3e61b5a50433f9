"""External tensor data, read only from files the model's own folder lets it name.

``onnx.load`` reads a tensor's external data from whatever file its ``location`` names, so a model
could copy ``keys/secret.key`` into a compiled artifact. hecc parses models without their external
data and reads it here, and only when:

- the model was given as a path (bytes and ``onnx.ModelProto`` objects have no folder: refused);
- ``location`` is a relative path that names no hidden file or folder, and its real path (symlinks
  followed) lies inside the model's folder;
- that file is a regular file and not a hecc key or ciphertext file: not named ``secret.key`` or
  ``eval.keys``, not a zip whose ``header.json`` has the format ``hecc-keys`` or
  ``hecc-ciphertexts``, not starting with SEAL's serialization magic;
- ``offset`` and ``length`` lie within the file, the length is the tensor's dims x item size, and
  the tensor has at most ``MAX_TENSOR_ELEMENTS`` elements;
- no two tensors share bytes, and all of them together read at most ``MAX_EXTERNAL_BYTES``.

Every region is checked before any is read. A refusal is a ``ModelError`` naming the tensor.
"""
from __future__ import annotations

import json
import os
import re
import stat
import zipfile

import onnx
from onnx import TensorProto

from ..backends.seal_bytes import HEADER as SEAL_HEADER, MAGIC as SEAL_MAGIC
from ..errors import ModelError
from ..outputs import KEY_FILE_NAMES
from .onnx_limits import MAX_EXTERNAL_BYTES, MAX_TENSOR_ELEMENTS, OVER_BOUND, element_count, \
    model_tensors, raw_bytes

HECC_FORMATS = {"hecc-keys": "key", "hecc-ciphertexts": "ciphertext"}


def external_tensors(model: onnx.ModelProto) -> list[tuple[TensorProto, str]]:
    """The tensors of ``model`` whose data lives in an external file, with their descriptions."""
    return [(t, what) for t, what in model_tensors(model)
            if isinstance(t, TensorProto) and t.data_location == TensorProto.EXTERNAL]


def _entries(tensor: TensorProto, what: str) -> tuple[str, int | None, int | None]:
    """(location, offset, length) from ``external_data``; offset and length are optional."""
    entries = {e.key: e.value for e in tensor.external_data}
    numbers = []
    for key in ("offset", "length"):
        value = entries.get(key)
        if value is not None and not re.fullmatch(r"[0-9]{1,20}", value):
            raise ModelError(f"{what}: external data {key} {value[:40]!r} is not a non-negative integer")
        numbers.append(None if value is None else int(value))
    location = entries.get("location", "")
    if not location:
        raise ModelError(f"{what} keeps its data in an external file but names none (no location)")
    return location, numbers[0], numbers[1]


def _hidden(parts) -> bool:
    return any(p.startswith(".") and p not in (".", "..") for p in parts)


def _resolve(location: str, folder: str, what: str) -> str:
    """The real path ``location`` names, after the location rules (see the module docstring)."""
    shown = repr(location[:200])
    if "\0" in location:
        raise ModelError(f"{what}: external data location {shown} contains a NUL byte")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", location):
        raise ModelError(f"{what}: external data location {shown} is an absolute path; hecc reads "
                         "external data only from files inside the model's folder, named relative to it")
    if _hidden(re.split(r"[\\/]", location)):
        raise ModelError(f"{what}: external data location {shown} names a hidden file or folder; "
                         "hecc does not read those")
    path = os.path.realpath(os.path.join(folder, location))
    if not path.startswith(folder.rstrip(os.sep) + os.sep):
        raise ModelError(f"{what}: external data location {shown} leads outside the model's folder "
                         f"{folder} (to {path}); hecc reads external data only from inside it")
    if _hidden(os.path.relpath(path, folder).split(os.sep)):
        raise ModelError(f"{what}: external data location {shown} leads to a hidden file or folder "
                         f"({path}); hecc does not read those")
    if os.path.basename(location) in KEY_FILE_NAMES or os.path.basename(path) in KEY_FILE_NAMES:
        raise ModelError(f"{what}: external data location {shown} names a hecc key file ({path}); "
                         "hecc never reads keys into a model")
    return path


def _hecc_file(f) -> str | None:
    """Why the open file ``f`` looks like a hecc key or ciphertext file; None if it does not."""
    head = f.read(SEAL_HEADER.size)
    if len(head) == SEAL_HEADER.size:
        magic, size, *_, reserved, _ = SEAL_HEADER.unpack(head)
        if magic == SEAL_MAGIC and size == SEAL_HEADER.size and reserved == 0:
            return "it starts with SEAL's serialization header (a SEAL key or ciphertext)"
    f.seek(0)
    if not zipfile.is_zipfile(f):
        return None
    try:
        with zipfile.ZipFile(f) as zf:
            info = zf.getinfo("header.json")
            if info.file_size > 1 << 20:
                raise ValueError("header.json too large")
            fmt = json.loads(zf.read(info)).get("format")
    except KeyError:
        return None
    except Exception:  # damaged zip or header: it may still hold key material
        return "it is a zip with an unreadable header.json, as a damaged hecc key file would be"
    if fmt in HECC_FORMATS:
        return f"it is a hecc {HECC_FORMATS[fmt]} file (format {fmt!r})"
    return None


def _open_checked(path: str, what: str):
    """``path`` opened for reading after the file checks; returns (file, size, identity)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ModelError(f"{what}: external data file {path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ModelError(f"{what}: external data file {path} does not exist; keep the model's data "
                         "file beside the model") from None
    except OSError as exc:
        raise ModelError(f"{what}: cannot read external data file {path}: {exc.strerror}") from None
    f = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelError(f"{what}: external data file {path} is not a regular file")
        reason = _hecc_file(f)
        if reason:
            raise ModelError(f"{what}: external data file {path} is refused: {reason}; hecc never "
                             "reads keys or ciphertexts into a model")
    except BaseException:
        f.close()
        raise
    return f, info.st_size, (info.st_dev, info.st_ino)


def _plan(tensor: TensorProto, what: str, folder: str, files: dict) -> tuple[str, int, int]:
    """(real path, offset, length) of ``tensor``'s data, every rule checked; opens files once."""
    location, offset, length = _entries(tensor, what)
    count = element_count(tensor.dims, what)
    if count > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{what} declares dims {list(tensor.dims)} = {count:,} elements, {OVER_BOUND}")
    need = raw_bytes(tensor.data_type, count, what)
    path = _resolve(location, folder, what)
    if path not in files:
        f, size, identity = _open_checked(path, what)
        f.close()
        files[path] = (size, identity)
    size = files[path][0]
    offset = offset or 0
    if offset > size:
        raise ModelError(f"{what}: its external data offset {offset:,} lies past the end of {path} "
                         f"({size:,} bytes)")
    length = size - offset if length is None else length
    if length != need:
        raise ModelError(f"{what}: its external data is {length:,} bytes, but its dims "
                         f"{list(tensor.dims)} and type {TensorProto.DataType.Name(tensor.data_type)} "
                         f"need {need:,}")
    if offset + length > size:
        raise ModelError(f"{what}: its external data (bytes {offset:,} to {offset + length:,}) runs "
                         f"past the end of {path} ({size:,} bytes)")
    return path, offset, length


def _pread(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (one pread returns at most about 2 GiB)."""
    chunks, done = [], 0
    while done < length:
        chunk = os.pread(fd, min(length - done, 1 << 30), offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def plan_external_data(model: onnx.ModelProto, model_path) -> list:
    """Check every external tensor of ``model`` (parsed from ``model_path``, None when the model
    came as bytes or a ModelProto) under the module's rules, reading no data; returns the plan
    ``read_external_data`` follows."""
    tensors = external_tensors(model)
    if not tensors:
        return []
    if model_path is None:
        tensor, what = tensors[0]
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        raise ModelError(f"{what} keeps its data in an external file ({location[:200]!r}); hecc reads "
                         "external data only from the model's own folder: pass the model's path, "
                         "not bytes or an onnx.ModelProto")
    folder = os.path.realpath(os.path.dirname(os.path.abspath(os.fspath(model_path))))
    files: dict[str, tuple[int, tuple]] = {}
    plans = [(_plan(t, what, folder, files), t, what) for t, what in tensors]
    total = sum(length for (_, _, length), _, _ in plans)
    if total > MAX_EXTERNAL_BYTES:
        raise ModelError(f"the model's external data totals {total:,} bytes, more than hecc's bound "
                         f"of MAX_EXTERNAL_BYTES = 2**31 - 1 = {MAX_EXTERNAL_BYTES:,}")
    regions = sorted((files[p][1], offset, offset + length, what)
                     for (p, offset, length), _, what in plans if length)
    for (file_a, _, end_a, what_a), (file_b, start_b, _, what_b) in zip(regions, regions[1:]):
        if file_a == file_b and start_b < end_a:
            raise ModelError(f"{what_b} reads external bytes that {what_a} also reads; each tensor "
                             "must have its own bytes")
    return [(plan, tensor, what, files[plan[0]][1]) for plan, tensor, what in plans]


def read_external_data(plans: list) -> None:
    """Read each planned tensor's bytes into its ``raw_data``, in place (the tensor then holds
    its data like any other)."""
    by_file: dict[str, list] = {}
    for plan in plans:
        by_file.setdefault(plan[0][0], []).append(plan)
    for path, reads in by_file.items():
        f, _, identity = _open_checked(path, reads[0][2])
        with f:
            if identity != reads[0][3]:
                raise ModelError(f"{reads[0][2]}: external data file {path} changed while hecc read it")
            for (_, offset, length), tensor, what, _ in reads:
                data = _pread(f.fileno(), length, offset)
                if len(data) != length:
                    raise ModelError(f"{what}: external data file {path} became shorter while hecc read it")
                tensor.raw_data = data
                del tensor.external_data[:]
                tensor.data_location = TensorProto.DEFAULT
