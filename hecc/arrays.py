"""Numpy files from outside (inputs, calibration data), read without trusting them.

An ``.npy`` header declares a dtype and a shape, and ``np.load`` allocates what it declares: a
100-byte file declaring shape (10**12,) asks for 8 TB. ``load_npy`` reads the header first
(``numpy.lib.format``) and refuses, with an ``InputError`` that says what is wrong and what to do:
a missing file, a directory, a file that is not ``.npy``, a dtype that is not numeric (pickled
objects above all, also strings and records), a shape with more than ``MAX_ARRAY_ELEMENTS``
elements, and a data size that differs from shape x item size. Only then does ``np.load`` read it.
``load_named_arrays`` does the same for each member of an ``.npz`` archive, checking the member's
declared size in the zip directory before reading (or decompressing) any of it.
"""
from __future__ import annotations

import math
import os
import stat
import zipfile

import numpy as np
from numpy.lib import format as npy_format

from .errors import InputError

MAX_ARRAY_ELEMENTS = 2**28  # one array, and all members of an .npz together
MAX_ARRAY_BYTES = 2**31  # one array's data (2**28 float64)
NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex
_MAX_HEADER = 10000  # numpy's own bound on the header length
_SAVE_HINT = "save it again with numpy.save (numeric dtype, allow_pickle=False)"


def _check_path(path: str) -> int:
    """The size of ``path``, which must be an existing regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path} is a directory; give the path of a .npy file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file; give the path of a .npy file")
    return info.st_size


def _read_header(f, label: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) from an open .npy stream, every field checked."""
    try:
        version = npy_format.read_magic(f)
    except Exception:  # short file, wrong magic: numpy raises ValueError or EOFError
        raise InputError(f"{label} is not a .npy file (it does not start with numpy's header); "
                         f"{_SAVE_HINT}") from None
    if version not in ((1, 0), (2, 0)):
        raise InputError(f"{label}: .npy format version {version[0]}.{version[1]} is not supported; "
                         f"{_SAVE_HINT}")
    # numpy reads the header before it checks its declared length against its bound
    start, width = f.tell(), 2 if version == (1, 0) else 4
    length = int.from_bytes(f.read(width).ljust(width, b"\xff"), "little")
    if length > _MAX_HEADER:
        raise InputError(f"{label}: the .npy header declares a length of {length:,} bytes (numpy's own "
                         f"bound is {_MAX_HEADER:,}), or the file is truncated; {_SAVE_HINT}")
    f.seek(start)
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    try:
        shape, _, dtype = read(f, max_header_size=_MAX_HEADER)
    except Exception as exc:  # any malformed header (numpy raises several types)
        raise InputError(f"{label}: the .npy header is malformed ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); {_SAVE_HINT}") from None
    if dtype.hasobject:
        raise InputError(f"{label} holds Python objects (a pickled object array), which hecc never "
                         f"loads: they can run code; {_SAVE_HINT}")
    if dtype.kind not in NUMERIC_KINDS or dtype.names is not None or dtype.subdtype is not None:
        raise InputError(f"{label} has dtype {dtype}, not numbers; {_SAVE_HINT}")
    if any(d < 0 for d in shape):
        raise InputError(f"{label}: the header declares a negative dimension in shape {shape}; {_SAVE_HINT}")
    count = math.prod(shape)
    if count > MAX_ARRAY_ELEMENTS or count * dtype.itemsize > MAX_ARRAY_BYTES:
        raise InputError(f"{label}: the header declares shape {shape} of {dtype} = {count:,} elements, "
                         f"more than hecc's bound of MAX_ARRAY_ELEMENTS = 2**28 = {MAX_ARRAY_ELEMENTS:,} "
                         f"(or of MAX_ARRAY_BYTES = 2**31 bytes); give smaller arrays (split the "
                         "inputs into several runs)")
    return shape, dtype, f.tell()


def _check_data_size(label: str, shape, dtype: np.dtype, have: int) -> None:
    need = math.prod(shape) * dtype.itemsize
    if have != need:
        raise InputError(f"{label}: the header declares shape {shape} of {dtype} ({need:,} bytes of "
                         f"data), but the file holds {have:,}: it is truncated or corrupted; "
                         f"{_SAVE_HINT}")


def load_npy(path: str) -> np.ndarray:
    """The array in the ``.npy`` file ``path``, after the checks in the module docstring."""
    path = os.fspath(path)
    size = _check_path(path)
    try:
        with open(path, "rb") as f:
            if zipfile.is_zipfile(f):
                raise InputError(f"{path} is an .npz archive; give a .npy file (numpy.save)")
            f.seek(0)
            shape, dtype, offset = _read_header(f, path)
            _check_data_size(path, shape, dtype, size - offset)
            f.seek(0)
            array = np.load(f, allow_pickle=False)
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, EOFError) as exc:  # changed while being read
        raise InputError(f"{path}: not a readable .npy file ({exc}); {_SAVE_HINT}") from None
    if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != dtype:
        raise InputError(f"{path}: changed while hecc read it")
    return array


def load_named_arrays(source, label: str | None = None, stored_only: bool = False) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` archive ``source`` (a path or a binary file) by name
    (``numpy.savez`` member names without ``.npy``); each member checked like ``load_npy`` before
    it is read. ``stored_only`` refuses compressed members (hecc's own archives never have
    them, so reading one can take no more memory than its size)."""
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        _check_path(source)
    path = label or source
    arrays: dict[str, np.ndarray] = {}
    total = 0
    try:
        with zipfile.ZipFile(source) as zf:
            members = zf.infolist()
            names = [m.filename for m in members]
            if len(set(names)) != len(names):
                raise InputError(f"{path}: the archive has several members of the same name; "
                                 "save it again with numpy.savez")
            for info in members:
                label = f"{path}: member {info.filename!r}"
                if not info.filename.endswith(".npy") or info.is_dir():
                    raise InputError(f"{label} is not an array (.npy); save the archive with "
                                     "numpy.savez")
                if stored_only and info.compress_type != zipfile.ZIP_STORED:
                    raise InputError(f"{label} is compressed, which this archive's writer never does")
                if info.file_size > MAX_ARRAY_BYTES + _MAX_HEADER + 16:
                    raise InputError(f"{label} declares {info.file_size:,} bytes uncompressed, more "
                                     "than an array within MAX_ARRAY_BYTES = 2**31 bytes can take "
                                     "(a compression bomb, or arrays too large); give smaller arrays")
                with zf.open(info) as member:
                    shape, dtype, offset = _read_header(member, label)
                _check_data_size(label, shape, dtype, info.file_size - offset)
                total += math.prod(shape)
                if total > MAX_ARRAY_ELEMENTS:
                    raise InputError(f"{path}: its arrays hold more than {MAX_ARRAY_ELEMENTS:,} "
                                     "elements together (MAX_ARRAY_ELEMENTS = 2**28); give smaller "
                                     "arrays")
                with zf.open(info) as member:
                    arrays[info.filename[:-4]] = npy_format.read_array(member, allow_pickle=False)
    except InputError:
        raise
    except Exception as exc:  # zipfile, zlib, lzma, bz2 and numpy errors from damaged archives alike
        raise InputError(f"{path}: not a readable .npz archive ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); save it again with numpy.savez") from None
    return arrays
