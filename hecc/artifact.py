"""The ``.hecc`` artifact: one zip holding a compiled program.

Members: ``manifest.json`` (format and hecc version, inputs and outputs, stage list, sha256 of
every other member), ``ir/<stage>.hir`` for each stage in compile order (the last is the program
that runs), and ``weights.npz`` with the constants the final IR references. No key is stored.
Loading checks every hash, so a corrupted or edited artifact is refused.
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
from .errors import ArtifactError, ParseError, VerifyError
from .ir import Graph, parse, verify

FORMAT = "hecc-artifact"
FORMAT_VERSION = 1


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
    weights = io.BytesIO()
    np.savez_compressed(weights, **artifact.constants)
    members = {f"ir/{name}.hir": text.encode() for name, text in artifact.stages.items()}
    members["weights.npz"] = weights.getvalue()
    manifest = dict(artifact.manifest, members={k: _sha256(v) for k, v in sorted(members.items())})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def save(artifact: Artifact, path: str) -> None:
    data = to_bytes(artifact)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def is_artifact(path: str) -> bool:
    """Whether ``path`` looks like a hecc artifact (used before overwriting a file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("manifest.json")).get("format") == FORMAT
    except Exception:  # any unreadable file is simply "not an artifact"
        return False


def load(path: str) -> Artifact:
    if not os.path.isfile(path):
        raise ArtifactError(f"{path}: no such artifact; create it with `hecc compile MODEL.onnx -o {path}`")
    try:
        with zipfile.ZipFile(path) as zf:
            files = {name: zf.read(name) for name in zf.namelist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a hecc artifact or corrupted ({exc}); compile the model again") from None
    except Exception as exc:  # zlib and struct errors from a damaged archive
        raise ArtifactError(f"{path}: corrupted artifact ({type(exc).__name__}); compile the model again") from None
    try:
        manifest = json.loads(files["manifest.json"])
    except (KeyError, ValueError):
        raise ArtifactError(f"{path}: the artifact has no readable manifest.json; compile the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a hecc artifact (manifest format is {manifest.get('format')!r})"
                            if isinstance(manifest, dict) else f"{path}: not a hecc artifact")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {manifest.get('format_version')} is not "
                            f"supported by hecc {__version__} (it reads version {FORMAT_VERSION}); "
                            "compile the model again with this hecc")
    expected = manifest.get("members")
    if not isinstance(expected, dict):
        raise ArtifactError(f"{path}: the manifest lists no members; compile the model again")
    actual = {k: v for k, v in files.items() if k != "manifest.json"}
    if set(actual) != set(expected):
        extra = sorted(set(actual) - set(expected))
        missing = sorted(set(expected) - set(actual))
        raise ArtifactError(f"{path}: the artifact was modified (unexpected members {extra}, "
                            f"missing members {missing}); compile the model again")
    for name, digest in expected.items():
        if _sha256(actual[name]) != digest:
            raise ArtifactError(f"{path}: member {name} does not match its sha256 in the manifest: "
                                "the artifact was corrupted or edited; compile the model again")
    stages = {}
    for stage in manifest.get("stages", []):
        stages[stage] = actual[f"ir/{stage}.hir"].decode()
    if not stages:
        raise ArtifactError(f"{path}: the artifact holds no program")
    with np.load(io.BytesIO(actual["weights.npz"]), allow_pickle=False) as npz:
        constants = {k: npz[k] for k in npz.files}
    art = Artifact(stages, constants, manifest)
    try:
        art.graph()
    except (ParseError, VerifyError) as exc:
        raise ArtifactError(f"{path}: the program in the artifact is invalid: {exc}") from None
    return art
