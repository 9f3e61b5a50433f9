"""The client/server split: keys, ciphertext files, and the ``Client`` / ``Server`` steps.

The client generates keys (``secret.key`` stays with it; ``eval.keys`` goes to the server),
encrypts inputs, and decrypts results; the server evaluates with ``eval.keys`` only and refuses a
secret key. Every key and ciphertext file is a zip with ``header.json``: format and version, what
it holds, the fingerprint of the program it belongs to (sha256 over the artifact's final IR and
weights) and the sha256 of every member. So a file for another model, of the wrong kind, truncated
or corrupted is refused with its own message before any byte reaches SEAL.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

from . import __version__
from .errors import CiphertextFileError, InputError, KeyFileError, UserError
from .runtime import stack_inputs, unstack_outputs

KEY_FORMAT, CT_FORMAT, VERSION = "hecc-keys", "hecc-ciphertexts", 1
KINDS = {"secret": KEY_FORMAT, "eval": KEY_FORMAT, "input": CT_FORMAT, "output": CT_FORMAT}
DESCRIBE = {"secret": "the client's secret key file", "eval": "an evaluation-key file",
            "input": "an encrypted-input file", "output": "an encrypted-result file"}


def fingerprint(program) -> str:
    """sha256 over the program that runs (the final IR of the program's layout) and the weights."""
    members = program.artifact.manifest.get("members") or {}
    text = program.artifact.stages.get(program.final_stage, "")
    return hashlib.sha256((text + json.dumps(members, sort_keys=True)).encode()).hexdigest()


def write_container(path: str, kind: str, program, members: dict[str, bytes], extra: dict | None = None):
    header = {"format": KINDS[kind], "format_version": VERSION, "kind": kind, "hecc_version": __version__,
              "program": fingerprint(program), "program_layout": program.layout, **(extra or {}),
              "members": {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}}
    tmp = f"{path}.tmp-{os.getpid()}"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("header.json", json.dumps(header, sort_keys=True))
        for name, data in members.items():
            zf.writestr(name, data)
    os.replace(tmp, path)


def read_container(path: str, kinds: tuple[str, ...], program) -> tuple[dict, dict[str, bytes]]:
    """The header and members of a key or ciphertext file that must be one of ``kinds`` and
    belong to ``program``; every failure is its own typed message."""
    error = KeyFileError if KINDS[kinds[0]] == KEY_FORMAT else CiphertextFileError
    wanted = " or ".join(DESCRIBE[k] for k in kinds)
    if not os.path.isfile(path):
        raise error(f"{path}: no such file (expected {wanted})")
    try:
        with zipfile.ZipFile(path) as zf:
            files = {name: zf.read(name) for name in zf.namelist()}
    except Exception as exc:  # zipfile, zlib and struct errors from damaged files alike
        raise error(f"{path}: not {wanted}, or truncated ({type(exc).__name__})") from None
    try:
        header = json.loads(files.pop("header.json"))
        kind = header["kind"]
    except (KeyError, ValueError, TypeError):
        raise error(f"{path}: not {wanted} (no hecc header)") from None
    if header.get("format") not in (KEY_FORMAT, CT_FORMAT) or kind not in KINDS:
        raise error(f"{path}: not {wanted}")
    if kind not in kinds:
        hint = (" The server must never receive the secret key: give it eval.keys."
                if kind == "secret" and "eval" in kinds else "")
        raise error(f"{path} is {DESCRIBE[kind]}, not {wanted}.{hint}")
    if header.get("format_version") != VERSION:
        raise error(f"{path}: format version {header.get('format_version')} is not supported by hecc "
                    f"{__version__} (it reads version {VERSION})")
    if header.get("program") != fingerprint(program):
        raise error(f"{path} belongs to another model (or another compilation of this one): its "
                    "program fingerprint does not match the artifact. Use the keys and ciphertexts "
                    "made for this artifact, or run keygen/encrypt again")
    expected = header.get("members", {})
    if set(expected) != set(files):
        raise error(f"{path}: members are missing or were added; the file is corrupted")
    for name, digest in expected.items():
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise error(f"{path}: member {name} is corrupted (sha256 mismatch)")
    return header, files


def file_layout(path: str) -> str | None:
    """The layout of the program a key or ciphertext file was made for (None if unreadable:
    reading it properly then gives the precise error)."""
    try:
        with zipfile.ZipFile(path) as zf:
            layout = json.loads(zf.read("header.json")).get("program_layout")
        return layout if isinstance(layout, str) else None
    except Exception:  # any unreadable file: read_container reports it
        return None


def _require_encrypted(program):
    if not program.encrypted:
        why = program.artifact.manifest.get("not_encrypted_because", "")
        raise UserError(f"this artifact has no CKKS program ({why}); it cannot be split into client "
                        "and server steps")


class Client:
    """The data owner's side: keys, encryption, decryption. Holds the secret key."""

    def __init__(self, program, keys_dir: str, progress=None):
        _require_encrypted(program)
        self.program, self.keys_dir, self.progress = program, keys_dir, progress

    def keygen(self, force: bool = False) -> tuple[str, str]:
        from .backends.tenseal import generate_keys
        os.makedirs(self.keys_dir, exist_ok=True)
        secret_path = os.path.join(self.keys_dir, "secret.key")
        eval_path = os.path.join(self.keys_dir, "eval.keys")
        for path in (secret_path, eval_path):
            if os.path.exists(path) and not force:
                raise UserError(f"{path} exists; keys are not overwritten (encrypted data made with "
                                "them could no longer be decrypted). Pass --force to replace them")
        if self.progress:
            self.progress("generating keys")
        keys = generate_keys(self.program.graph)
        write_container(secret_path, "secret", self.program, {k: v for k, v in keys.items()})
        write_container(eval_path, "eval", self.program, {k: v for k, v in keys.items() if k != "secret"})
        return secret_path, eval_path

    def _keys(self) -> dict[str, bytes]:
        return read_container(os.path.join(self.keys_dir, "secret.key"), ("secret",), self.program)[1]

    def encrypt(self, inputs: dict[str, np.ndarray], out_path: str) -> None:
        from .api import warn_outside_calibration
        from .backends.tenseal import encrypt_batches
        stacked, runs = stack_inputs(self.program.graph, inputs)
        warn_outside_calibration(self.program, inputs)
        batches = encrypt_batches(self.program.graph, self._keys(), stacked, self.progress)
        params = self.program.parameters
        per = 1 if params.get("layout") == "slots" else params["poly_modulus_degree"] // 2
        sizes = [min(per, runs - i * per) for i in range(len(batches))]
        members = {f"b{b}/i{i}/{j}": ct for b, batch in enumerate(batches)
                   for i, cts in enumerate(batch) for j, ct in enumerate(cts)}
        write_container(out_path, "input", self.program, members,
                        {"sizes": sizes, "layout": [[len(c) for c in batch] for batch in batches]})

    def decrypt(self, path: str, output_mode: str = "logits", round_digits: int | None = None) -> dict:
        from .backends.tenseal import decrypt_batches
        header, files = read_container(path, ("output",), self.program)
        results = _unpack(header, files)
        if self.progress:
            self.progress(f"decrypting {len(results)} batch(es)")
        outputs = decrypt_batches(self.program.graph, self._keys(), results, header["sizes"])
        named = unstack_outputs(self.program.graph, outputs)
        return shape_outputs(named, output_mode, round_digits)


class Server:
    """The evaluating side: runs the program on ciphertexts with the evaluation keys only."""

    def __init__(self, program, eval_keys_path: str, progress=None):
        _require_encrypted(program)
        self.program, self.progress = program, progress
        _, self.keys = read_container(eval_keys_path, ("eval",), program)
        if "secret" in self.keys:
            raise KeyFileError(f"{eval_keys_path} contains a secret key; the server refuses it")

    def evaluate(self, in_path: str, out_path: str) -> None:
        from .backends.tenseal import evaluate_batches
        header, files = read_container(in_path, ("input",), self.program)
        results = evaluate_batches(self.program.graph, self.keys, _unpack(header, files), self.progress)
        members = {f"b{b}/i{i}/{j}": ct for b, batch in enumerate(results)
                   for i, cts in enumerate(batch) for j, ct in enumerate(cts)}
        write_container(out_path, "output", self.program, members,
                        {"sizes": header["sizes"], "layout": [[len(c) for c in batch] for batch in results]})


def _unpack(header: dict, files: dict[str, bytes]) -> list[list[list[bytes]]]:
    try:
        return [[[files[f"b{b}/i{i}/{j}"] for j in range(count)] for i, count in enumerate(batch)]
                for b, batch in enumerate(header["layout"])]
    except (KeyError, TypeError, ValueError):
        raise CiphertextFileError("the ciphertext file's layout does not match its members") from None


def shape_outputs(named: dict, output_mode: str, round_digits: int | None) -> dict:
    """What the client keeps: every output, or only the class (argmax of the first output);
    values rounded when they are to be shared (decrypted CKKS values leak key information)."""
    if output_mode == "argmax":
        first = next(iter(named.values()))
        return {"class": np.asarray(first).argmax(axis=-1)}
    if output_mode != "logits":
        raise InputError(f"unknown output mode {output_mode!r}; use logits or argmax")
    if round_digits is not None:
        named = {k: np.round(v, round_digits) if np.asarray(v).dtype.kind == "f" else v for k, v in named.items()}
    return named
