"""The ``.hecc`` artifact: one zip holding a compiled program.

Members, all stored uncompressed: ``manifest.json`` (format and hecc version, inputs and
outputs, stage list, sha256 of every other member; its own sha256 is the zip comment),
``ir/<stage>.hir`` for each stage in compile order, and ``weights.npz`` with the constants the IR
references. No key is stored. An artifact may come from someone else (a client gets it from the
server), so loading treats it as hostile: see ``load``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .containers import unsafe_members
from .errors import ArtifactError, ParseError, UserError, VerifyError
from .ir import Graph, parse, verify
from .manifest import FINAL_STAGES, check_program, check_tensor_stage, manifest_problem

FORMAT = "hecc-artifact"
FORMAT_VERSION = 3  # 3: equal weight arrays are stored once (the manifest's "weight_aliases")
READABLE_VERSIONS = (2, 3)
COMMENT = b"hecc sha256:"
MAX_MANIFEST_BYTES = 16 << 20


@dataclass
class Artifact:
    stages: dict[str, str]
    constants: dict[str, np.ndarray]
    manifest: dict
    _graphs: dict = field(default_factory=dict, repr=False)

    @property
    def final_stage(self) -> str:
        return list(self.stages)[-1]

    def graph(self, stage: str | None = None) -> Graph:
        """The parsed, verified IR of ``stage`` (default: the final one); parsed once."""
        stage = stage or self.final_stage
        if stage not in self._graphs:
            graph = parse(self.stages[stage], dict(self.constants), source=f"ir/{stage}.hir")
            verify(graph)
            self._graphs[stage] = graph
        return self._graphs[stage]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build(stages: dict[str, str], final: Graph, extra: dict | None = None) -> Artifact:
    from .runtime import input_specs, output_specs
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "hecc_version": __version__,
        "inputs": [{"name": n, "shape": list(s)} for n, s in input_specs(final)],
        "outputs": [{"name": n, "shape": list(s)} for n, s in output_specs(final)],
        "stages": list(stages),
        **(extra or {}),
    }
    return Artifact(dict(stages), dict(final.constants), manifest)


def to_bytes(artifact: Artifact) -> bytes:
    """The artifact as a zip of stored members (nothing compressed, so reading it back can never
    take more memory than the file's size), the manifest's sha256 in the zip comment."""
    weights = io.BytesIO()
    stored, aliases = _stored_once(artifact.constants)
    np.savez(weights, **stored)
    members = {f"ir/{name}.hir": text.encode() for name, text in artifact.stages.items()}
    members["weights.npz"] = weights.getvalue()
    head = {k: v for k, v in artifact.manifest.items() if k not in ("members", "weight_aliases")}
    if aliases:
        head["weight_aliases"] = aliases
    head["format_version"] = FORMAT_VERSION
    manifest = json.dumps(dict(head, members={k: _sha256(v) for k, v in sorted(members.items())}),
                          indent=2, sort_keys=True).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.comment = COMMENT + _sha256(manifest).encode()
        zf.writestr("manifest.json", manifest)
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _stored_once(constants: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(the arrays to store, {name: stored name} for the others): equal arrays (same type,
    shape and values) are stored once. The ViT's slots and packed programs share their weight
    tables, half of a 370 MB artifact."""
    stored: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, list[str]] = {}
    for name, array in constants.items():
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.ravel()[:8].tobytes(),
               float(array.sum()) if array.dtype.kind in "biuf" and array.size else 0.0)
        same = next((other for other in seen.get(key, [])
                     if stored[other] is array or np.array_equal(stored[other], array)), None)
        if same is None:
            stored[name] = array
            seen.setdefault(key, []).append(name)
        else:
            aliases[name] = same
    return stored, aliases


def save(artifact: Artifact, path: str) -> None:
    from .outputs import write_bytes
    write_bytes(path, to_bytes(artifact))


def is_artifact(path: str) -> bool:
    """Whether ``path`` looks like a hecc artifact (used before overwriting a file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("manifest.json")
            return info.file_size <= MAX_MANIFEST_BYTES and json.loads(zf.read(info)).get("format") == FORMAT
    except Exception:  # any unreadable file is simply "not an artifact"
        return False


def load(path: str) -> Artifact:
    """Read an artifact as hostile input: stored members only, names and sizes checked before
    reading, the manifest's digest and schema, every member's sha256, the weights' declared
    shapes against their bytes, then the IR parsed, verified and (for CKKS programs) validated."""
    if not os.path.isfile(path):
        raise ArtifactError(f"{path}: no such artifact; create it with `hecc compile MODEL.onnx -o {path}`")
    try:
        with zipfile.ZipFile(path) as zf:
            files = _read_members(zf, path)
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError,
            NotImplementedError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: not a hecc artifact or corrupted ({type(exc).__name__}: {exc}); "
                            "compile the model again") from None
    manifest = files.pop("manifest.json")
    stages = {stage: _text(files[f"ir/{stage}.hir"], path, stage) for stage in manifest["stages"]}
    constants = read_weights(files["weights.npz"], path)
    for alias, name in manifest.get("weight_aliases", {}).items():
        if alias in constants or name not in constants:
            raise ArtifactError(f"{path}: weight alias {alias!r} -> {name!r} does not name one stored array; "
                                "compile the model again")
        constants[alias] = constants[name]
    art = Artifact(stages, constants, manifest)
    try:
        for stage in stages:
            graph = art.graph(stage)
            if stage in FINAL_STAGES:
                check_program(graph)
            elif stage == "tensor":
                check_tensor_stage(graph)
    except (ParseError, VerifyError, UserError) as exc:
        raise ArtifactError(f"{path}: the program in the artifact is invalid: {exc}") from None
    return art


def _read_members(zf: zipfile.ZipFile, path: str) -> dict:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    by_name = {i.filename: i for i in infos}
    if len(by_name) != len(names):
        raise ArtifactError(f"{path}: a member appears twice; the artifact was not written by hecc")
    unsafe = unsafe_members(infos)
    if unsafe:
        raise ArtifactError(f"{path}: {unsafe}; compile the model again")
    head = by_name.get("manifest.json")
    if head is None or head.file_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: the artifact has no readable manifest.json; compile the model again")
    raw = zf.read(head)
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ArtifactError(f"{path}: the artifact has no readable manifest.json; compile the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a hecc artifact (manifest format is {manifest.get('format')!r})"
                            if isinstance(manifest, dict) else f"{path}: not a hecc artifact")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(f"{path}: artifact format version {manifest.get('format_version')!r} is not "
                            f"supported by hecc {__version__} (it reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}); compile the model again with this hecc")
    problem = manifest_problem(manifest)
    if problem:
        raise ArtifactError(f"{path}: the manifest is invalid ({problem}); compile the model again")
    expected = manifest["members"]
    if set(by_name) - {"manifest.json"} != set(expected):
        extra = sorted(set(by_name) - set(expected) - {"manifest.json"})
        missing = sorted(set(expected) - set(by_name))
        raise ArtifactError(f"{path}: the artifact was modified (unexpected members {extra}, "
                            f"missing members {missing}); compile the model again")
    files = {"manifest.json": manifest}
    for name, digest in expected.items():
        sha, parts = hashlib.sha256(), []
        with zf.open(by_name[name]) as member:
            while chunk := member.read(1 << 20):
                sha.update(chunk)
                parts.append(chunk)
        if sha.hexdigest() != digest:
            raise ArtifactError(f"{path}: member {name} does not match its sha256 in the manifest: "
                                "the artifact was corrupted or edited; compile the model again")
        files[name] = b"".join(parts)
    if zf.comment != COMMENT + _sha256(raw).encode():
        raise ArtifactError(f"{path}: the manifest does not match the digest stored with it: the artifact "
                            "was corrupted or edited; compile the model again")
    return files


def _text(data: bytes, path: str, stage: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ArtifactError(f"{path}: ir/{stage}.hir is not UTF-8 text; compile the model again") from None


def read_weights(data: bytes, path: str) -> dict[str, np.ndarray]:
    """The weights of an artifact: an .npz of stored .npy members, each header's shape checked
    against the member's bytes before any array is allocated; no pickles."""
    from .arrays import load_named_arrays
    try:
        weights = load_named_arrays(io.BytesIO(data), "weights.npz", stored_only=True)
    except UserError as exc:
        raise ArtifactError(f"{path}: {exc}; compile the model again") from None
    complex_ = sorted(name for name, array in weights.items() if array.dtype.kind == "c")
    if complex_:  # a program computes on real numbers: the imaginary parts would be dropped silently
        raise ArtifactError(f"{path}: weights {', '.join(complex_[:3])} are complex numbers, which hecc never "
                            "writes; compile the model again")
    return weights
