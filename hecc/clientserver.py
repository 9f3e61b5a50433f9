"""The client/server split: the keys folder and the ``Client`` / ``Server`` steps.

The client generates a key set (``secret.key`` stays with it; ``eval.keys`` goes to the server),
encrypts inputs and decrypts results; the server evaluates with ``eval.keys`` only and refuses a
secret key. Every key set has a random identity, and every ciphertext file names the key set it
was encrypted or evaluated under: eval and decrypt refuse a file of another key set (decrypting
it would give noise that looks like an answer).

The keys folder is created with mode 0700 and ``secret.key`` with mode 0600, like ssh-keygen;
a secret key readable by others is refused. keygen holds a lock on the folder, so two keygens
into one folder cannot both succeed, and never replaces keys without ``force``. No secret-key
byte is written anywhere but ``secret.key`` (SEAL objects are serialized in memory).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat

import numpy as np

from .backends.common import inputs_per_batch
from .containers import (CT_MEMBER, KEY_MEMBERS, ciphertext_groups, peek_header, read_container,
                         write_container, write_container_to)
from .errors import CiphertextFileError, InputError, KeyFileError, UserError
from .outputs import atomic_outputs
from .runtime import stack_inputs, unstack_outputs

SECRET, EVAL = "secret.key", "eval.keys"


def fingerprint(program) -> str:
    """sha256 over the program that runs (the final IR of the program's layout) and the weights."""
    members = program.artifact.manifest.get("members") or {}
    text = program.artifact.stages.get(program.final_stage, "")
    return hashlib.sha256((text + json.dumps(members, sort_keys=True)).encode()).hexdigest()


def file_layout(path: str) -> str | None:
    """The layout of the program a key or ciphertext file was made for (None if unreadable:
    reading it properly then gives the precise error)."""
    layout = (peek_header(path) or {}).get("program_layout")
    return layout if layout in ("batch", "slots", "packed") else None


def member_limits(program):
    """``limits(kind, name)`` for ``read_container``: the largest serialized SEAL object each
    member of this program's key and ciphertext files can be (SEAL's compression never makes
    one larger than its raw coefficients plus a little)."""
    params = program.parameters
    n, primes = params["poly_modulus_degree"], len(params["coeff_modulus_bits"])
    poly, slack = n * primes * 8, 1 << 16
    switching_key = (primes - 1) * 2 * poly
    keys = {"secret": poly, "public": 2 * poly, "relin": switching_key,
            "galois": len(params.get("galois_steps", [])) * switching_key}

    def limits(kind, name):
        if kind in KEY_MEMBERS:
            return keys[name] + slack if name in KEY_MEMBERS[kind] else None
        return 2 * poly + slack if CT_MEMBER.match(name) else None
    return limits


@contextlib.contextmanager
def _naming(path: str):
    """Key-file errors raised while the backend loads keys, prefixed with the file's path."""
    try:
        yield
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def _require_encrypted(program):
    if not program.encrypted:
        why = program.artifact.manifest.get("not_encrypted_because", "")
        raise UserError(f"this artifact has no CKKS program ({why}); it cannot be split into client "
                        "and server steps")


def _prepare_keys_dir(folder: str) -> None:
    """Create the keys folder with mode 0700, or make sure an existing one is private."""
    if not os.path.exists(folder):
        parent = os.path.dirname(os.path.abspath(folder))
        if not os.path.isdir(parent):
            raise UserError(f"cannot create the keys folder {folder}: {parent} does not exist")
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass  # another process made it just now; checked below like any existing folder
        except OSError as exc:
            raise UserError(f"cannot create the keys folder {folder}: {exc.strerror}") from None
    if not os.path.isdir(folder) or os.path.islink(folder):
        raise UserError(f"{folder} is not a folder; give keygen a folder for the keys (it creates it)")
    mode = stat.S_IMODE(os.stat(folder).st_mode)
    if mode & 0o077:
        others = [f for f in os.listdir(folder) if f not in (SECRET, EVAL) and not f.startswith(".")]
        if others:
            raise UserError(f"the keys folder {folder} is open to other users (mode {mode:o}) and holds "
                            "other files; give keygen a new folder (it creates it with mode 0700)")
        os.chmod(folder, 0o700)


@contextlib.contextmanager
def _locked(folder: str):
    """An exclusive lock on the keys folder for one keygen (released when the process ends,
    however it ends)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another hecc keygen is writing keys into {folder}; wait for it, or use "
                            "another folder") from None
        yield
    finally:
        os.close(fd)


class Client:
    """The data owner's side: keys, encryption, decryption. Holds the secret key."""

    def __init__(self, program, keys_dir: str, progress=None):
        _require_encrypted(program)
        self.program, self.keys_dir, self.progress = program, os.fspath(keys_dir), progress
        self.fingerprint = fingerprint(program)
        self.limits = member_limits(program)

    @property
    def secret_path(self) -> str:
        return os.path.join(self.keys_dir, SECRET)

    def keygen(self, force: bool = False, max_key_bytes: int | None = None) -> tuple[str, str]:
        """A new key set: ``secret.key`` (0600) and ``eval.keys`` in the keys folder (0700)."""
        from .backends.tenseal import generate_keys
        _prepare_keys_dir(self.keys_dir)
        secret_path, eval_path = self.secret_path, os.path.join(self.keys_dir, EVAL)
        with _locked(self.keys_dir):
            for path in (secret_path, eval_path):
                if os.path.lexists(path) and not force:
                    raise UserError(f"{path} exists; keys are not overwritten (encrypted data made with "
                                    "them could no longer be decrypted). Pass --force to replace them")
            if self.progress:
                self.progress("generating keys")
            keys = generate_keys(self.program.graph, max_key_bytes)
            keyset = secrets.token_hex(16)
            common = (self.fingerprint, self.program.layout, keyset)
            # both files whole before either replaces anything; the secret key is renamed last, so
            # even a kill between the two renames leaves the old secret key, which still decrypts
            with atomic_outputs([(eval_path, 0o644), (secret_path, 0o600)]) as (eval_file, secret_file):
                write_container_to(eval_file, "eval", *common, {k: v for k, v in keys.items() if k != "secret"})
                write_container_to(secret_file, "secret", *common,
                                   {k: keys[k] for k in sorted(KEY_MEMBERS["secret"])})
        return secret_path, eval_path

    def keyset(self) -> str:
        """The identity of the key set in the keys folder (its secret key checked)."""
        return self._keys()[0]

    def infer(self, inputs, server: str, output_mode: str = "logits", round_digits: int | None = None,
              deadline: float = 600.0, allow_out_of_range: bool = False) -> dict:
        """Evaluate ``inputs`` (an array for a one-input model, or a dict by input name) on the
        ``hecc serve`` service at ``server`` (http://HOST:PORT) and decrypt the result here: keys
        are made in the keys folder if it has none and registered with the service once; only
        evaluation keys and ciphertexts cross the network. Retries while the service restarts,
        for up to ``deadline`` seconds."""
        from .api import named_inputs
        from .service.client import infer
        return infer(self, named_inputs(self.program, inputs), server, output_mode, round_digits, deadline,
                     allow_out_of_range)

    def _keys(self) -> tuple[str, dict[str, bytes]]:
        """The key set's identity and the secret (and public) key."""
        path = self.secret_path
        if os.path.isdir(self.keys_dir) and os.path.isfile(path):
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                raise KeyFileError(f"{path} is readable by other users (mode {mode:o}); a secret key "
                                   f"must be private: run `chmod 600 {path}`")
        elif os.path.exists(self.keys_dir) and not os.path.isdir(self.keys_dir):
            raise KeyFileError(f"{self.keys_dir} is a file; --keys takes the keys folder that keygen made")
        header, files = read_container(path, ("secret",), self.fingerprint, self.limits,
                                       layout=self.program.layout)
        return header["keyset"], files

    def encrypt(self, inputs: dict[str, np.ndarray], out_path: str, allow_out_of_range: bool = False) -> None:
        """Encrypt ``inputs`` into ``out_path``. Inputs outside the range seen at calibration are
        refused unless ``allow_out_of_range``: the server cannot check encrypted values, and the
        program may silently answer wrongly for them."""
        from .api import outside_calibration, warn_outside_calibration
        from .backends.tenseal import encrypt_batches
        stacked, runs = stack_inputs(self.program.graph, inputs)
        if allow_out_of_range:
            warn_outside_calibration(self.program, inputs)
        else:
            found = outside_calibration(self.program, inputs)
            if found:
                raise InputError(f"{'; '.join(found)}: the server cannot check encrypted values, and the "
                                 "program may answer wrongly for them without a sign. Recompile with "
                                 "--calibration data that covers such inputs, or pass "
                                 "--allow-out-of-range to encrypt them anyway")
        keyset, keys = self._keys()
        with _naming(self.secret_path):
            batches = encrypt_batches(self.program.graph, keys, stacked, self.progress)
        per = inputs_per_batch(self.program.graph)
        sizes = [min(per, runs - i * per) for i in range(len(batches))]
        write_container(out_path, "input", self.fingerprint, self.program.layout, keyset, _members(batches),
                        {"sizes": sizes, "layout": [[len(c) for c in batch] for batch in batches]})

    def decrypt(self, path: str, output_mode: str = "logits", round_digits: int | None = None) -> dict:
        from .backends.tenseal import decrypt_batches, result_groups
        if output_mode not in ("logits", "argmax"):
            raise InputError(f"unknown output mode {output_mode!r}; use logits or argmax")
        keyset, keys = self._keys()
        header, files = read_container(path, ("output",), self.fingerprint, self.limits, keyset,
                                       self.program.layout)
        results = ciphertext_groups(header, files, result_groups(self.program.graph),
                                    inputs_per_batch(self.program.graph), path)
        if self.progress:
            self.progress(f"decrypting {len(results)} batch(es)")
        try:
            with _naming(self.secret_path):
                outputs = decrypt_batches(self.program.graph, keys, results, header["sizes"])
        except CiphertextFileError as exc:
            raise CiphertextFileError(f"{path}: {exc}") from None
        named = unstack_outputs(self.program.graph, outputs)
        return shape_outputs(named, output_mode, round_digits)


class Server:
    """The evaluating side: runs the program on ciphertexts with the evaluation keys only, on
    this machine (``workers`` processes) or on the Ray cluster at ``cluster`` (``hecc[ray]``).
    ``evaluate`` can be called again for more files of the same key set (a service does)."""

    def __init__(self, program, eval_keys_path: str, progress=None, cluster: str | None = None,
                 workers: int | None = None):
        from .executors import executor_for
        _require_encrypted(program)
        self.executor = executor_for(workers, cluster)
        self.program, self.progress = program, progress
        self.graph = program.graph
        self.eval_keys_path = os.fspath(eval_keys_path)
        self.fingerprint = fingerprint(program)
        self.limits = member_limits(program)
        header, self.keys = read_container(os.fspath(eval_keys_path), ("eval",), self.fingerprint,
                                           self.limits, layout=program.layout)
        self.keyset = header["keyset"]

    def evaluate(self, in_path: str, out_path: str) -> None:
        from .backends.tenseal import input_groups
        header, files = read_container(in_path, ("input",), self.fingerprint, self.limits, self.keyset,
                                       self.program.layout)
        batches = ciphertext_groups(header, files, input_groups(self.graph), inputs_per_batch(self.graph), in_path)
        try:
            with _naming(self.eval_keys_path):
                results = self.executor.evaluate(self.graph, self.keys, batches, self.progress)
        except CiphertextFileError as exc:
            raise CiphertextFileError(f"{in_path}: {exc}") from None
        write_container(out_path, "output", self.fingerprint, self.program.layout, self.keyset,
                        _members(results),
                        {"sizes": header["sizes"], "layout": [[len(c) for c in batch] for batch in results]})


def _members(batches) -> dict[str, bytes]:
    return {f"b{b}/i{i}/{j}": ct for b, batch in enumerate(batches)
            for i, cts in enumerate(batch) for j, ct in enumerate(cts)}


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
