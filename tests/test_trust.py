"""Issue 11's findings, each in the form it was found: the secret key, key sets, files hecc
writes, hostile artifacts and ciphertexts. Every one now gives the right answer or exit 2 with
one message, leaves nothing in $TMPDIR and changes no file it was not asked to write."""
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
import tenseal.sealapi as seal
from onnx import TensorProto, helper, numpy_helper

import hecc
import hostile
from hecc.backends import seal_bytes
from hecc.backends.tenseal import TensealBackend
from hecc.clientserver import fingerprint, member_limits
from hecc.containers import read_container, write_container

HECC = shutil.which("hecc") or os.path.join(os.path.dirname(sys.executable), "hecc")


def _model(path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), n)
             for n, s in (("w1", (6, 4)), ("b1", (6,)), ("w2", (3, 6)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Mul", ["h", "h"], ["s"]),
             helper.make_node("Gemm", ["s", "w2"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A compiled model, two key sets (keys/, keys2/), x.ct encrypted under keys, y.ct its result;
    every hecc process runs with TMPDIR pointing at an empty folder that must stay empty."""
    root = tmp_path_factory.mktemp("trust")
    tmp = root / "tmpdir"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    _model(str(root / "m.onnx"))
    x = np.random.default_rng(1).uniform(-1, 1, (4, 4)).astype(np.float32)
    np.save(root / "in.npy", x)

    def run(*args, ok=True):
        proc = subprocess.run([HECC, *map(str, args)], cwd=root, env=env, capture_output=True, text=True)
        assert "Traceback" not in proc.stderr, proc.stderr
        if ok:
            assert proc.returncode == 0, proc.stderr
        return proc
    run("compile", "m.onnx", "-o", "cn.hecc", "--calibration", "in.npy", "-q")
    run("keygen", "cn.hecc", "--out", "keys", "-q")
    run("keygen", "cn.hecc", "--out", "keys2", "-q")
    run("encrypt", "cn.hecc", "in.npy", "--keys", "keys", "-o", "x.ct", "-q")
    run("eval", "cn.hecc", "x.ct", "--eval-keys", "keys/eval.keys", "-o", "y.ct", "-q")
    run("decrypt", "cn.hecc", "y.ct", "--keys", "keys", "-o", "y.npy", "-q")
    return root, run, x, tmp


def _refused(proc, message):
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert proc.stderr.count("hecc: error:") == 1


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_the_split_gives_the_right_answer_and_nothing_lands_in_tmpdir(world):
    root, run, x, tmp = world
    expected = hecc.load(str(root / "cn.hecc")).run(x)["logits"]
    y = np.load(root / "y.npy")
    assert np.abs(y - expected).max() <= 1e-3 * np.abs(expected).max()
    run("run", "cn.hecc", "--input", "in.npy", "--backend", "tenseal", "--output", "r.npy", "-q")
    assert os.listdir(tmp) == []


def test_eval_output_naming_the_secret_key_is_refused(world):
    root, run, _, _ = world
    before = _digest(root / "keys" / "secret.key")
    _refused(run("eval", "cn.hecc", "x.ct", "--eval-keys", "keys/eval.keys", "-o", "keys/secret.key", ok=False),
             "is a hecc key file")
    _refused(run("eval", "cn.hecc", "x.ct", "--eval-keys", "keys/eval.keys", "-o", "keys/secret.key",
                 "--force", ok=False), "is a hecc key file")
    assert _digest(root / "keys" / "secret.key") == before


def test_outputs_never_replace_inputs_or_files_of_another_kind(world):
    root, run, _, _ = world
    before = _digest(root / "in.npy")
    _refused(run("run", "cn.hecc", "--input", "in.npy", "--output", "in.npy", ok=False), "also an input")
    _refused(run("run", "cn.hecc", "--input", "in.npy", "--output", "in.npy", "--force", ok=False), "also an input")
    _refused(run("encrypt", "cn.hecc", "in.npy", "--keys", "keys", "-o", "cn.hecc", ok=False), "also an input")
    assert _digest(root / "in.npy") == before
    (root / "notes.txt").write_text("mine")
    (root / "notes.npy").write_text("mine too")
    for args in (("run", "cn.hecc", "--input", "in.npy", "--stats", "notes.txt"),
                 ("inspect", "cn.hecc", "--graph", "notes.txt"),
                 ("inspect", "cn.hecc", "--levels", "notes.txt"),
                 ("encrypt", "cn.hecc", "in.npy", "--keys", "keys", "-o", "notes.txt"),
                 ("eval", "cn.hecc", "x.ct", "--eval-keys", "keys/eval.keys", "-o", "notes.txt"),
                 ("decrypt", "cn.hecc", "y.ct", "--keys", "keys", "-o", "notes.npy")):
        _refused(run(*args, ok=False), "exists and is not a file hecc wrote")
    assert (root / "notes.txt").read_text() == "mine"
    # files of the kind hecc writes are replaced (the README says so), and --force replaces others
    for _ in range(2):
        run("run", "cn.hecc", "--input", "in.npy", "--output", "o.npy", "--stats", "s.json", "-q")
        run("inspect", "cn.hecc", "--graph", "g.svg", "--levels", "l.png")
    run("run", "cn.hecc", "--input", "in.npy", "--stats", "notes.txt", "--force", "-q")
    assert json.loads((root / "notes.txt").read_text())["backend"] == "reference"


def test_missing_output_folder_is_refused_before_any_work(world):
    root, run, _, tmp = world
    _refused(run("run", "cn.hecc", "--input", "in.npy", "--backend", "tenseal", "--stats", "nodir/s.json",
                 ok=False), "does not exist")
    _refused(run("encrypt", "cn.hecc", "in.npy", "--keys", "keys", "-o", "nodir/x.ct", ok=False), "does not exist")
    assert os.listdir(tmp) == []
    assert not [f for f in os.listdir(root) if f.endswith(".tmp")]


def test_keys_folder_is_private_and_the_secret_key_0600(world):
    root, run, _, _ = world
    assert stat.S_IMODE(os.stat(root / "keys").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "keys" / "secret.key").st_mode) == 0o600
    (root / "open").mkdir(mode=0o755)
    os.chmod(root / "open", 0o755)
    run("keygen", "cn.hecc", "--out", "open", "-q")  # an empty folder is made private
    assert stat.S_IMODE(os.stat(root / "open").st_mode) == 0o700
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o755)
    (root / "shared" / "photo.jpg").write_bytes(b"x")
    _refused(run("keygen", "cn.hecc", "--out", "shared", ok=False), "open to other users")
    shutil.copytree(root / "keys", root / "loose")
    os.chmod(root / "loose" / "secret.key", 0o644)
    _refused(run("decrypt", "cn.hecc", "y.ct", "--keys", "loose", "-o", "z.npy", ok=False), "chmod 600")


def test_a_second_keygen_into_the_same_folder_fails_while_the_first_holds_it(world):
    root, run, _, _ = world
    folder = root / "busy"
    folder.mkdir(mode=0o700)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running keygen holds
        _refused(run("keygen", "cn.hecc", "--out", "busy", ok=False), "another hecc keygen")
        assert os.listdir(folder) == []
    finally:
        os.close(fd)
    both = [subprocess.Popen([HECC, "keygen", "cn.hecc", "--out", "race", "-q"], cwd=root,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in both]
    assert sorted(code for code, _ in results) == [0, 2], results
    assert any("another hecc keygen" in err or "exists" in err for _, err in results)


def test_files_of_another_key_set_are_refused_naming_both(world):
    root, run, _, _ = world
    keyset = json.loads(zipfile.ZipFile(root / "keys2" / "secret.key").read("header.json"))["keyset"]
    proc = run("decrypt", "cn.hecc", "y.ct", "--keys", "keys2", "-o", "w.npy", ok=False)
    _refused(proc, f"are key set {keyset}")
    assert "was made under key set" in proc.stderr
    _refused(run("eval", "cn.hecc", "x.ct", "--eval-keys", "keys2/eval.keys", "-o", "w.ct", ok=False),
             f"are key set {keyset}")
    assert not (root / "w.npy").exists() and not (root / "w.ct").exists()


def _crafted_input(root, tamper):
    """x.ct with its one batch's ciphertexts replaced by ``tamper(seal, backend, ct)``'s."""
    prog = hecc.load(str(root / "cn.hecc"))
    limits = member_limits(prog)
    secret_header, keys = read_container(str(root / "keys" / "secret.key"), ("secret",), fingerprint(prog), limits)
    header, members = read_container(str(root / "x.ct"), ("input",), fingerprint(prog), limits)
    backend = TensealBackend(prog.graph)
    s = backend.connect(keys)
    crafted = {}
    for name, data in members.items():
        ct = seal_bytes.from_bytes(seal.Ciphertext(), s.context, seal_bytes.inflate(data, 1 << 26))
        crafted[name] = seal_bytes.to_bytes(tamper(s, ct))
    path = root / "crafted.ct"
    write_container(str(path), "input", fingerprint(prog), prog.layout, header["keyset"], crafted,
                    {"sizes": header["sizes"], "layout": header["layout"]})
    return path


def _lower(s, ct):
    s.evaluator.mod_switch_to_next_inplace(ct)
    return ct


def _three_components(s, ct):
    out = seal.Ciphertext()
    s.evaluator.multiply(ct, ct, out)
    return out


def _rescaled(s, ct):
    ct.scale = ct.scale * 3
    return ct


@pytest.mark.parametrize("tamper, message", [(_lower, "the program expects it at level 0"),
                                             (_three_components, "has 3 components"),
                                             (_rescaled, "has scale")])
def test_ciphertexts_at_another_level_size_or_scale_are_refused_before_seal(world, tamper, message):
    root, run, _, _ = world
    path = _crafted_input(root, tamper)
    _refused(run("eval", "cn.hecc", path.name, "--eval-keys", "keys/eval.keys", "-o", "o.ct", ok=False), message)


def _rewrite(src, dst, edit, head_name="header.json"):
    """Edit a key, ciphertext or artifact file's header (manifest) and members, with every hash
    recomputed, as an attacker can."""
    members = hostile.read_zip(src.read_bytes())
    head = json.loads(members.pop(head_name))
    edit(head, members)
    head["members"] = {k: hostile.sha256(v) for k, v in members.items()}
    build = hostile.artifact_bytes if head_name == "manifest.json" else hostile.container_bytes
    dst.write_bytes(build(head, members))


@pytest.mark.parametrize("edit, message", [
    (lambda h, m: h.update(sizes=[10 ** 9]), "claims 1000000000 inputs"),
    (lambda h, m: h.update(sizes=[-1]), "invalid sizes"),
    (lambda h, m: h.update(layout=[[5]]), "holds ciphertext groups [5]"),
    (lambda h, m: h.update(layout="x"), "invalid layout"),
    (lambda h, m: h.update(keyset="0" * 32), "was made under key set"),
])
def test_crafted_result_headers_are_refused_by_decrypt(world, edit, message):
    root, run, _, _ = world
    _rewrite(root / "y.ct", root / "bad.ct", edit)
    _refused(run("decrypt", "cn.hecc", "bad.ct", "--keys", "keys", "-o", "bad.npy", ok=False), message)


def _params(name, values):
    """An edit setting the list attribute ``name`` of the slots program's ckks.params op."""
    def edit(manifest, members):
        text = members["ir/final-slots.hir"].decode()
        head, rest = text.split("\n", 1)
        start = head.index(f"{name} = [")
        end = head.index("]", start)
        members["ir/final-slots.hir"] = (head[:start] + f"{name} = {values}" + head[end + 1:] + "\n" + rest).encode()
    return edit


def _galois(steps):
    return _params("galois_steps", steps)


@pytest.mark.parametrize("edit, command, message", [
    (lambda m, _: m.update(stages=["tensor", "final"]), "inspect", "layout slots has no program among the stages"),
    (_params("coeff_modulus_bits", [50]), "keygen", "has no special prime, which a program that rotates or relinearizes needs"),
    (lambda m, _: m.update(stages="final"), "inspect", "invalid field(s) stages"),
    (lambda m, _: m.update(layouts=["batch", "slots", "cloud"]), "inspect", "invalid field(s) layouts"),
    (lambda m, _: m.update(layouts=7), "keygen", "invalid field(s) layouts"),
    (lambda m, _: m.update(inputs=[{"name": 3}]), "inspect", "invalid field(s) inputs"),
    (lambda m, _: m.update(surprise=1), "inspect", "unknown field(s) surprise"),
    (_galois(list(range(1, 301))), "keygen", "keys must be exactly the steps it uses"),
    (_galois([0]), "keygen", "rotation steps must be distinct and between 1"),
    (_galois([-1]), "keygen", "rotation steps must be distinct and between 1"),
    (lambda m, _: m.update(weight_aliases={"w": "nothing"}), "inspect", "does not name one stored array"),
    (lambda m, _: m.update(weight_aliases=["w"]), "inspect", "invalid field(s) weight_aliases"),
    (lambda m, _: m.update(format_version=4), "inspect", "it reads versions 2, 3"),
])
def test_edited_manifests_and_programs_are_refused(world, edit, command, message):
    root, run, _, _ = world
    _rewrite(root / "cn.hecc", root / "edited.hecc", edit, "manifest.json")
    args = ("keygen", "edited.hecc", "--out", "edited-keys", "--layout", "slots") if command == "keygen" else \
        ("inspect", "edited.hecc")
    _refused(run(*args, ok=False), message)
    assert not (root / "edited-keys").exists() or os.listdir(root / "edited-keys") == []


def test_equal_weight_arrays_are_stored_once_and_load_as_one(world, tmp_path):
    """An artifact stores an array once however many constants hold it (the slots and packed
    programs share their weight tables): the others are aliases in the manifest, and loading
    gives them the one array."""
    from hecc import artifact
    root = world[0]
    art = hecc.load(root / "cn.hecc").artifact
    name, array = max(art.constants.items(), key=lambda kv: kv[1].nbytes)
    art.constants["a.copy"] = array.copy()
    artifact.save(art, str(tmp_path / "dup.hecc"))
    back = artifact.load(str(tmp_path / "dup.hecc"))
    assert back.manifest["weight_aliases"]["a.copy"] in art.constants
    assert back.constants["a.copy"] is back.constants[back.manifest["weight_aliases"]["a.copy"]]
    assert set(back.constants) == set(art.constants)
    assert all(np.array_equal(back.constants[k], v) for k, v in art.constants.items())
    del art.constants["a.copy"]
    artifact.save(art, str(tmp_path / "plain.hecc"))
    assert os.path.getsize(tmp_path / "dup.hecc") < os.path.getsize(tmp_path / "plain.hecc") + 4096


def test_a_format_2_artifact_still_loads(world):
    """Artifacts written before equal weights were stored once (format 2: no aliases) load."""
    root, run, _, _ = world

    def as_format_2(manifest, members):  # every array stored under each of its names
        weights = dict(np.load(io.BytesIO(members["weights.npz"])))
        for alias, name in manifest.pop("weight_aliases", {}).items():
            weights[alias] = weights[name]
        buf = io.BytesIO()
        np.savez(buf, **weights)
        members["weights.npz"] = buf.getvalue()
        manifest["format_version"] = 2
    _rewrite(root / "cn.hecc", root / "v2.hecc", as_format_2, "manifest.json")
    manifest = json.loads(zipfile.ZipFile(root / "v2.hecc").read("manifest.json"))
    assert manifest["format_version"] == 2 and "weight_aliases" not in manifest
    old, new = hecc.load(root / "v2.hecc"), hecc.load(root / "cn.hecc")
    assert set(old.artifact.constants) == set(new.artifact.constants)
    x = np.random.default_rng(2).uniform(-1, 1, (3, 4))
    for layout in new.layouts:
        assert np.array_equal(old.with_layout(layout).run(x, backend="sim")["logits"],
                              new.with_layout(layout).run(x, backend="sim")["logits"])


def test_complex_weights_are_refused(world):
    """A program computes on real numbers; complex weights (their imaginary parts would be
    dropped on the way) are refused on loading."""
    root, run, _, _ = world

    def edit(manifest, members):
        weights = dict(np.load(io.BytesIO(members["weights.npz"])))
        name = sorted(weights)[0]
        weights[name] = weights[name].astype(np.complex128) * 1j
        buf = io.BytesIO()
        np.savez(buf, **weights)
        members["weights.npz"] = buf.getvalue()
    _rewrite(root / "cn.hecc", root / "complex.hecc", edit, "manifest.json")
    _refused(run("inspect", "complex.hecc", ok=False), "are complex numbers")


def test_keygen_refuses_more_evaluation_keys_than_its_budget(world):
    root, run, _, _ = world
    _refused(run("keygen", "cn.hecc", "--out", "budget", "--layout", "slots", "--max-key-bytes", "1", ok=False),
             "over the budget of 1 MiB")
    assert not (root / "budget" / "eval.keys").exists()


def test_an_npy_header_declaring_a_huge_shape_is_refused(world):
    root, run, _, _ = world
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12, 4)})
    (root / "huge.npy").write_bytes(buf.getvalue() + b"\0" * 64)
    proc = run("run", "cn.hecc", "--input", "huge.npy", ok=False)
    assert proc.returncode == 2 and "MemoryError" not in proc.stderr, proc.stderr
