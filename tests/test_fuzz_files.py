"""Fuzzing the files hecc reads as hostile input: artifacts (.hecc), key files (secret.key,
eval.keys) and ciphertext files (.ct).

Each target mutates a valid file made once per module (a tiny Gemm-square-Gemm model compiled for
both layouts) and hands it to the call that reads it. Edits behind a digest are made with the
digests (member sha256s, the zip comment) recomputed, so they reach the checks behind the digest.
Every example must end either normally or with a ``UserError``; any other exception is a bug in
hecc, and so is an example that takes more than BUDGET seconds.
"""
from __future__ import annotations

import copy
import difflib
import io
import json
import os
import re
import shutil
import signal
import tempfile
import time
import warnings
import zipfile

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import HealthCheck, Phase, event, note, settings, strategies as st
from hypothesis import given

import hecc
from hecc.backends.tenseal import check_key_budget
from hecc.clientserver import Client, Server, fingerprint, member_limits
from hecc.errors import UserError
from hecc.ir.ops import OPS

import hostile as H
from test_clientserver import _model  # Gemm 4->6, square, Gemm 6->3

BUDGET = 5.0  # seconds an example may take
WATCHDOG = 15.0  # seconds after which a stuck example is interrupted (a hang in Python code)
EXAMPLES = int(os.environ.get("HECC_FUZZ_EXAMPLES", 500))  # at least 500 in the suite
LAYOUTS = ("batch", "slots", "packed")
STAGES = ("tensor", "ckks", "final", "ckks-slots", "final-slots", "ckks-packed", "final-packed")
FUZZ = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.large_base_example])


# --- the valid files, made once ---------------------------------------------------------------
def _chain_ids(params) -> list[tuple[int, ...]]:
    """SEAL's parms_id of every level of a program's parameters (the key level first)."""
    n, chain = params["poly_modulus_degree"], params["coeff_modulus_bits"]
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, chain))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    ids, data = [tuple(context.key_parms_id())], context.first_context_data()
    while data is not None:
        ids.append(tuple(data.parms_id()))
        data = data.next_context_data()
    return ids


class Record:
    """Attributes, shown in failure reports by name only (the files are megabytes)."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)

    def __repr__(self):
        return f"<{type(self).__name__}>"

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))


class Files(Record):
    """One layout's program and its valid key and ciphertext files (bytes by kind, and the
    paths of the originals for the calls that read the other file)."""


class World(Record):
    """The valid artifact (bytes, manifest, members, weights) and each layout's Files."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzfiles")
    x = np.random.default_rng(1).uniform(-1, 1, (10, 4)).astype(np.float32)
    prog = hecc.compile(_model(str(root / "m.onnx"), 0), calibration=x)
    assert prog.layouts == list(LAYOUTS) and prog.stages == list(STAGES)
    prog.save(str(root / "m.hecc"))
    art = (root / "m.hecc").read_bytes()
    prog = hecc.load(str(root / "m.hecc"))
    members = H.read_zip(art)
    manifest = json.loads(members.pop("manifest.json"))
    files = {}
    for layout in LAYOUTS:
        p = prog.with_layout(layout)
        keys = str(root / f"keys-{layout}")
        Client(p, keys).keygen()
        # the slots layout holds one input per batch: two inputs make a two-batch file
        inputs = x if layout == "batch" else x[:2]
        f = Files(program=p, keys_dir=keys, eval_path=os.path.join(keys, "eval.keys"),
                  input_path=str(root / f"in-{layout}.ct"), output_path=str(root / f"out-{layout}.ct"), data={})
        Client(p, keys).encrypt({"x": inputs}, f.input_path)
        Server(p, f.eval_path).evaluate(f.input_path, f.output_path)
        for kind, path in (("eval", f.eval_path), ("secret", os.path.join(keys, "secret.key")),
                           ("input", f.input_path), ("output", f.output_path)):
            with open(path, "rb") as fh:
                f.data[kind] = fh.read()
        f.parms_ids = _chain_ids(p.parameters)
        f.server, f.client = Server(p, f.eval_path), Client(p, keys)
        files[layout] = f
    work = root / "work"
    work.mkdir()
    return World(root=str(root), work=str(work), x=x, artifact=art, manifest=manifest, members=members,
                 weights=H.read_zip(members["weights.npz"]), files=files)


# --- running an example -----------------------------------------------------------------------
class Hang(BaseException):
    """An example ran past the watchdog (a BaseException, so hecc's ``except Exception`` cannot
    swallow it)."""


def _alarm(signum, frame):
    raise Hang(f"the example ran for more than {WATCHDOG} s")


def hostile(action) -> None:
    """Run ``action``: it may succeed or raise a UserError, nothing else, within BUDGET seconds."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG)
    start = time.perf_counter()
    try:
        action()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    assert elapsed < BUDGET, f"the example took {elapsed:.1f} s (budget {BUDGET} s)"


def attempt(fn, what: str):
    """``fn()``, a UserError being an accepted outcome (None); the outcome is a hypothesis event
    (``--hypothesis-show-statistics`` shows how deep the examples got)."""
    try:
        result = fn()
    except UserError as exc:
        message = re.sub(r"/\S+/", "", str(exc))[:70]
        event(f"{what}: {type(exc).__name__}: {message}")
        note(f"{what}: {type(exc).__name__}: {str(exc)[:300]}")
        return None
    event(f"{what}: ok")
    return result


def load_and_run(path: str, x: np.ndarray) -> None:
    """What a client or server does with an artifact: load it, run it, size its keys."""
    prog = attempt(lambda: hecc.load(path), "load")
    if prog is None:
        return
    attempt(lambda: prog.run(x, backend="reference"), "reference run")
    layouts = attempt(lambda: prog.layouts, "layouts") or []
    for layout in layouts:
        p = attempt(lambda: prog.with_layout(layout), "with_layout")
        if p is None:
            continue
        attempt(lambda: p.run(x, backend="sim", layout=layout), f"{layout} sim run")
        attempt(lambda: check_key_budget(p.graph), f"{layout} key budget")
        attempt(lambda: (fingerprint(p), member_limits(p)), f"{layout} limits")


def write(world: World, name: str, data: bytes, mode: int = 0o644) -> str:
    path = os.path.join(world.work, name)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def use_eval_keys(f: Files, path: str, world: World) -> None:
    server = attempt(lambda: Server(f.program, path), "Server()")
    if server is not None:
        attempt(lambda: server.evaluate(f.input_path, os.path.join(world.work, "y.ct")), "evaluate")


def use_secret_key(f: Files, data: bytes, world: World) -> None:
    folder = tempfile.mkdtemp(dir=world.work)  # mode 0700
    try:
        fd = os.open(os.path.join(folder, "secret.key"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        attempt(lambda: Client(f.program, folder).decrypt(f.output_path), "decrypt")
    finally:
        shutil.rmtree(folder)


def use_input(f: Files, path: str, world: World) -> None:
    attempt(lambda: f.server.evaluate(path, os.path.join(world.work, "y.ct")), "evaluate")


def use_output(f: Files, path: str, world: World) -> None:
    attempt(lambda: f.client.decrypt(path), "decrypt")


def use_file(world: World, kind: str, layout: str, data: bytes) -> None:
    f = world.files[layout]
    if kind == "artifact":
        load_and_run(write(world, "m.hecc", data), world.x)
    elif kind == "eval":
        use_eval_keys(f, write(world, "eval.keys", data), world)
    elif kind == "secret":
        use_secret_key(f, data, world)
    elif kind == "input":
        use_input(f, write(world, "x.ct", data), world)
    else:
        use_output(f, write(world, "r.ct", data), world)


# --- JSON mutations ---------------------------------------------------------------------------
SPECIAL_INTS = [0, 1, -1, 2, 3, 4, 7, 255, 256, 4095, 4096, 8192, 16384, 32768, 65536, 2 ** 31 - 1, 2 ** 31,
                2 ** 32, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -2 ** 63, 10 ** 30, -10 ** 30]
SPECIAL_FLOATS = [0.0, -0.0, 0.5, 1.5, -1.0, 1e-300, 5e-324, 1e300, 2.0 ** 26, 2.0 ** 40,
                  float("nan"), float("inf"), float("-inf")]
HINT_STRINGS = ["batch", "slots", "auto", "tensor", "ckks", "final", "ckks-slots", "final-slots", "secret",
                "eval", "input", "output", "public", "relin", "galois", "hecc-artifact", "hecc-keys",
                "hecc-ciphertexts", "x", "logits", "weights.npz", "ir/final.hir", "ir/tensor.hir",
                "b0/i0/0", "header.json", "manifest.json", "", "0" * 64, "f" * 32, "\x00", "é",
                "../../etc/passwd", "nan", "2"]
SCALARS = st.one_of(st.none(), st.booleans(), st.sampled_from(SPECIAL_INTS), st.integers(-2 ** 70, 2 ** 70),
                    st.sampled_from(SPECIAL_FLOATS), st.floats(), st.sampled_from(HINT_STRINGS),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10),
                    st.just(H.DEEP), st.just(H.BIGNUM))
JSON_VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(HINT_STRINGS) | st.text(max_size=4), c, max_size=3), max_leaves=5)


def _nodes(obj, path=()):
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nodes(v, path + (i,))
    return out


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _set(doc, path, value):
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _number_edits(v):
    edits = SPECIAL_INTS + SPECIAL_FLOATS + [True, False, None, str(v), [v]]
    if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e300:
        edits += [v + 1, v - 1, -v, 2 * v, v / 2, float(v), v * (1 + 1e-9)]
    return st.sampled_from(edits)


def _string_edits(v):
    return st.one_of(st.sampled_from(HINT_STRINGS + [v + "x", v[:-1], v.upper(), v * 2, " " + v, [v], None, 0]),
                     st.text(max_size=10))


def mutate_json(data, doc, hints: dict, label: str):
    """``doc`` (a parsed JSON document) after one random edit: a value replaced (of another type
    or a value ``hints[key]`` offers for the key), deleted, added, a number or string edited, a
    list's elements duplicated, dropped or reordered."""
    doc = copy.deepcopy(doc)
    groups = {}
    for path in _nodes(doc):
        groups.setdefault(path[:1], []).append(path)
    group = data.draw(st.sampled_from(sorted(groups, key=repr)), label=f"{label}: field")
    path = data.draw(st.sampled_from(groups[group]), label=f"{label}: path")
    op = data.draw(st.sampled_from(["replace", "replace", "delete", "add", "number", "string", "list",
                                    "retype"]), label=f"{label}: edit")
    node = _get(doc, path)
    key = next((p for p in reversed(path) if isinstance(p, str)), None)
    if op == "number":
        nums = [p for p in _nodes(node, path) if isinstance(_get(doc, p), (int, float))]
        if nums:
            p = data.draw(st.sampled_from(nums), label=f"{label}: number")
            return _set(doc, p, data.draw(_number_edits(_get(doc, p)), label=f"{label}: new number"))
        op = "replace"
    if op == "string":
        strs = [p for p in _nodes(node, path) if isinstance(_get(doc, p), str)]
        if strs:
            p = data.draw(st.sampled_from(strs), label=f"{label}: string")
            return _set(doc, p, data.draw(_string_edits(_get(doc, p)), label=f"{label}: new string"))
        op = "replace"
    if op == "list":
        lists = [p for p in _nodes(node, path) if isinstance(_get(doc, p), list) and _get(doc, p)]
        if lists:
            p = data.draw(st.sampled_from(lists), label=f"{label}: list")
            items = _get(doc, p)
            how = data.draw(st.sampled_from(["dup", "drop", "reverse", "empty", "many", "nest"]),
                            label=f"{label}: list edit")
            i = data.draw(st.integers(0, len(items) - 1), label=f"{label}: index")
            new = {"dup": items[:i + 1] + items[i:], "drop": items[:i] + items[i + 1:],
                   "reverse": items[::-1], "empty": [], "many": items * 50, "nest": [items]}[how]
            return _set(doc, p, new)
        op = "replace"
    if op == "delete" and path:
        parent = _get(doc, path[:-1])
        del parent[path[-1]]
        return doc
    if op == "add" and isinstance(node, (dict, list)):
        value = data.draw(hints.get(key, JSON_VALUES) if key in hints and data.draw(st.booleans()) else JSON_VALUES,
                          label=f"{label}: added value")
        if isinstance(node, dict):
            name = data.draw(st.sampled_from(sorted(hints) + HINT_STRINGS) | st.text(max_size=8),
                             label=f"{label}: added key")
            node[name] = value
        else:
            node.insert(data.draw(st.integers(0, len(node)), label=f"{label}: at"), value)
        return doc
    if op == "retype":
        retyped = {int: lambda v: [str(v), float(v), [v]], float: lambda v: [str(v), [v], int(v) if np.isfinite(v) else 0],
                   str: lambda v: [[v], {v: v}, len(v)], list: lambda v: [{str(i): e for i, e in enumerate(v)}, str(v)],
                   dict: lambda v: [list(v.items()), list(v.values()), list(v)], bool: lambda v: [int(v), str(v)],
                   type(None): lambda v: ["null", 0, {}, []]}
        options = retyped.get(type(node), lambda v: [None])(node)
        return _set(doc, path, data.draw(st.sampled_from(options), label=f"{label}: retyped"))
    strategy = hints[key] if key in hints and data.draw(st.booleans(), label=f"{label}: hint") else JSON_VALUES
    return _set(doc, path, data.draw(strategy, label=f"{label}: new value"))


# --- target 1: artifacts ----------------------------------------------------------------------
SPEC = st.fixed_dictionaries({"name": st.sampled_from(["x", "logits", "y", ""]),
                              "shape": st.lists(st.sampled_from([0, 1, 3, 4, 6, -1, 2 ** 40, 2 ** 41]), max_size=3)})
MANIFEST_HINTS = {
    "format": st.sampled_from(["hecc-artifact", "hecc-keys", ""]),
    "format_version": st.sampled_from([1, 2, 3, 2.0, "2", True, None]),
    "stages": st.lists(st.sampled_from(STAGES + ("bogus", "")), max_size=6)
    | st.permutations(list(STAGES)) | st.sampled_from([["tensor"], ["tensor", "final"], ["tensor", "final-slots"],
                                                      ["tensor", "ckks", "final"], ["tensor", "ckks-slots", "final-slots"]]),
    "layouts": st.lists(st.sampled_from(["batch", "slots", "auto", ""]), max_size=3),
    "inputs": st.lists(SPEC, max_size=2), "outputs": st.lists(SPEC, max_size=2),
    "members": st.dictionaries(st.sampled_from([f"ir/{s}.hir" for s in STAGES] + ["weights.npz", "manifest.json",
                                                                                  "ir/x.hir", "../w"]),
                               st.sampled_from(["0" * 64, "A" * 64, "", "0" * 63]), max_size=7),
    "options": st.dictionaries(st.sampled_from(["scale_bits", "rescale", "margin", "x"]), SCALARS, max_size=3),
    "input_ranges": st.dictionaries(st.sampled_from(["x", "y"]), st.lists(st.sampled_from(SPECIAL_FLOATS), max_size=3)),
    "rotation_keys": st.dictionaries(st.sampled_from(["keys", "steps_used", "rotations"]),
                                     st.lists(st.sampled_from(SPECIAL_INTS), max_size=3) | st.sampled_from(SPECIAL_INTS)),
    "pass_seconds": st.lists(st.lists(SCALARS, max_size=3), max_size=3),
    "approximations": st.lists(st.fixed_dictionaries({"kind": st.sampled_from(["relu", "x"]),
                                                      "interval": st.lists(st.sampled_from(SPECIAL_FLOATS), max_size=3),
                                                      "degree": st.sampled_from(SPECIAL_INTS),
                                                      "depth": st.sampled_from(SPECIAL_INTS)}), max_size=2),
}


def _sync_members(data, manifest, members: dict[str, bytes], label: str) -> dict[str, bytes]:
    """The zip members made to match the manifest, often: as ``members`` lists them, or as the
    stages imply (a missing member borrows another stage's IR), so an edit of the stages or the
    members reaches the checks after the member check."""
    how = data.draw(st.sampled_from(["none", "listed", "stages"]), label=f"{label}: sync members")
    if how == "none" or not isinstance(manifest, dict):
        return members
    if how == "stages" and isinstance(manifest.get("stages"), list):
        names = [f"ir/{s}.hir" for s in manifest["stages"] if isinstance(s, str)] + ["weights.npz"]
        manifest["members"] = {n: "" for n in names}
    listed = manifest.get("members")
    if not isinstance(listed, dict):
        return members
    texts = [v for k, v in members.items() if k.startswith("ir/")] or [b""]
    out = {}
    for name in listed:
        out[name] = members.get(name, data.draw(st.sampled_from(texts), label=f"{label}: content of {name}"))
    return out


def semantic_manifest_edit(data, manifest: dict, members: dict, label: str):
    """An edit that keeps the manifest's schema: layouts chosen or reordered, a stage dropped
    with its member, stages' IR swapped or copied, inputs, outputs, ranges, options and the
    informative fields changed to other well-typed values."""
    if not isinstance(manifest, dict):  # an earlier edit replaced the whole manifest
        return manifest, members
    manifest, members = copy.deepcopy(manifest), dict(members)
    op = data.draw(st.sampled_from(["layouts", "drop stage", "swap ir", "copy ir", "specs", "ranges", "options",
                                    "info"]), label=f"{label}: edit")
    if op == "layouts":
        manifest["layouts"] = data.draw(st.sampled_from([["batch"], ["slots"], ["slots", "batch"], [],
                                                         ["batch", "batch"]]), label=f"{label}: layouts")
    elif op == "drop stage" and isinstance(manifest.get("stages"), list):
        stage = data.draw(st.sampled_from(STAGES[1:]), label=f"{label}: stage")
        manifest["stages"] = [s for s in manifest["stages"] if s != stage]
        members.pop(f"ir/{stage}.hir", None)
        if isinstance(manifest.get("members"), dict):
            manifest["members"].pop(f"ir/{stage}.hir", None)
        if data.draw(st.booleans(), label=f"{label}: drop its layout") and isinstance(manifest.get("layouts"), list):
            manifest["layouts"] = [x for x in manifest["layouts"] if x != ("slots" if "slots" in stage else "batch")]
            if not manifest["layouts"]:
                manifest["not_encrypted_because"] = "a test dropped the CKKS stages"
    elif op in ("swap ir", "copy ir"):
        names = sorted(n for n in members if n.startswith("ir/"))
        a = data.draw(st.sampled_from(names), label=f"{label}: from")
        b = data.draw(st.sampled_from(names), label=f"{label}: to")
        if op == "swap ir":
            members[a], members[b] = members[b], members[a]
        else:
            members[b] = members[a]
    elif op == "specs":
        key = data.draw(st.sampled_from(["inputs", "outputs"]), label=f"{label}: field")
        manifest[key] = data.draw(st.lists(SPEC, max_size=2) | st.sampled_from(
            [[{"name": "x", "shape": [1, 5]}], [{"name": "x", "shape": [2, 4]}], [{"name": "y", "shape": [1, 4]}],
             [{"name": "logits", "shape": [1, 3]}] * 2, [{"name": "x", "shape": []}], []]), label=f"{label}: specs")
    elif op == "ranges":
        interval = st.sampled_from([[0.0, 0.0], [-1e300, 1e300], [-1.7e308, 1.7e308], [5.0, 6.0], [-1, 1], [0, 5e-324],
                                    [-1e-300, 1e-300]])
        manifest["input_ranges"] = data.draw(st.dictionaries(st.sampled_from(["x", "y", ""]), interval, max_size=2),
                                             label=f"{label}: ranges")
    elif op == "options":
        manifest["options"] = data.draw(st.dictionaries(st.sampled_from(["scale_bits", "rescale", "margin",
                                                                         "approx_error", "weight_scale_bits"]),
                                                        st.none() | st.sampled_from(SPECIAL_INTS + SPECIAL_FLOATS[:10])
                                                        | st.sampled_from(HINT_STRINGS), max_size=4),
                                        label=f"{label}: options")
    else:
        key = data.draw(st.sampled_from(["rotation_keys", "predicted_precision", "approximations", "pass_seconds",
                                         "not_encrypted_because", "layout_unavailable", "weight_aliases"]),
                        label=f"{label}: field")
        manifest[key] = data.draw({
            "rotation_keys": st.dictionaries(st.sampled_from(["keys", "steps_used", "rotations", "x"]),
                                             st.sampled_from([0, 1, 2 ** 40])
                                             | st.lists(st.sampled_from([0, 1, 2, 4095, 2 ** 40]))),
            "predicted_precision": st.dictionaries(st.sampled_from(["batch", "slots", "x"]),
                                                   st.none() | st.sampled_from(SPECIAL_FLOATS[:10])),
            "approximations": st.lists(st.fixed_dictionaries({"kind": st.sampled_from(["relu", "sigmoid", ""]),
                                                              "interval": st.sampled_from([[-1, 1], [0, 0], [-1e300, 1e300]]),
                                                              "degree": st.sampled_from([0, 1, 1024]),
                                                              "depth": st.sampled_from([0, 64])}), max_size=2),
            "pass_seconds": st.lists(st.tuples(st.sampled_from(["validate", "", "x" * 200]),
                                               st.sampled_from([0, -1.0, 1e308])).map(list), max_size=3),
            "not_encrypted_because": st.sampled_from(["", "x" * 1000, "{}"]),
            "layout_unavailable": st.dictionaries(st.sampled_from(["batch", "slots", "x"]), st.sampled_from(["", "why"])),
            "weight_aliases": st.dictionaries(st.sampled_from(["x", "", "packed.layout.1", "layout.1", "../w"]),
                                              st.sampled_from(["x", "", "layout.1", "packed.layout.1", "nothing"])),
        }[key], label=f"{label}: value")
    return manifest, members


@FUZZ
@given(data=st.data())
def test_mutated_manifest(world, data):
    """Manifest fields edited (types, values, stages, layouts, inputs, members), digests recomputed."""
    manifest, members = world.manifest, dict(world.members)
    for i in range(data.draw(st.sampled_from([1, 1, 2, 2, 3]), label="edits")):
        if data.draw(st.booleans(), label=f"edit {i} keeps the schema"):
            manifest, members = semantic_manifest_edit(data, manifest, members, f"manifest edit {i}")
        else:
            manifest = mutate_json(data, manifest, MANIFEST_HINTS, f"manifest edit {i}")
    members = _sync_members(data, manifest, members, "zip")
    deep = data.draw(st.sampled_from([500, 5000, 100000]), label="nesting of a deep value")
    note(f"manifest: {json.dumps(manifest, sort_keys=True)[:2000]}")
    art = H.artifact_bytes(manifest, members, deep=deep)
    hostile(lambda: use_file(world, "artifact", "batch", art))


NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:e-?\d+)?")
GENERIC = [re.compile(p) for p in (
    rb"level=(\d+)", rb"scale=2\^([0-9.]+)", rb"slots=(\d+)", rb"size=(\d+)", rb"galois_steps = \[([^\]]*)\]",
    rb"coeff_modulus_bits = \[([^\]]*)\]", rb"poly_modulus_degree = (\d+)", rb"step = (\d+)", rb"row = (\d+)",
    rb"index = (\d+)", rb"weight_scale = (\d+)", rb"bits = (\d+)", rb"shape = \[([^\]]*)\]",
    rb"(?:tensor|cipher|plain)<([0-9x]+)", rb"security = (\d+)", rb"axis = (-?\d+)",
    rb'(?:layout|plain|matrix|bias|name) = "([^"]*)"')]
# the attributes and types the backends index with, on the ops that carry them
HOTSPOTS = [re.compile(p) for p in (
    rb'"hecc.input"\(\) \{[^}\n]*shape = \[([^\]]*)\]', rb'"hecc.input"\(\) \{layout = "([^"]*)"',
    rb'"ckks.rotate"[^\n]*step = (\d+)', rb'"ckks.mul_plain"[^\n]*row = (\d+)', rb'"ckks.extract"[^\n]*index = (\d+)',
    rb'"ckks.decrypt"[^\n]*shape = \[([^\]]*)\]', rb'"ckks.rescale"[^\n]*bits = (\d+)',
    rb'"ckks.linear"[^\n]*shape = \[([^\]]*)\]', rb'"hecc.output"[^\n]*name = "([^"]*)"',
    rb"galois_steps = \[([^\]]*)\]", rb"coeff_modulus_bits = \[([^\]]*)\]", rb"poly_modulus_degree = (\d+)")]
EDGE_NUMBERS = [b"-1", b"0", b"1", b"2", b"4096", b"99999999999", b"1" * 5000]
CONSTANT_NAMES = [b"layout.1", b"layout.2", b"diagonals2", b"diagonals4", b"bias3", b"linear1.matrix", b"linear1.bias",
                  b"linear2.matrix", b"w1", b"b1", b"w2", b"x", b"", b"nope"]
TOKENS = re.compile(rb'"[a-z_]+\.[a-z_0-9]+"|%\d+|\b(?:secret|public|cipher|tensor|plain|true|false|nan|inf|'
                    rb'i64|f64|str)\b|\b[a-z_]+ =|"[a-z0-9._]+"|->|[(){}<>\[\],:=]')
NUMBER_TEXT = [b"0", b"1", b"-1", b"2", b"3", b"4", b"7", b"26", b"60", b"61", b"4096", b"8192", b"16384", b"32768",
               b"65536", b"1024", b"2147483648", b"9223372036854775808", b"18446744073709551617", b"1" * 30,
               b"1" * 5000, b"1.5", b"-0.5", b"nan", b"inf", b"-inf", b"1e308", b"1e-300", b""]
LIST_TEXT = st.lists(st.sampled_from([b"0", b"1", b"2", b"3", b"-1", b"4095", b"4096", b"8191", b"60", b"61",
                                      b"10", b"9", b"1.5", b'"a"', b"[]", b"99999999999"]), max_size=70).map(b", ".join)
SHAPE_TEXT = st.lists(st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"6", b"8", b"4096", b"100000", b"99999999999"]),
                      min_size=1, max_size=4).map(b"x".join)


def _token_replacement(token: bytes):
    ops = [f'"{name}"'.encode() for name in sorted(OPS)] + [b'"ckks.bogus"', b'"x.y"']
    words = [b"secret", b"public", b"cipher", b"tensor", b"plain", b"true", b"false", b"nan", b"inf", b"i64",
             b"f64", b"str", b"->", b"", b"%0", b"%1", b"%7", b"%99", b"%999999999999", b"[", b"]", b"(", b")",
             b"{", b"}", b"<", b">", b",", b":", b"=", b'"linear1.matrix"', b'"layout.1"', b'"w1"', b'"nope"',
             b'"diagonals4"', b'"bias3"', b"name =", b"step =", b"index =", b"row =", b"plain =", b"matrix =",
             b"bias =", b"layout =", b"shape =", b"weight_scale =", b"galois_steps =", b"bits =", b"x ="]
    return st.sampled_from(ops + words)


def mutate_ir(data, text: bytes, others: list[bytes], label: str, hotspot: bool = False) -> bytes:
    """IR text after one edit: a number (anywhere, or level/scale/slots/steps/shapes...), a
    token, a line (deleted, duplicated, swapped, borrowed from another stage), bytes flipped or
    inserted; with ``hotspot``, an attribute or type the backends index with."""
    op = "targeted" if hotspot else data.draw(
        st.sampled_from(["targeted"] * 8 + ["number"] * 2 + ["token"] * 2
                        + ["delete", "dup", "swap", "borrow", "flip", "insert", "deep"]), label=f"{label}: edit")
    lines = text.split(b"\n")
    if op == "number":
        found = list(NUMBER.finditer(text))
        m = data.draw(st.sampled_from(found), label=f"{label}: number")
        try:
            near = [str(int(float(m.group())) + d).encode() for d in (-1, 1)]
        except (OverflowError, ValueError):  # an earlier edit made it huge
            near = []
        new = data.draw(st.sampled_from(NUMBER_TEXT + near), label=f"{label}: new number")
        return text[:m.start()] + new + text[m.end():]
    if op == "targeted":
        kind = HOTSPOTS if hotspot or data.draw(st.integers(0, 2), label=f"{label}: hotspot?") else GENERIC
        patterns = [p for p in kind if p.search(text)] or [p for p in GENERIC if p.search(text)]
        if not patterns:
            return text
        pattern = data.draw(st.sampled_from(patterns), label=f"{label}: pattern")
        found = list(pattern.finditer(text))
        m = data.draw(st.sampled_from(found), label=f"{label}: where")
        group = m.group(1)
        if m.group(0).endswith(b'"') or m.group(0).endswith(b'",'):
            new = data.draw(st.sampled_from(CONSTANT_NAMES), label=f"{label}: new name")
        elif pattern.pattern.endswith(rb"\[([^\]]*)\]") or b"<" in m.group(0):
            sep = b"x" if b"<" in m.group(0) else b", "
            items = group.split(sep) if group else []
            how = data.draw(st.sampled_from(["element"] * 3 + ["drop", "add", "whole"]), label=f"{label}: list edit")
            if how == "whole" or not items:
                new = data.draw(SHAPE_TEXT if sep == b"x" else LIST_TEXT, label=f"{label}: new list")
            else:
                k = data.draw(st.integers(0, len(items) - 1), label=f"{label}: element")
                if how == "element":
                    items[k] = data.draw(st.sampled_from(EDGE_NUMBERS), label=f"{label}: new element")
                elif how == "drop":
                    del items[k]
                else:
                    items.insert(k, data.draw(st.sampled_from(EDGE_NUMBERS), label=f"{label}: new element"))
                new = sep.join(items)
        else:
            try:
                near = [str(int(float(group)) + d).encode() for d in (-1, 1)]
            except (OverflowError, ValueError):  # an earlier edit made it huge
                near = []
            new = data.draw(st.sampled_from(EDGE_NUMBERS + near), label=f"{label}: new value")
        return text[:m.start(1)] + new + text[m.end(1):]
    if op == "token":
        found = list(TOKENS.finditer(text))
        m = data.draw(st.sampled_from(found), label=f"{label}: token")
        new = data.draw(_token_replacement(m.group()), label=f"{label}: new token")
        return text[:m.start()] + new + text[m.end():]
    if op in ("delete", "dup", "swap", "borrow"):
        i = data.draw(st.integers(0, len(lines) - 1), label=f"{label}: line")
        j = data.draw(st.integers(0, len(lines) - 1), label=f"{label}: other line")
        if op == "delete":
            del lines[i]
        elif op == "dup":
            lines.insert(j, lines[i])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        else:
            source = data.draw(st.sampled_from(others), label=f"{label}: from stage").split(b"\n")
            lines.insert(i, data.draw(st.sampled_from(source), label=f"{label}: borrowed line"))
        return b"\n".join(lines)
    if op == "flip":
        i = data.draw(st.integers(0, len(text) - 1), label=f"{label}: byte")
        bit = data.draw(st.integers(1, 255), label=f"{label}: xor")
        return text[:i] + bytes([text[i] ^ bit]) + text[i + 1:]
    if op == "deep":
        i = data.draw(st.integers(0, len(text)), label=f"{label}: at")
        depth = data.draw(st.sampled_from([50, 500, 5000, 50000]), label=f"{label}: depth")
        what = data.draw(st.sampled_from([b"[", b"(", b"{", b"tensor<"]), label=f"{label}: nest")
        close = {b"[": b"]", b"(": b")", b"{": b"}", b"tensor<": b">"}[what]
        return text[:i] + what * depth + close * depth + text[i:]
    i = data.draw(st.integers(0, len(text)), label=f"{label}: at")
    extra = data.draw(st.binary(max_size=8) | st.text(max_size=8).map(str.encode), label=f"{label}: inserted")
    return text[:i] + extra + text[i:]


@FUZZ
@given(data=st.data())
def test_mutated_ir(world, data):
    """The IR text of a stage edited (numbers, levels, scales, steps, shapes, tokens, lines,
    bytes; half the time one edit of an attribute or type a backend indexes with, in a program
    that runs), digests recomputed."""
    members = dict(world.members)
    texts = [members[f"ir/{s}.hir"] for s in STAGES]
    if data.draw(st.booleans(), label="one edit of what a backend indexes with"):
        edits = [(data.draw(st.sampled_from(["final", "final-slots"]), label="stage"), True)]
    else:
        edits = [(data.draw(st.sampled_from(STAGES + ("final",) + ("final-slots",) * 2), label=f"stage of edit {i}"),
                  False) for i in range(data.draw(st.sampled_from([1, 1, 1, 1, 2, 3]), label="edits"))]
    for i, (stage, hotspot) in enumerate(edits):
        name = f"ir/{stage}.hir"
        before = members[name]
        members[name] = mutate_ir(data, before, texts, f"ir edit {i}", hotspot)
        changed = [line[:300] for line in difflib.unified_diff(
            before.decode(errors="replace").splitlines(), members[name].decode(errors="replace").splitlines(),
            lineterm="", n=0)][2:12]
        note(f"{name}, edit {i}:\n" + "\n".join(changed))
    art = H.artifact_bytes(copy.deepcopy(world.manifest), members)
    hostile(lambda: use_file(world, "artifact", "batch", art))


DTYPES = ["<f8", "<f4", "<f2", ">f8", "<i8", "<i4", "|i1", "|u1", "<u8", ">i8", "|b1", "<c16", "<U3", "<M8[s]",
          "|V8", "|O"]
INT_SPECIALS = [-2 ** 63, -5, -2, -1, 0, 1, 3, 4, 5, 4095, 4096, 4097, 2 ** 31, 2 ** 62]
FLOAT_SPECIALS = [np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, 5e-324, 1e-300, 2.0 ** 60, -2.0 ** 60, 1e30]


def _array(data, original: np.ndarray, label: str) -> np.ndarray:
    """Another array for a weight: of another shape, dtype or values."""
    shape = data.draw(st.sampled_from([original.shape, original.shape[::-1], (), (0,), (1,), (original.size,)])
                      | st.lists(st.integers(0, 9), max_size=3).map(tuple)
                      | st.tuples(st.integers(0, 9000)), label=f"{label}: shape")
    dtype = data.draw(st.sampled_from(DTYPES), label=f"{label}: dtype")
    fill = data.draw(st.sampled_from(["normal", "nan", "inf", "zeros", "huge", "ints"]), label=f"{label}: values")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label=f"{label}: seed"))
    values = {"normal": lambda: rng.normal(0, 1, shape), "nan": lambda: np.full(shape, np.nan),
              "inf": lambda: np.full(shape, np.inf), "zeros": lambda: np.zeros(shape),
              "huge": lambda: np.full(shape, 1e300), "ints": lambda: rng.integers(-10, 5000, shape)}[fill]()
    if dtype == "|O":
        out = np.empty(shape, dtype=object)
        out[...] = 1
        return out
    if dtype == "|V8":
        return np.zeros(shape, dtype="V8")
    if dtype.startswith("<U"):
        return values.astype(str).astype("<U3")
    if dtype.startswith("<M8"):
        return np.zeros(shape, dtype="<M8[s]")
    with np.errstate(all="ignore"):
        return np.nan_to_num(values, nan=0, posinf=0, neginf=0).astype(dtype) if dtype[1] in "iub" else values.astype(dtype)


NPY_HEADERS = [
    "{'descr': '<f8', 'fortran_order': False, 'shape': (6, 4), }",
    "{'descr': '<f8', 'fortran_order': True, 'shape': (4, 6), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (-4, -6), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (0, 9223372036854775807), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (" + "1, " * 33 + "24), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (24,), }",
    "{'descr': '<U8', 'fortran_order': False, 'shape': (6,), }",
    "{'descr': [('a', '<f8'), ('b', '<i8')], 'fortran_order': False, 'shape': (12,), }",
    "{'descr': '<f8', 'fortran_order': 'yes', 'shape': (6, 4), }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': [6, 4], }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (6.0, 4), }",
    "{'descr': 'garbage', 'fortran_order': False, 'shape': (6, 4), }",
    "{'descr': '<f8', 'fortran_order': False}",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (6, 4), 'extra': 1, }",
    "{'descr': '<f8', 'fortran_order': False, 'shape': (6, 4), } + __import__('os')",
    "[1, 2, 3]", "", "{", "{'descr': '<f8', 'fortran_order': False, 'shape': (" + "(" * 2000 + ")" * 2000 + "), }",
    "{'descr': '>f8', 'fortran_order': False, 'shape': (6, 4), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 24), }",
    "{'descr': '<f16', 'fortran_order': False, 'shape': (6, 2), }",
    "{'descr': '<c16', 'fortran_order': False, 'shape': (6, 2), }",
    "{'descr': '<m8[s]', 'fortran_order': False, 'shape': (6, 4), }",
    "{'descr': '|b1', 'fortran_order': False, 'shape': (192,), }",
]


def mutate_weights(data, weights: dict[str, bytes], label: str) -> tuple[dict[str, bytes], dict]:
    """weights.npz members after one edit, and the members' compression."""
    weights = dict(weights)
    names = sorted(weights)
    op = data.draw(st.sampled_from(["replace", "elements", "elements", "retype", "reshape", "fortran", "delete",
                                    "add", "rename", "header", "flip", "truncate", "version", "compress"]),
                   label=f"{label}: edit")
    name = data.draw(st.sampled_from(names), label=f"{label}: member") if names else "w1.npy"
    raw = weights.get(name, H.npy_bytes(np.zeros((6, 4))))
    try:
        original = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception:  # an earlier edit broke it
        original = np.zeros((6, 4))
    compress = {}
    if op == "replace":
        weights[name] = H.npy_bytes(_array(data, original, label))
    elif op == "elements" and original.size and original.dtype.kind in "fiu":
        array = original.copy().reshape(-1)
        specials = INT_SPECIALS if array.dtype.kind in "iu" else FLOAT_SPECIALS
        for _ in range(data.draw(st.integers(1, 4), label=f"{label}: count")):
            i = data.draw(st.integers(0, array.size - 1), label=f"{label}: element")
            with np.errstate(all="ignore"):
                array[i] = np.array(data.draw(st.sampled_from(specials), label=f"{label}: value")).astype(array.dtype)
        weights[name] = H.npy_bytes(array.reshape(original.shape))
    elif op == "retype":
        dtype = data.draw(st.sampled_from(["<f4", "<f2", ">f8", "<i8", "<i4", "|u1", "|b1", "<c16", "<f8"]),
                          label=f"{label}: dtype")
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex to real
            weights[name] = H.npy_bytes(original.astype(dtype))
    elif op == "reshape":
        shapes = [(original.size,), (1, original.size), (original.size, 1), original.shape[::-1]]
        shapes += [(a, original.size // a) for a in range(2, 9) if original.size % a == 0]
        weights[name] = H.npy_bytes(original.reshape(data.draw(st.sampled_from(shapes), label=f"{label}: shape")))
    elif op == "fortran":
        weights[name] = H.npy_bytes(np.asfortranarray(original))
    elif op == "delete":
        weights.pop(name, None)
    elif op == "add":
        new = data.draw(st.sampled_from(["extra.npy", "w1", "x.npy", "a/b.npy", "../up.npy", ".npy", "w1.npy/",
                                         "linear1.matrix.npy.npy"]) | st.text(max_size=8).map(lambda s: s + ".npy"),
                        label=f"{label}: new member")
        weights[new] = H.npy_bytes(_array(data, original, label))
    elif op == "rename":
        new = data.draw(st.sampled_from(names + ["w1", "W1.npy", "other.npy", "b1.npz", "linear1.matrix.NPY"]),
                        label=f"{label}: new name")
        weights[new] = weights.pop(name, raw)
    elif op == "header":
        header = data.draw(st.sampled_from(NPY_HEADERS), label=f"{label}: npy header")
        payload = data.draw(st.sampled_from(["original", "none", "24 doubles", "192 bytes + 1"]), label=f"{label}: payload")
        body = {"original": original.tobytes(), "none": b"", "24 doubles": np.arange(24.0).tobytes(),
                "192 bytes + 1": bytes(193)}[payload]
        version = data.draw(st.sampled_from([(1, 0), (2, 0), (3, 0)]), label=f"{label}: version")
        weights[name] = H.npy_raw(header, body, version)
    elif op == "flip" and raw:
        for _ in range(data.draw(st.integers(1, 4), label=f"{label}: flips")):
            i = data.draw(st.integers(0, min(len(raw), 128) - 1), label=f"{label}: byte")
            raw = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255), label=f"{label}: xor")]) + raw[i + 1:]
        weights[name] = raw
    elif op == "truncate":
        weights[name] = raw[:data.draw(st.integers(0, len(raw)), label=f"{label}: cut")]
    elif op == "version":
        weights[name] = raw[:6] + bytes(data.draw(st.sampled_from([(2, 0), (3, 0), (0, 0), (1, 1), (255, 255)]),
                                                  label=f"{label}: version")) + raw[8:]
    elif op == "compress":
        compress[name] = zipfile.ZIP_DEFLATED
    return weights, compress


@FUZZ
@given(data=st.data())
def test_mutated_weights(world, data):
    """weights.npz edited (arrays of other shapes, dtypes or values, members deleted, added or
    renamed, .npy headers corrupted), digests recomputed."""
    weights, compress = dict(world.weights), {}
    for i in range(data.draw(st.sampled_from([1, 1, 1, 2, 3]), label="edits")):
        weights, more = mutate_weights(data, weights, f"weights edit {i}")
        compress.update(more)
    members = dict(world.members)
    if data.draw(st.integers(0, 19), label="replace the whole npz") == 9:  # 1 in 20
        members["weights.npz"] = data.draw(st.sampled_from([b"", b"PK\x03\x04", bytes(100)]) | st.binary(max_size=64),
                                           label="npz bytes")
    else:
        members["weights.npz"] = H.write_zip(weights, compressions=compress)
    note(f"weights members: {sorted(weights)}")
    art = H.artifact_bytes(copy.deepcopy(world.manifest), members)
    hostile(lambda: use_file(world, "artifact", "batch", art))


def raw_mutation(data, blob: bytes, label: str) -> bytes:
    """``blob`` with bytes flipped, cut, inserted, overwritten or repeated, nothing recomputed
    (positions often near the start or the end: zip headers, central directory, comment)."""
    for i in range(data.draw(st.integers(1, 4), label=f"{label}: edits")):
        n = len(blob)
        where = data.draw(st.sampled_from(["start", "end", "anywhere"]), label=f"{label} {i}: where")
        if n == 0:
            pos = 0
        elif where == "start":
            pos = data.draw(st.integers(0, min(n - 1, 200)), label=f"{label} {i}: pos")
        elif where == "end":
            pos = data.draw(st.integers(max(0, n - 400), n - 1), label=f"{label} {i}: pos")
        else:
            pos = data.draw(st.integers(0, n - 1), label=f"{label} {i}: pos")
        op = data.draw(st.sampled_from(["flip", "flip", "cut", "insert", "overwrite", "repeat", "delete"]),
                       label=f"{label} {i}: edit")
        if op == "flip" and n:
            xor = data.draw(st.integers(1, 255), label=f"{label} {i}: xor")
            blob = blob[:pos] + bytes([blob[pos] ^ xor]) + blob[pos + 1:]
        elif op == "cut":
            blob = blob[:pos]
        elif op == "insert":
            blob = blob[:pos] + data.draw(st.binary(min_size=1, max_size=16), label=f"{label} {i}: bytes") + blob[pos:]
        elif op == "overwrite":
            chunk = data.draw(st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff", b"PK\x05\x06"])
                              | st.binary(min_size=1, max_size=8), label=f"{label} {i}: bytes")
            blob = blob[:pos] + chunk + blob[pos + len(chunk):]
        elif op == "repeat":
            length = data.draw(st.integers(1, 64), label=f"{label} {i}: length")
            blob = blob[:pos] + blob[pos:pos + length] * 2 + blob[pos + length:]
        elif op == "delete":
            length = data.draw(st.integers(1, 64), label=f"{label} {i}: length")
            blob = blob[:pos] + blob[pos + length:]
    return blob


@FUZZ
@given(data=st.data())
def test_raw_mutated_artifact(world, data):
    """Bytes of the whole .hecc file changed, nothing recomputed."""
    blob = raw_mutation(data, world.artifact, "raw")
    hostile(lambda: use_file(world, "artifact", "batch", blob))


# --- targets 2 and 3: key and ciphertext files ----------------------------------------------------
def _container_hints(world: World, layout: str, kind: str) -> dict:
    f, other = world.files[layout], world.files["slots" if layout == "batch" else "batch"]
    header = json.loads(H.read_zip(f.data[kind])["header.json"])
    program, keyset = header["program"], header["keyset"]
    other_program = json.loads(H.read_zip(other.data[kind])["header.json"])["program"]
    count = st.sampled_from([0, 1, 2, 3, 4, 5, -1, 2 ** 31 - 1, 2 ** 31, 2 ** 63, 10 ** 30, 4096, 4097, 1.0, True,
                             "4", None, [4]])
    return {
        "kind": st.sampled_from(["secret", "eval", "input", "output", "keys", "", None]),
        "format": st.sampled_from(["hecc-keys", "hecc-ciphertexts", "hecc-artifact"]),
        "format_version": st.sampled_from([1, 2, 3, 2.0, "2", True, None]),
        "program": st.sampled_from([other_program, program.upper(), program[:-1], "0" * 64, program + "0"]),
        "program_layout": st.sampled_from(["batch", "slots", "packed", "auto", None]),
        "keyset": st.sampled_from([keyset.upper(), keyset + "0", "0" * 32, keyset[:-1]]),
        "layout": st.lists(st.lists(count, max_size=3), max_size=4) | st.sampled_from(
            [[[4]], [[1]], [[4], [4]], [[3]], [[1], [1], [1]], [[4, 1]], [[]], [], [[[4]]], [4], [[4]] * 1000]),
        "sizes": st.lists(count, max_size=4) | st.sampled_from([[10], [1, 1], [4096], [4097], [1] * 1000, [], [0]]),
        "members": st.dictionaries(st.sampled_from(["public", "secret", "relin", "galois", "b0/i0/0", "b1/i0/0",
                                                    "b0/i0/4", "header.json", "x"]),
                                   st.sampled_from(["0" * 64, "A" * 64, ""]), max_size=5),
    }


CT_NAMES = ["b0/i0/0", "b0/i0/1", "b0/i0/3", "b0/i0/4", "b0/i1/0", "b1/i0/0", "b2/i0/0", "b00/i0/0", "b0/i0/00",
            "b0/i0/0/", "b0/i0", "b999999999/i0/0", "b0/i9999/0", "b0/i0/999999999", "b-1/i0/0", "B0/I0/0"]
KEY_NAMES = ["public", "secret", "relin", "galois", "Public", "public ", "header.json", ""]
SEAL_FIELD_VALUES = {0: [0, 0xA15F, 0x5EA1, 0xFFFF], 1: [0, 15, 17, 255], 2: [0, 1, 3, 5, 255], 3: [0, 1, 2, 4, 255],
                     4: [0, 1, 2, 3, 255], 5: [1, 0xFFFF], 6: [0, 15, 16, 17, 2 ** 32, 2 ** 63, 2 ** 64 - 1]}


def _seal_members(members: list) -> list[int]:
    """Indices of members that hold a well-formed SEAL object."""
    out = []
    for i, (_, blob) in enumerate(members):
        try:
            H.seal_body(blob)
            if H.seal_fields(blob)[0] == H.SEAL_MAGIC:
                out.append(i)
        except Exception:  # not (any more) a SEAL object
            pass
    return out


def _body_edit(data, body: bytes, label: str) -> bytes:
    how = data.draw(st.sampled_from(["flip", "flip", "word", "truncate", "extend", "zero tail"]),
                    label=f"{label}: body edit")
    if len(body) < 8:  # an earlier edit emptied it
        how = "extend"
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4), label=f"{label}: flips")):
            near = data.draw(st.booleans(), label=f"{label}: near the start")
            i = data.draw(st.integers(0, min(len(body), 256) - 1 if near else len(body) - 1), label=f"{label}: byte")
            body = body[:i] + bytes([body[i] ^ data.draw(st.integers(1, 255), label=f"{label}: xor")]) + body[i + 1:]
        return body
    if how == "word":
        i = 8 * data.draw(st.integers(0, min(len(body), 512) // 8 - 1), label=f"{label}: word")
        word = data.draw(st.sampled_from([0, 1, 2, 3, 0xFFFFFFFFFFFFFFFF, 2 ** 63, 2 ** 32, 8192, 16384]),
                         label=f"{label}: value")
        return body[:i] + word.to_bytes(8, "little") + body[i + 8:]
    if how == "truncate":
        return body[:data.draw(st.integers(0, len(body) - 1), label=f"{label}: cut")]
    if how == "extend":
        return body + data.draw(st.sampled_from([bytes(8), bytes(65536), b"\xff" * 8]) | st.binary(max_size=32),
                                label=f"{label}: extension")
    cut = data.draw(st.integers(0, len(body) - 1), label=f"{label}: zeros from")
    return body[:cut] + bytes(len(body) - cut)


def _meta_edit(data, world: World, body: bytes, expected: list, label: str) -> bytes:
    """Ciphertext (or public key) metadata edited: parms_id of any level or program, NTT form,
    components, degree, primes, scale (each field kept or changed)."""
    others = [pid for g in LAYOUTS for pid in world.files[g].parms_ids]
    fields = {}
    if data.draw(st.booleans(), label=f"{label}: parms_id"):
        fields["parms_id"] = data.draw(st.sampled_from(others + [(0, 0, 0, 0), (2 ** 64 - 1,) * 4]), label=f"{label}: to")
    for name, values in (("ntt", [0, 1, 2, 255]), ("size", [0, 1, 2, 3, 4, 2 ** 32, 2 ** 64 - 1]),
                         ("degree", [0, 1, 4096, 8192, 16384, 32768, 2 ** 63]),
                         ("primes", [0, 1, 2, 3, 4, 5, 6, 64, 2 ** 32, 2 ** 64 - 1])):
        if data.draw(st.booleans(), label=f"{label}: {name}?"):
            fields[name] = data.draw(st.sampled_from(values), label=f"{label}: {name}")
    if data.draw(st.booleans(), label=f"{label}: scale?"):
        scale = expected[8]
        fields["scale"] = data.draw(st.sampled_from([0.0, -scale, scale * (1 + 1e-7), scale * (1 + 1e-5), scale * 2,
                                                     float("nan"), float("inf"), 5e-324, 1e308, 2.0 ** 26, 2.0 ** 40,
                                                     2.0 ** 80]), label=f"{label}: scale")
    return H.set_ct_meta(body, **fields)


def _listed(header) -> dict | None:
    """The header's member digests, when it still has them as a dict."""
    return header["members"] if isinstance(header, dict) and isinstance(header.get("members"), dict) else None


def mutate_container(data, world: World, layout: str, kind: str, label: str) -> bytes:
    """A key or ciphertext file after 1-3 edits of its header or members, digests recomputed
    (or, for a raw edit, the file's bytes changed with nothing recomputed)."""
    f = world.files[layout]
    parsed = H.read_zip(f.data[kind])
    header = json.loads(parsed.pop("header.json"))
    members = [[k, v] for k, v in parsed.items()]
    originals = {k: v for k, v in members}
    hints = _container_hints(world, layout, kind)
    ct = kind in ("input", "output")
    names = CT_NAMES if ct else KEY_NAMES
    compress, deep, raw = {}, 0, False
    pool = [(g, k) for g in LAYOUTS for k in ("eval", "secret", "input", "output")]
    ops = (["header"] * 3 + ["member bytes"] + ["seal header"] * 2 + ["rename", "delete", "add", "reorder"]
           + (["seal body"] * 3 + ["meta"] * 4 + ["forge"] * 2 + ["swap"] * 2 + ["batch"] if ct
              else ["seal body"] * 4 + ["meta"] + ["swap"] * 3))
    for i in range(data.draw(st.sampled_from([1, 1, 1, 2, 2, 3]), label=f"{label}: edits")):
        lab = f"{label} {i}"
        op = data.draw(st.sampled_from(ops), label=f"{lab}: edit")
        seal_ix = _seal_members(members)
        if op == "header":
            header = mutate_json(data, header, hints, f"{lab} header")
            deep = data.draw(st.sampled_from([500, 5000, 100000]), label=f"{lab}: nesting of a deep value")
        elif op == "member bytes" and members:
            j = data.draw(st.integers(0, len(members) - 1), label=f"{lab}: member")
            members[j][1] = raw_mutation(data, members[j][1], f"{lab} bytes")
        elif op == "seal header" and seal_ix:
            j = data.draw(st.sampled_from(seal_ix), label=f"{lab}: member")
            index = data.draw(st.integers(0, 6), label=f"{lab}: field")
            value = data.draw(st.sampled_from(SEAL_FIELD_VALUES[index] + [len(members[j][1]) + d for d in (-1, 1)]),
                              label=f"{lab}: value")
            members[j][1] = H.set_seal_field(members[j][1], index, value)
        elif op in ("seal body", "meta", "forge") and seal_ix:
            j = data.draw(st.sampled_from(seal_ix), label=f"{lab}: member")
            name, blob = members[j]
            reference = H.seal_body(originals.get(name, blob))
            expected = H.ct_meta(reference) if len(reference) >= H.CT_META.size else None
            if op == "forge" and expected is not None:
                # another ciphertext's body (another level, layout or kind) made to claim this one's metadata
                g, k = data.draw(st.sampled_from([p for p in pool if p[1] in ("input", "output")]), label=f"{lab}: from")
                donors = H.read_zip(world.files[g].data[k])
                donor = data.draw(st.sampled_from(sorted(n for n in donors if n != "header.json")), label=f"{lab}: donor")
                body = H.seal_body(donors[donor])
                body = H.set_ct_meta(body, parms_id=expected[:4], ntt=expected[4], size=expected[5],
                                     degree=expected[6], primes=expected[7], scale=expected[8])
            else:
                body = H.seal_body(blob)
                if op == "meta" and expected is not None and len(body) >= H.CT_META.size:
                    body = _meta_edit(data, world, body, expected, lab)
                else:
                    body = _body_edit(data, body, lab)
            mode = data.draw(st.sampled_from([0, 1, 2]), label=f"{lab}: compression")
            fields = H.seal_fields(blob)
            members[j][1] = H.seal_object(body, mode, fields[2], fields[3])
        elif op == "swap":
            g, k = data.draw(st.sampled_from(pool), label=f"{lab}: from file")
            donor = H.read_zip(world.files[g].data[k])
            donor.pop("header.json")
            dname = data.draw(st.sampled_from(sorted(donor)), label=f"{lab}: donor member")
            if members and data.draw(st.booleans(), label=f"{lab}: replace a member"):
                j = data.draw(st.integers(0, len(members) - 1), label=f"{lab}: member")
                members[j][1] = donor[dname]
            elif dname in {m[0] for m in members}:
                members = [[m[0], donor[dname] if m[0] == dname else m[1]] for m in members]
            else:
                members.append([dname, donor[dname]])
                if _listed(header) is not None:
                    header["members"][dname] = ""
        elif op == "rename" and members:
            j = data.draw(st.integers(0, len(members) - 1), label=f"{lab}: member")
            new = data.draw(st.sampled_from(names) | st.text(max_size=12), label=f"{lab}: new name")
            old = members[j][0]
            members[j][0] = new
            if data.draw(st.booleans(), label=f"{lab}: rename in the header") and _listed(header) is not None:
                header["members"] = {(new if k == old else k): v for k, v in header["members"].items()}
        elif op == "delete" and members:
            j = data.draw(st.integers(0, len(members) - 1), label=f"{lab}: member")
            old = members.pop(j)[0]
            if data.draw(st.booleans(), label=f"{lab}: delete in the header") and _listed(header) is not None:
                header["members"].pop(old, None)
        elif op == "add":
            new = data.draw(st.sampled_from(names) | st.text(max_size=12), label=f"{lab}: new member")
            if members and data.draw(st.booleans(), label=f"{lab}: copy a member"):
                content = members[data.draw(st.integers(0, len(members) - 1), label=f"{lab}: copy of member")][1]
            else:
                content = data.draw(st.binary(max_size=64), label=f"{lab}: content")
            members.append([new, content])
            if data.draw(st.booleans(), label=f"{lab}: list it in the header") and _listed(header) is not None:
                header["members"][new] = ""
        elif op == "reorder" and len(members) > 1:
            order = data.draw(st.permutations(range(len(members))), label=f"{lab}: order")
            if data.draw(st.booleans(), label=f"{lab}: move the contents, not the members"):
                # each name now holds another member's bytes (digests recomputed)
                members = [[m[0], members[k][1]] for m, k in zip(members, order)]
            else:
                members = [members[k] for k in order]
        elif op == "batch" and isinstance(header, dict) and isinstance(header.get("layout"), list) \
                and isinstance(header.get("sizes"), list):
            # one more batch: a copy of batch 0, with layout and sizes saying so
            b = len(header["layout"])
            for name, blob in list(members):
                if name.startswith("b0/"):
                    members.append([f"b{b}/" + name[3:], blob])
                    if _listed(header) is not None:
                        header["members"][f"b{b}/" + name[3:]] = ""
            header["layout"].append(header["layout"][0] if header["layout"] else [1])
            header["sizes"].append(data.draw(st.sampled_from([1, 2, 4096, 4097, 0]), label=f"{lab}: size"))
    if members and data.draw(st.integers(0, 14), label=f"{label}: compress a member?") == 7:  # 1 in 15
        j = data.draw(st.integers(0, len(members) - 1), label=f"{label}: compressed member")
        compress[members[j][0]] = data.draw(st.sampled_from([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                                             zipfile.ZIP_LZMA]), label=f"{label}: method")
    raw = data.draw(st.integers(0, 11), label=f"{label}: raw edits too?") == 5  # 1 in 12
    blob = H.container_bytes(header, [tuple(m) for m in members], deep=deep, compressions=compress)
    if raw:
        blob = raw_mutation(data, blob, f"{label} raw")
    note(f"{kind} header: {json.dumps(header, sort_keys=True, default=str)[:1500]}; members "
         f"{[(m[0], len(m[1])) for m in members]}")
    return blob


@pytest.mark.parametrize("kind, name", [
    ("eval", "eval.keys"),     # then Server() and evaluate
    ("secret", "secret.key"),  # in a fresh 0700 folder with mode 0600; then decrypt
    ("input", "input.ct"),     # the server evaluates it
    ("output", "result.ct"),   # the client decrypts it
])
@FUZZ
@given(data=st.data())
def test_mutated_keys_and_ciphertexts(world, kind, name, data):
    """A key or ciphertext file edited (header fields: layout/sizes, member names; SEAL members'
    bytes, headers and bodies, ciphertext metadata re-compressed or stored, bodies of other
    levels; members swapped with the other key file's or the other layout's), digests
    recomputed; then used as that kind of file."""
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    blob = mutate_container(data, world, layout, kind, name)
    hostile(lambda: use_file(world, kind, layout, blob))


# --- target 4: random bytes and random zips ---------------------------------------------------
MEMBER_NAMES = ["header.json", "manifest.json", "public", "secret", "relin", "galois", "b0/i0/0", "b0/i0/1",
                "weights.npz", "ir/tensor.hir", "ir/final.hir", "ir/final-slots.hir", "../evil", "/abs", "a/", ""]


def _random_content(data, world: World, kind: str, layout: str, label: str) -> bytes:
    how = data.draw(st.sampled_from(["bytes", "bytes", "header", "manifest", "seal", "npz"]), label=f"{label}: content")
    if how == "bytes":
        return data.draw(st.binary(max_size=300), label=f"{label}: bytes")
    if how == "header":
        base = json.loads(H.read_zip(world.files[layout].data["input" if kind == "artifact" else kind])["header.json"])
        return H.json_text(mutate_json(data, base, {}, f"{label} header"))
    if how == "manifest":
        return H.json_text(mutate_json(data, world.manifest, {}, f"{label} manifest"))
    if how == "seal":
        body = data.draw(st.binary(max_size=200), label=f"{label}: seal body")
        return H.seal_object(body, data.draw(st.sampled_from([0, 1, 2]), label=f"{label}: compression"))
    arrays = {data.draw(st.text(max_size=6), label=f"{label}: array name") + ".npy": H.npy_bytes(np.zeros(3))}
    return H.write_zip(arrays)


@FUZZ
@given(data=st.data())
def test_random_bytes_and_zips_as_every_kind_of_file(world, data):
    """Random bytes, random zips (random member names and contents, stored or compressed, with a
    random or a right digest comment), and prefixes of valid files, as an artifact, eval keys, a
    secret key, an input or a result file."""
    kind = data.draw(st.sampled_from(["artifact", "eval", "secret", "input", "output"]), label="kind")
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    how = data.draw(st.sampled_from(["bytes", "zip", "zip", "prefix"]), label="file")
    if how == "bytes":
        blob = data.draw(st.binary(max_size=2000) | st.sampled_from([b"", b"PK", b"PK\x05\x06" + bytes(18)]),
                         label="bytes")
    elif how == "prefix":
        valid = world.artifact if kind == "artifact" else world.files[layout].data[kind]
        blob = valid[:data.draw(st.integers(0, len(valid)), label="cut")] + data.draw(st.binary(max_size=64), label="tail")
    else:
        members = []
        for i in range(data.draw(st.integers(0, 5), label="members")):
            name = data.draw(st.sampled_from(MEMBER_NAMES)
                             | st.text(st.characters(blacklist_categories=("Cs",)), max_size=20), label=f"member {i}: name")
            members.append((name, _random_content(data, world, kind, layout, f"member {i}")))
        compression = data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                                                 zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]), label="compression")
        first = {"artifact": "manifest.json"}.get(kind, "header.json")
        head = next((m[1] for m in members if m[0] == first), members[0][1] if members else b"")
        comment = data.draw(st.sampled_from([H.COMMENT + H.sha256(head).encode(), b""]) | st.binary(max_size=80),
                            label="comment")
        blob = H.write_zip(members, comment, compression)
    hostile(lambda: use_file(world, kind, layout, blob))


def _password_flagged(blob: bytes) -> bytes:
    """The zip with the 'encrypted' flag set on every member in its central directory."""
    out, at = bytearray(blob), blob.find(b"PK\x01\x02")
    while at >= 0:
        out[at + 8] |= 0x1
        at = blob.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def test_members_flagged_as_password_protected_are_refused(world, tmp_path):
    """A zip member flagged as encrypted (a case the raw fuzzer found: zipfile raised a bare
    RuntimeError) is refused with a typed error in an artifact and in a key file."""
    path = tmp_path / "m.hecc"
    path.write_bytes(_password_flagged(world.artifact))
    with pytest.raises(UserError, match="password-protected"):
        hecc.load(str(path))
    keys = tmp_path / "eval.keys"
    keys.write_bytes(_password_flagged(world.files["batch"].data["eval"]))
    with pytest.raises(UserError, match="password-protected"):
        Server(world.files["batch"].program, str(keys))
