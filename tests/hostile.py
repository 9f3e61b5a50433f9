"""Building hostile hecc files for the fuzz tests: zips with any members, artifacts and key or
ciphertext files whose digests are recomputed after an edit (so the edit reaches the checks behind
the digests), SEAL objects with any header and body, and .npy members with any header."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import warnings
import zipfile
import zlib

import numpy as np
import zstandard

COMMENT = b"hecc sha256:"
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression, reserved, size
SEAL_MAGIC = 0xA15E
CT_META = struct.Struct("<4QBQQQd")  # parms_id, ntt form, components, ring degree, primes, scale
DEEP = "@@deep@@"  # a JSON value that becomes a deeply nested list in the text
BIGNUM = "@@bignum@@"  # a JSON value that becomes a 5000-digit number in the text


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- zips ---------------------------------------------------------------------------------------
def read_zip(data: bytes) -> dict[str, bytes]:
    """The members of a zip, in order."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def write_zip(members, comment: bytes = b"", compression: int = zipfile.ZIP_STORED,
              compressions: dict | None = None) -> bytes:
    """A zip of ``members`` ((name, bytes) pairs or a dict; names may repeat), each member
    compressed with ``compressions.get(name, compression)``."""
    items = members.items() if isinstance(members, dict) else members
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names, long comments
        with zipfile.ZipFile(buf, "w") as zf:
            zf.comment = comment[:65535]
            for name, data in items:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = (compressions or {}).get(name, compression)
                zf.writestr(info, data)
    return buf.getvalue()


def json_text(obj, sort_keys: bool = True, indent=None, deep: int = 0) -> bytes:
    """JSON with the DEEP marker replaced by ``deep`` nested lists and the BIGNUM marker by a
    5000-digit number (NaN and infinities as Python writes them)."""
    text = json.dumps(obj, sort_keys=sort_keys, indent=indent)
    if deep:
        text = text.replace(json.dumps(DEEP), "[" * deep + "]" * deep)
    text = text.replace(json.dumps(BIGNUM), "9" * 5000)
    return text.encode()


def _pairs(members) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in (members.items() if isinstance(members, dict) else members)]


def fix_digests(doc, members) -> None:
    """Set the sha256 of every member ``doc["members"]`` lists and the zip holds (``members``: a
    dict or (name, bytes) pairs; of a repeated name, the first)."""
    members = dict(reversed(_pairs(members)))
    if isinstance(doc, dict) and isinstance(doc.get("members"), dict):
        for name in list(doc["members"]):
            if name in members:
                doc["members"][name] = sha256(members[name])


def artifact_bytes(manifest, members, fix: bool = True, deep: int = 0,
                   compressions: dict | None = None) -> bytes:
    """A .hecc file: ``manifest`` (a dict, or its raw bytes) with the member digests recomputed
    (``fix``), the members and the manifest's digest in the zip comment, as hecc writes them."""
    if not isinstance(manifest, (bytes, bytearray)):
        if fix:
            fix_digests(manifest, members)
        manifest = json_text(manifest, indent=2, deep=deep)
    return write_zip([("manifest.json", bytes(manifest)), *_pairs(members)],
                     COMMENT + sha256(manifest).encode(), compressions=compressions)


def container_bytes(header, members, fix: bool = True, deep: int = 0,
                    compressions: dict | None = None) -> bytes:
    """A key or ciphertext file: ``header`` (a dict, or its raw bytes) with the member digests
    recomputed (``fix``), the members and the header's digest in the zip comment."""
    if not isinstance(header, (bytes, bytearray)):
        if fix:
            fix_digests(header, members)
        header = json_text(header, deep=deep)
    return write_zip([("header.json", bytes(header)), *_pairs(members)],
                     COMMENT + sha256(header).encode(), compressions=compressions)


# --- SEAL objects -------------------------------------------------------------------------------
def seal_fields(data: bytes) -> list:
    return list(SEAL_HEADER.unpack_from(data))


def seal_body(data: bytes) -> bytes:
    """The uncompressed body of a well-formed SEAL object."""
    mode = data[6]
    payload = data[SEAL_HEADER.size:]
    if mode == 0:
        return payload
    if mode == 1:
        return zlib.decompress(payload)
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload), read_across_frames=True) as reader:
        return reader.read()


def seal_object(body: bytes, mode: int = 0, major: int = 4, minor: int = 3, size_delta: int = 0) -> bytes:
    """A SEAL object of ``body`` stored uncompressed (0), zlib- (1) or zstd-compressed (2), its
    header's total size right (plus ``size_delta``)."""
    if mode == 1:
        payload = zlib.compress(body, 1)
    elif mode == 2:
        payload = zstandard.ZstdCompressor(level=1).compress(body)
    else:
        payload = body
    size = SEAL_HEADER.size + len(payload) + size_delta
    return SEAL_HEADER.pack(SEAL_MAGIC, SEAL_HEADER.size, major, minor, mode, 0, size % (1 << 64)) + payload


def set_seal_field(data: bytes, index: int, value: int) -> bytes:
    """``data`` with field ``index`` of its 16-byte SEAL header set to ``value`` (wrapped to the
    field's width)."""
    fields = seal_fields(data)
    widths = [16, 8, 8, 8, 8, 16, 64]
    fields[index] = value % (1 << widths[index])
    return SEAL_HEADER.pack(*fields) + data[SEAL_HEADER.size:]


def ct_meta(body: bytes) -> list:
    return list(CT_META.unpack_from(body))


def set_ct_meta(body: bytes, **fields) -> bytes:
    """A ciphertext body with metadata fields replaced: parms_id (4 ints), ntt, size, degree,
    primes, scale."""
    meta = ct_meta(body)
    if "parms_id" in fields:
        meta[0:4] = [p % (1 << 64) for p in fields.pop("parms_id")]
    for i, name in enumerate(("ntt", "size", "degree", "primes"), start=4):
        if name in fields:
            meta[i] = fields.pop(name) % (1 << (8 if name == "ntt" else 64))
    if "scale" in fields:
        meta[8] = fields.pop("scale")
    assert not fields, fields
    return CT_META.pack(*meta) + body[CT_META.size:]


# --- .npy members -------------------------------------------------------------------------------
def npy_bytes(array: np.ndarray, version=(1, 0)) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=True)
    return buf.getvalue()


def npy_raw(header: str, payload: bytes, version=(1, 0)) -> bytes:
    """An .npy member with any header text (padded as numpy pads it) and payload."""
    text = header.encode("latin1")
    if version[0] == 1:
        length = struct.Struct("<H")
        pad = -(10 + len(text) + 1) % 64
    else:
        length = struct.Struct("<I")
        pad = -(12 + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + length.pack(len(text) % (1 << (8 * length.size))) + text + payload
