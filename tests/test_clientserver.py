"""The client/server split: four separate processes, the server without the secret key, files
bound to their program, and every kind of bad key or ciphertext file refused with its message."""
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import hecc
import hecc.cli
from hecc.clientserver import Client, Server, fingerprint, member_limits
from hecc.containers import read_container, write_container

F = TensorProto.FLOAT
HECC = shutil.which("hecc") or os.path.join(os.path.dirname(sys.executable), "hecc")


def _model(path, seed):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), n)
             for n, s in (("w1", (6, 4)), ("b1", (6,)), ("w2", (3, 6)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Mul", ["h", "h"], ["s"]),
             helper.make_node("Gemm", ["s", "w2"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info("logits", F, ["N", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    x = np.random.default_rng(1).uniform(-1, 1, (10, 4)).astype(np.float32)
    np.save(root / "x.npy", x)
    for name, seed in (("a", 0), ("b", 1)):
        model = _model(str(root / f"{name}.onnx"), seed)
        assert hecc.cli.main(["compile", model, "-o", str(root / f"{name}.hecc"), "--calibration",
                              str(root / "x.npy"), "-q"]) == 0
    return root, x


def _hecc(*args, cwd):
    proc = subprocess.run([HECC, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    assert "Traceback" not in proc.stderr
    return proc


@pytest.mark.parametrize("layout", ["batch", "slots"])
def test_four_processes_and_a_server_without_the_secret_key(setup, layout):
    """keygen picks the layout; encrypt, eval and decrypt follow the keys."""
    root, x = setup
    client, server = root / f"client-{layout}", root / f"server-{layout}"
    client.mkdir()
    server.mkdir()
    shutil.copy(root / "a.hecc", client / "a.hecc")
    assert _hecc("keygen", "a.hecc", "--out", "keys", "--layout", layout, cwd=client).returncode == 0
    assert _hecc("encrypt", "a.hecc", root / "x.npy", "--keys", "keys", "-o", "x.ct", cwd=client).returncode == 0
    # the server gets the artifact, the evaluation keys and the ciphertexts, nothing else
    for name, source in (("a.hecc", client / "a.hecc"), ("eval.keys", client / "keys" / "eval.keys"),
                         ("x.ct", client / "x.ct")):
        shutil.copy(source, server / name)
    hidden = root / f"vault-{layout}"
    os.rename(client, hidden)  # the secret key is out of the server process's reach
    try:
        proc = _hecc("eval", "a.hecc", "x.ct", "--eval-keys", "eval.keys", "-o", "y.ct", cwd=server)
        assert proc.returncode == 0, proc.stderr
        assert not any("secret" in f for f in os.listdir(server))
    finally:
        os.rename(hidden, client)
    shutil.copy(server / "y.ct", client / "y.ct")
    assert _hecc("decrypt", "a.hecc", "y.ct", "--keys", "keys", "-o", "y.npy", cwd=client).returncode == 0
    split = np.load(client / "y.npy")
    assert _hecc("run", "a.hecc", "--input", root / "x.npy", "--backend", "tenseal", "--output", "r.npy",
                 "--layout", layout, "-q", cwd=client).returncode == 0
    program = hecc.load(str(client / "a.hecc")).with_layout(layout)
    keys = read_container(str(client / "keys" / "eval.keys"), ("eval",), fingerprint(program),
                          member_limits(program))[1]
    assert ("galois" in keys) == (layout == "slots")
    together = np.load(client / "r.npy")
    np.testing.assert_array_equal(split.argmax(1), together.argmax(1))
    assert np.abs(split - together).max() <= 1e-3 * np.abs(together).max()
    reference = hecc.load(str(client / "a.hecc")).run(x)["logits"]
    assert np.abs(split - reference).max() <= 1e-3 * np.abs(reference).max()
    assert _hecc("decrypt", "a.hecc", "y.ct", "--keys", "keys", "-o", "c.npy", "--output-mode", "argmax",
                 cwd=client).returncode == 0
    np.testing.assert_array_equal(np.load(client / "c.npy"), reference.argmax(1))


@pytest.fixture(scope="module")
def files(setup, tmp_path_factory):
    root, x = setup
    work = tmp_path_factory.mktemp("files")
    a, b = hecc.load(str(root / "a.hecc")), hecc.load(str(root / "b.hecc"))
    Client(a, str(work / "ka")).keygen()
    Client(b, str(work / "kb")).keygen()
    Client(a, str(work / "ka")).encrypt({"x": x}, str(work / "xa.ct"))
    Server(a, str(work / "ka" / "eval.keys")).evaluate(str(work / "xa.ct"), str(work / "ya.ct"))
    return work, a, b


def _truncated(path, out):
    data = open(path, "rb").read()
    open(out, "wb").write(data[: len(data) // 2])
    return out


def _corrupted(path, out):
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    name = next(n for n in members if n != "header.json")
    members[name] = bytes([members[name][0] ^ 1]) + members[name][1:]
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return out


def test_bad_key_and_ciphertext_files_each_get_their_message(files):
    work, a, b = files
    cases = [
        (lambda: Server(a, str(work / "ka" / "secret.key")), hecc.KeyFileError, "must never receive the secret key"),
        (lambda: Server(a, str(work / "kb" / "eval.keys")), hecc.KeyFileError, "belongs to another model"),
        (lambda: Server(a, _truncated(work / "ka" / "eval.keys", work / "t.keys")), hecc.KeyFileError, "truncated"),
        (lambda: Server(a, _corrupted(work / "ka" / "eval.keys", work / "c.keys")), hecc.KeyFileError, "corrupted"),
        (lambda: Server(a, str(work / "xa.ct")), hecc.KeyFileError, "is an encrypted-input file, not an evaluation-key file"),
        (lambda: Server(b, str(work / "kb" / "eval.keys")).evaluate(str(work / "xa.ct"), str(work / "o.ct")),
         hecc.CiphertextFileError, "belongs to another model"),
        (lambda: Server(a, str(work / "ka" / "eval.keys")).evaluate(_truncated(work / "xa.ct", work / "t.ct"),
                                                                  str(work / "o.ct")), hecc.CiphertextFileError, "truncated"),
        (lambda: Server(a, str(work / "ka" / "eval.keys")).evaluate(_corrupted(work / "xa.ct", work / "c.ct"),
                                                                  str(work / "o.ct")), hecc.CiphertextFileError, "corrupted"),
        (lambda: Client(a, str(work / "ka")).decrypt(str(work / "xa.ct")), hecc.CiphertextFileError,
         "is an encrypted-input file, not an encrypted-result file"),
        (lambda: Client(b, str(work / "kb")).decrypt(str(work / "ya.ct")), hecc.CiphertextFileError, "belongs to another model"),
        (lambda: Client(a, str(work / "none")).decrypt(str(work / "ya.ct")), hecc.KeyFileError, "no such file"),
    ]
    for action, error, message in cases:
        with pytest.raises(error, match=message):
            action()


def test_valid_container_with_garbage_ciphertexts_is_refused_before_seal_crashes(files):
    work, a, _ = files
    header, members = read_container(str(work / "xa.ct"), ("input",), fingerprint(a), member_limits(a))
    rng = np.random.default_rng(0)
    garbage = {k: rng.bytes(len(v)) for k, v in members.items()}
    write_container(str(work / "g.ct"), "input", fingerprint(a), a.layout, header["keyset"], garbage,
                    {"sizes": header["sizes"], "layout": header["layout"]})
    with pytest.raises(hecc.CiphertextFileError, match="not a ciphertext of this program"):
        Server(a, str(work / "ka" / "eval.keys")).evaluate(str(work / "g.ct"), str(work / "o.ct"))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_as_key_or_ciphertext_files_give_typed_errors(tmp_path_factory, data):
    work = tmp_path_factory.getbasetemp() / "fuzz"
    work.mkdir(exist_ok=True)
    path = work / "f.bin"
    path.write_bytes(data)
    program = FUZZ_PROGRAM[0]
    for kinds, error in ((("eval",), hecc.KeyFileError), (("input",), hecc.CiphertextFileError)):
        with pytest.raises(error):
            read_container(str(path), kinds, fingerprint(program), member_limits(program))


FUZZ_PROGRAM = []


@pytest.fixture(autouse=True, scope="module")
def _fuzz_program(setup):
    FUZZ_PROGRAM.append(hecc.load(str(setup[0] / "a.hecc")))


def test_inputs_outside_the_calibrated_range_warn_with_the_count(setup):
    root, x = setup
    prog = hecc.load(str(root / "a.hecc"))
    with pytest.warns(hecc.HeccWarning, match=r"^3 value\(s\) of input 'x' lie outside"):
        prog.run(np.where(np.arange(x.size).reshape(x.shape) < 3, 1.2, x), backend="sim")
