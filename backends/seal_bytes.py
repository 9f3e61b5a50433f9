"""SEAL objects to and from bytes, in memory only, and checked before SEAL reads them.

``tenseal.sealapi`` saves and loads SEAL objects through a file path only. Going through a file
would put key material on a disk (a killed process leaves it behind, loadable as a secret key), so
``to_bytes``/``from_bytes`` use an anonymous in-memory file (``memfd_create``): it has no name in
any folder and disappears with the process, however the process ends.

Bytes from outside (keys and ciphertexts) are hostile. ``inflate`` checks SEAL's header (magic,
declared size), decompresses SEAL's zstd or zlib body with a bound on its size, so a compression
bomb costs nothing, and returns the object uncompressed: SEAL then reads exactly the bytes that
were checked. ``ciphertext_meta`` reads a ciphertext's parameter id, component count, ring degree,
prime count and scale from those bytes, so a ciphertext at the wrong level, with three
components or at another scale is refused before SEAL computes on it. This module does not
import tenseal: it serves every SEAL-based backend.
"""
from __future__ import annotations

import io
import os
import struct
import zlib

from ..errors import ResourceError

MAGIC = 0xA15E
HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version major, minor, compression, reserved, size
COMPRESSION = {0: "none", 1: "zlib", 2: "zstd"}
# a ciphertext's members after the header: parms_id (4 words), NTT form, component count, ring
# degree, prime count, scale; then its coefficient array (SEAL 4)
CIPHERTEXT = struct.Struct("<4QBQQQd")


class SealBytesError(ValueError):
    """Bytes that are not a well-formed SEAL object within the allowed size."""


def _memfd(name: str) -> int:
    if not hasattr(os, "memfd_create"):  # pragma: no cover - Linux has it since 3.17
        raise ResourceError("this platform has no anonymous in-memory files (memfd_create); hecc keeps "
                      "SEAL's key material off the disk with them")
    return os.memfd_create(name, os.MFD_CLOEXEC)


def to_bytes(obj) -> bytes:
    """``obj.save`` into memory (a SEAL object or a serializable one)."""
    fd = _memfd("hecc-seal")
    try:
        obj.save(f"/proc/self/fd/{fd}")
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    except (OSError, RuntimeError) as exc:
        raise _resource(exc) from None
    finally:
        os.close(fd)


def from_bytes(obj, context, data: bytes):
    """``obj.load(context, ...)`` from memory; returns ``obj``."""
    fd = _memfd("hecc-seal")
    try:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            raise _resource(exc) from None
        obj.load(context, f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return obj


def _resource(exc: Exception) -> ResourceError:
    return ResourceError(f"cannot hold SEAL's data in an in-memory file ({getattr(exc, 'strerror', None) or exc}); "
                         "if a file-size limit is set (ulimit -f), raise it")


def inflate(data: bytes, max_body: int) -> bytes:
    """The SEAL object ``data`` with its body decompressed (at most ``max_body`` bytes) and a
    header saying so; raises SealBytesError for anything else."""
    if len(data) < HEADER.size:
        raise SealBytesError(f"{len(data)} bytes are too few for a SEAL object")
    magic, header_size, major, minor, mode, reserved, size = HEADER.unpack_from(data)
    if magic != MAGIC or header_size != HEADER.size or reserved != 0:
        raise SealBytesError("not a SEAL object (bad magic or header)")
    if size != len(data):
        raise SealBytesError(f"SEAL header declares {size} bytes but {len(data)} are present")
    payload = memoryview(data)[HEADER.size:]
    if mode == 0:
        if len(payload) > max_body:
            raise SealBytesError(f"{len(payload)} bytes where at most {max_body} are possible")
        return data
    if mode == 1:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(payload, max_body + 1)
        except zlib.error as exc:
            raise SealBytesError(f"damaged zlib data ({exc})") from None
        if len(body) > max_body or inflater.unconsumed_tail:
            raise SealBytesError(f"decompresses to more than the {max_body} bytes possible")
    elif mode == 2:
        import zstandard
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload),
                                                             read_across_frames=True) as reader:
                body = reader.read(max_body + 1)
        except zstandard.ZstdError as exc:
            raise SealBytesError(f"damaged zstd data ({exc})") from None
        if len(body) > max_body:
            raise SealBytesError(f"decompresses to more than the {max_body} bytes possible")
    else:
        raise SealBytesError(f"unknown SEAL compression mode {mode}")
    return HEADER.pack(MAGIC, HEADER.size, major, minor, 0, 0, HEADER.size + len(body)) + body


def ciphertext_meta(blob: bytes) -> dict:
    """Parameter id, NTT form, component count, ring degree, prime count and scale of an
    uncompressed (``inflate``d) ciphertext."""
    if len(blob) < HEADER.size + CIPHERTEXT.size:
        raise SealBytesError("too short for a ciphertext")
    *parms_id, ntt, size, degree, primes, scale = CIPHERTEXT.unpack_from(blob, HEADER.size)
    return {"parms_id": tuple(parms_id), "ntt": ntt, "size": size, "degree": degree, "primes": primes,
            "scale": scale}
