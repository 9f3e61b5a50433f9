"""Key and ciphertext files: one zip format, read as hostile input.

A file is a zip of stored (uncompressed) members: ``header.json`` and the SEAL objects it lists.
The header holds the format and its version, the kind (``secret``, ``eval``, ``input``,
``output``), the fingerprint of the program the file belongs to (sha256 over the artifact's final
IR and weights), the identity of the key set (a random id keygen gives each key set), the sha256
of every member and, for ciphertexts, how they are grouped (``layout``) and how many inputs each
batch holds (``sizes``). The zip comment holds the header's own sha256.

Reading checks, in order, before inflating or allocating anything the file declares: the file
size; every member stored, not compressed (so no member can expand: memory is bounded by the
file's size); the member names against the header; each declared size against the largest a
member of that kind can have for this program (``limits``); the header's hash and its schema;
the kind, version, program and key set; and each member's sha256 while it is read. Every failure
is a ``KeyFileError`` or ``CiphertextFileError`` saying which check failed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile

from . import __version__
from .errors import CiphertextFileError, KeyFileError
from .outputs import atomic_output

KEY_FORMAT, CT_FORMAT, VERSION = "hecc-keys", "hecc-ciphertexts", 2
KINDS = {"secret": KEY_FORMAT, "eval": KEY_FORMAT, "input": CT_FORMAT, "output": CT_FORMAT}
DESCRIBE = {"secret": "the client's secret key file", "eval": "an evaluation-key file",
            "input": "an encrypted-input file", "output": "an encrypted-result file"}
KEY_MEMBERS = {"secret": {"secret", "public"}, "eval": {"public", "relin", "galois"}}
CT_MEMBER = re.compile(r"b(\d{1,9})/i(\d{1,4})/(\d{1,9})\Z")
HEX = re.compile(r"[0-9a-f]{64}\Z")
KEYSET = re.compile(r"[0-9a-f]{32}\Z")
COMMENT = b"hecc sha256:"
HEADER_BYTES_PER_MEMBER, HEADER_BYTES_BASE = 512, 1 << 16


def _comment(header: bytes) -> bytes:
    return COMMENT + hashlib.sha256(header).hexdigest().encode()


def write_container(path: str, kind: str, fingerprint: str, layout: str, keyset: str,
                    members: dict[str, bytes], extra: dict | None = None, mode: int = 0o644) -> None:
    """Write a key or ciphertext file atomically (``mode``: 0o600 for the secret key)."""
    with atomic_output(path, mode) as f:
        write_container_to(f, kind, fingerprint, layout, keyset, members, extra)


def write_container_to(f, kind: str, fingerprint: str, layout: str, keyset: str,
                       members: dict[str, bytes], extra: dict | None = None) -> None:
    """The container into the binary file ``f``."""
    header = json.dumps({"format": KINDS[kind], "format_version": VERSION, "kind": kind,
                         "hecc_version": __version__, "program": fingerprint, "program_layout": layout,
                         "keyset": keyset, **(extra or {}),
                         "members": {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}},
                        sort_keys=True).encode()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        zf.comment = _comment(header)
        zf.writestr("header.json", header)
        for name, data in members.items():
            zf.writestr(name, data)


def unsafe_members(infos: list[zipfile.ZipInfo]) -> str | None:
    """Why members of a zip hecc wrote cannot look like these (None: all stored, none encrypted):
    reading them could expand without bound or fail inside zipfile."""
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
        return "it holds compressed members, which hecc never writes (a compressed member could expand without bound)"
    if any(i.flag_bits & 0x1 for i in infos):
        return "it holds password-protected members, which hecc never writes"
    return None


def peek_header(path: str) -> dict | None:
    """The header of a key or ciphertext file without any check (to choose a layout or a
    message); None when there is none. Reads at most a bounded header."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("header.json")
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > HEADER_BYTES_BASE * 16:
                return None
            header = json.loads(zf.read(info))
        return header if isinstance(header, dict) else None
    except Exception:  # unreadable, not a zip, no header: nothing to peek at
        return None


def read_container(path: str, kinds: tuple[str, ...], fingerprint: str, limits,
                   keyset: str | None = None, layout: str | None = None) -> tuple[dict, dict[str, bytes]]:
    """The header and members of a key or ciphertext file that must be one of ``kinds``, belong
    to the program with ``fingerprint`` (of the ``layout`` program, named in messages) and (if
    given) to key set ``keyset``. ``limits(kind, name)`` is the largest a member may be (None: no
    such member)."""
    error = KeyFileError if KINDS[kinds[0]] == KEY_FORMAT else CiphertextFileError
    wanted = " or ".join(DESCRIBE[k] for k in kinds)
    if not os.path.exists(path):
        raise error(f"{path}: no such file (expected {wanted})")
    if not os.path.isfile(path):
        raise error(f"{path} is not a file (expected {wanted})")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            comment = zf.comment
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise error(f"{path}: a member appears twice; the file was not written by hecc")
            unsafe = unsafe_members(infos)
            if unsafe:
                raise error(f"{path}: {unsafe}; the file is not hecc's")
            by_name = {i.filename: i for i in infos}
            head = by_name.get("header.json")
            if head is None:
                raise error(f"{path}: not {wanted} (no hecc header)")
            if head.file_size > HEADER_BYTES_BASE + HEADER_BYTES_PER_MEMBER * len(infos):
                raise error(f"{path}: its header is {head.file_size} bytes, too large for "
                            f"{len(infos)} members")
            raw = zf.read(head)
            header = _parse_header(path, raw, comment, error, wanted)
            kind = header["kind"]
            if kind not in kinds:
                hint = (" The server must never receive the secret key: give it eval.keys."
                        if kind == "secret" and "eval" in kinds else "")
                raise error(f"{path} is {DESCRIBE[kind]}, not {wanted}.{hint}")
            if header["program"] != fingerprint and layout and header["program_layout"] != layout:
                raise error(f"{path} was made for the {header['program_layout']} layout, but this "
                            f"command uses the {layout} layout: pass --layout {header['program_layout']}, "
                            f"or use keys and ciphertexts made for the {layout} layout")
            if header["program"] != fingerprint:
                raise error(f"{path} belongs to another model (or another compilation of this one, or "
                            "the other layout): its program fingerprint does not match the artifact. "
                            "Use the keys and ciphertexts made for this artifact, or run "
                            "keygen/encrypt again")
            if keyset is not None and header["keyset"] != keyset:
                raise error(f"{path} was made under key set {header['keyset']}, but the keys given "
                            f"are key set {keyset}: it can only be used with the keys it was "
                            "encrypted or evaluated under")
            expected = header["members"]
            if set(expected) != set(by_name) - {"header.json"}:
                raise error(f"{path}: members are missing or were added; the file is corrupted")
            for name, info in by_name.items():
                if name == "header.json":
                    continue
                bound = limits(kind, name)
                if bound is None:
                    raise error(f"{path}: unexpected member {name!r} in {DESCRIBE[kind]}")
                if info.file_size > bound:
                    raise error(f"{path}: member {name} declares {info.file_size} bytes; this "
                                f"program's {DESCRIBE[kind]} holds at most {bound}")
            files = {}
            for name, digest in expected.items():
                files[name] = _read_hashed(zf, by_name[name], digest, path, error)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, KeyError,
            NotImplementedError, RuntimeError) as exc:
        raise error(f"{path}: not {wanted}, or truncated ({type(exc).__name__})") from None
    return header, files


def _read_hashed(zf: zipfile.ZipFile, info: zipfile.ZipInfo, digest: str, path: str, error) -> bytes:
    sha, parts, left = hashlib.sha256(), [], info.file_size
    with zf.open(info) as member:
        while left:
            chunk = member.read(min(left, 1 << 20))
            if not chunk:
                break
            sha.update(chunk)
            parts.append(chunk)
            left -= len(chunk)
    if left or sha.hexdigest() != digest:
        raise error(f"{path}: member {info.filename} is corrupted (sha256 mismatch)")
    return b"".join(parts)


def _parse_header(path: str, raw: bytes, comment: bytes, error, wanted: str) -> dict:
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise error(f"{path}: not {wanted} (its header is not JSON)") from None
    if not isinstance(header, dict) or not isinstance(header.get("format"), str) or \
            header.get("format") not in (KEY_FORMAT, CT_FORMAT):
        raise error(f"{path}: not {wanted} (no hecc header)")
    if header.get("format_version") != VERSION:
        raise error(f"{path}: format version {header.get('format_version')!r} is not supported by hecc "
                    f"{__version__} (it reads version {VERSION}); make the file again with this hecc")
    if comment != _comment(raw):
        raise error(f"{path}: its header does not match the digest stored with it; the file is "
                    "corrupted or was edited")
    kind = header.get("kind")
    checks = [(isinstance(kind, str) and kind in KINDS and KINDS[kind] == header["format"], "kind"),
              (isinstance(header.get("program"), str) and HEX.match(header["program"]), "program"),
              (header.get("program_layout") in ("batch", "slots", "packed"), "program_layout"),
              (isinstance(header.get("keyset"), str) and KEYSET.match(header["keyset"]), "keyset"),
              (isinstance(header.get("members"), dict) and all(
                  isinstance(k, str) and isinstance(v, str) and HEX.match(v)
                  for k, v in header["members"].items()), "members")]
    if kind in ("input", "output"):
        layout, sizes = header.get("layout"), header.get("sizes")
        checks += [(isinstance(layout, list) and layout and all(
                       isinstance(b, list) and b and all(_count(c) for c in b) for b in layout), "layout"),
                   (isinstance(sizes, list) and isinstance(layout, list) and len(sizes) == len(layout)
                    and all(_count(s) for s in sizes), "sizes")]
    bad = [name for ok, name in checks if not ok]
    if bad:
        raise error(f"{path}: its header has an invalid {', '.join(bad)}; the file was not written by "
                    "hecc or was edited")
    return header


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 < x < 1 << 31


def ciphertext_groups(header: dict, files: dict[str, bytes], groups: list[int], per_batch: int,
                      path: str) -> list[list[list[bytes]]]:
    """Members by batch, group (an input, or an output's decryption point) and ciphertext,
    checked against what the program has: ``groups`` ciphertexts per group, at most
    ``per_batch`` inputs in a batch."""
    layout = header["layout"]
    for number, (batch, size) in enumerate(zip(layout, header["sizes"])):
        if batch != groups:
            raise CiphertextFileError(f"{path}: batch {number} holds ciphertext groups {batch}; this "
                                      f"program's have {groups}")
        if size > per_batch:
            raise CiphertextFileError(f"{path}: batch {number} claims {size} inputs; a batch of this "
                                      f"program holds at most {per_batch}")
    try:
        return [[[files[f"b{b}/i{i}/{j}"] for j in range(count)] for i, count in enumerate(batch)]
                for b, batch in enumerate(layout)]
    except KeyError:
        raise CiphertextFileError(f"{path}: the ciphertext file's layout does not match its "
                                  "members") from None
