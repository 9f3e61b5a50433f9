"""The command line: the compile/inspect/run/opt contract, exit codes and error messages."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import assert_close

F = TensorProto.FLOAT


def _save(model, path):
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    """A small dense network with a symbolic batch: x(N,4) -> Gemm -> x*x -> Gemm -> Softmax."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (5, 4)), ("b1", (5,)), ("w2", (3, 5)), ("b2", (3,)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Mul", ["h", "h"], ["s"]),
             helper.make_node("Gemm", ["s", "w2", "b2"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info("logits", F, ["N", 3]),
                               helper.make_tensor_value_info("probs", F, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = _save(model, tmp_path / "tiny.onnx")
    x = rng.standard_normal((7, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = ort.InferenceSession(path).run(None, {"x": x})
    return path, str(tmp_path / "x.npy"), expected


def test_compile_inspect_run(tmp_path, tiny, run_cli):
    model, x, (logits, probs) = tiny
    out = tmp_path / "tiny.hecc"
    code, stdout, stderr = run_cli("compile", model, "-o", out)
    assert code == 0, stderr
    assert "inputs: x 1x4" in stdout
    code, stdout, _ = run_cli("inspect", out, "--stage", "tensor")
    assert code == 0 and '"tensor.softmax"' in stdout and '"hecc.input"' in stdout
    assert '"ckks.' not in stdout
    code, final, _ = run_cli("inspect", out)
    assert code == 0 and final.startswith('"ckks.params"') and '"ckks.decrypt"' in final
    assert run_cli("inspect", out, "--stage", "final")[1] == final
    assert '"ckks.linear"' in run_cli("inspect", out, "--stage", "ckks")[1]
    code, _, stderr = run_cli("run", out, "--input", x, "--output", tmp_path / "y.npy",
                              "--backend", "reference", "--stats", tmp_path / "s.json")
    assert code == 0, stderr
    assert_close(np.load(tmp_path / "y.npy"), logits, 1e-5)
    assert json.loads((tmp_path / "s.json").read_text())["inputs"] == 7
    code, _, _ = run_cli("run", out, "--input", f"x={x}", "-o", tmp_path / "y.npz")  # -o, like the others
    assert code == 0
    with np.load(tmp_path / "y.npz") as npz:
        assert sorted(npz.files) == ["logits", "probs"]
        assert_close(npz["probs"], probs, 1e-5)
    code, stdout, _ = run_cli("run", out, "--input", x)
    assert code == 0 and "logits: shape 7x3" in stdout


def test_print_after_all(tiny, tmp_path, run_cli):
    code, _, stderr = run_cli("compile", tiny[0], "-o", tmp_path / "a.hecc", "--print-after-all")
    assert code == 0
    assert "IR after canonicalize" in stderr and "IR after eliminate-dead-code" in stderr


def test_opt_runs_passes_on_text(tmp_path, run_cli):
    here = os.path.join(os.path.dirname(__file__), "passes", "eliminate-dead-code")
    code, stdout, _ = run_cli("opt", os.path.join(here, "dead_ops.hir"), "-p", "eliminate-dead-code")
    assert code == 0
    with open(os.path.join(here, "dead_ops.expected.hir")) as f:
        assert stdout == f.read()
    code, _, stderr = run_cli("opt", os.path.join(here, "dead_ops.hir"), "-p", "canonicalize,bogus")
    assert code == 2 and "unknown pass(es) bogus" in stderr
    bad = tmp_path / "bad.hir"
    bad.write_text('%0 = "hecc.input"() {name = "x"} : () -> tensor<1x4, secret>\n%1 = oops\n')
    code, _, stderr = run_cli("opt", bad, "-p", "canonicalize")
    assert code == 2 and f"{bad}:2:6:" in stderr


def _unsupported_model(tmp_path):
    nodes = [helper.make_node("MaxPool", ["x"], ["a"], kernel_shape=[2, 2], name="pool1"),
             helper.make_node("Exp", ["a"], ["b"], name="exp1"),
             helper.make_node("MaxPool", ["b"], ["y"], kernel_shape=[1, 1], name="pool2")]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", F, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", F, [1, 1, 3, 3])])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "bad.onnx")


def test_two_unsupported_op_types_in_one_message(tmp_path, run_cli):
    code, _, stderr = run_cli("compile", _unsupported_model(tmp_path))
    assert code == 2
    assert "2 unsupported op type(s)" in stderr
    assert "Exp: node(s) exp1" in stderr and "MaxPool: node(s) pool1, pool2" in stderr
    assert stderr.count("hecc: error:") == 1


def _corrupt(path, tmp_path):
    """An artifact with one byte of its weights changed, the zip itself still valid."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    text = bytearray(members["ir/tensor.hir"])
    text[text.index(b"tensor<1x5")] = ord(b" ")
    members["ir/tensor.hir"] = bytes(text)
    assert members["ir/tensor.hir"] != zipfile.ZipFile(path).read("ir/tensor.hir")
    out = tmp_path / "tampered.hecc"
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return out


def _unencryptable_model(tmp_path):
    """An encrypted matrix times an encrypted vector (rank 1): no CKKS lowering."""
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("a", F, [2, 2]),
                                            helper.make_tensor_value_info("b", F, [2])],
                              [helper.make_tensor_value_info("y", F, [2])])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                 tmp_path / "mm.onnx")


def test_model_that_cannot_be_encrypted_still_runs_on_reference(tmp_path, run_cli):
    art = tmp_path / "mm.hecc"
    code, stdout, _ = run_cli("compile", _unencryptable_model(tmp_path), "-o", art)
    assert code == 0 and "not compiled for encryption" in stdout and "encrypted vector (rank 1)" in stdout
    np.save(tmp_path / "a.npy", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    np.save(tmp_path / "b.npy", np.array([1.0, 1.0], np.float32))
    code, stdout, _ = run_cli("run", art, "--input", f"a={tmp_path / 'a.npy'}", "--input",
                              f"b={tmp_path / 'b.npy'}")
    assert code == 0 and "[3. 7.]" in stdout
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    for argv, message in [(("inspect", art, "--stage", "ckks"), "has no 'ckks' stage"),
                          (("run", art, "--input", f"a={tmp_path / 'x.npy'}", "--input",
                            f"b={tmp_path / 'x.npy'}", "--backend", "sim"), "has no CKKS program")]:
        code, _, stderr = run_cli(*argv)
        assert code == 2 and message in stderr and "Traceback" not in stderr


def test_user_errors_exit_2_without_traceback(tmp_path, tiny, run_cli):
    model, x, _ = tiny
    art = tmp_path / "tiny.hecc"
    assert run_cli("compile", model, "-o", art)[0] == 0
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 10)
    truncated = tmp_path / "truncated.hecc"
    truncated.write_bytes(art.read_bytes()[:200])
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5), np.float32))
    np.save(tmp_path / "text.npy", np.array([["a", "b", "c", "d"]]))
    np.save(tmp_path / "inf.npy", np.array([[1.0, np.inf, 0.0, 0.0]], np.float32))
    onnx_bytes = open(model, "rb").read()
    (tmp_path / "cut.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    dynamic = onnx.load(model)
    dynamic.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "features"
    onnx.save(dynamic, tmp_path / "dynamic.onnx")
    np.save(tmp_path / "nan.npy", np.full((2, 4), np.nan, np.float32))
    cases = [
        (("compile", tmp_path / "missing.onnx"), "no such file"),
        (("compile", tmp_path / "garbage.onnx"), "not a readable ONNX model"),
        (("compile", tmp_path / "cut.onnx"), "not a readable ONNX model"),
        (("compile", tmp_path / "dynamic.onnx"), "dynamic dimension 'features' at axis 1"),
        (("run", art, "--input", tmp_path / "text.npy"), "has dtype <U1, not numbers"),
        (("run", art, "--input", tmp_path / "inf.npy"), "contains 1 NaN or infinite value(s)"),
        (("compile", model, "-o", tmp_path / "notes.txt"), "exists and is not a file hecc wrote"),
        (("inspect", truncated), "not a hecc artifact or corrupted"),
        (("inspect", _corrupt(art, tmp_path)), "does not match its sha256"),
        (("inspect", model), "not a hecc artifact"),
        (("run", art, "--input", tmp_path / "wrong.npy"), "has shape 2x5; expected Bx4"),
        (("run", art, "--input", tmp_path / "nan.npy"), "contains 8 NaN or infinite value(s)"),
        (("run", art, "--input", tmp_path / "nope.npy"), "no such file"),
        (("run", art, "--input", "y=" + x), "unknown input(s) y"),
        (("run", art, "--input", x, "--output", tmp_path / "notes.txt"), "use a .npy"),
        (("compile", model, "-o", tmp_path / "w.hecc", "--weight-scale-bits", "99"), "weight-scale-bits must be an integer from 8 to 60"),
        (("run", art, "--input", x, "--backend", "gpu"), "invalid choice"),
        (("frobnicate",), "invalid choice"),
    ]
    for argv, message in cases:
        code, _, stderr = run_cli(*argv)
        assert code == 2, (argv, stderr)
        assert message in stderr, (argv, stderr)
        assert "Traceback" not in stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_client_server_commands_refuse_bad_files_with_exit_2(tmp_path, tiny, run_cli):
    model, x, _ = tiny
    art = tmp_path / "t.hecc"
    assert run_cli("compile", model, "-o", art, "--calibration", x, "-q")[0] == 0
    assert run_cli("keygen", art, "--out", tmp_path / "keys")[0] == 0
    assert run_cli("encrypt", art, x, "--keys", tmp_path / "keys", "-o", tmp_path / "x.ct")[0] == 0
    (tmp_path / "noise.bin").write_bytes(b"\x00\x01garbage" * 50)
    (tmp_path / "mine.txt").write_text("mine")
    cases = [
        (("keygen", art, "--out", tmp_path / "keys"), "exists; keys are not overwritten"),
        (("eval", art, tmp_path / "x.ct", "--eval-keys", tmp_path / "keys" / "secret.key", "-o", tmp_path / "y.ct"),
         "must never receive the secret key"),
        (("eval", art, tmp_path / "noise.bin", "--eval-keys", tmp_path / "keys" / "eval.keys", "-o", tmp_path / "y.ct"),
         "not an encrypted-input file, or truncated"),
        (("eval", art, tmp_path / "x.ct", "--eval-keys", tmp_path / "noise.bin", "-o", tmp_path / "y.ct"),
         "not an evaluation-key file, or truncated"),
        (("decrypt", art, tmp_path / "x.ct", "--keys", tmp_path / "keys", "-o", tmp_path / "y.npy"),
         "is an encrypted-input file, not an encrypted-result file"),
        (("encrypt", art, x, "--keys", tmp_path / "keys", "-o", tmp_path / "mine.txt"),
         "exists and is not a file hecc wrote"),
    ]
    for argv, message in cases:
        code, _, stderr = run_cli(*argv)
        assert code == 2, (argv, stderr)
        assert message in stderr, (argv, stderr)
        assert "Traceback" not in stderr
    assert (tmp_path / "mine.txt").read_text() == "mine"


def test_inputs_outside_the_calibrated_range_warn_on_stderr(tmp_path, tiny, run_cli):
    model, x, _ = tiny
    art = tmp_path / "t.hecc"
    assert run_cli("compile", model, "-o", art, "--calibration", x, "-q")[0] == 0
    far = np.load(x)
    far[0, :2] = far.max() + 1
    np.save(tmp_path / "far.npy", far)
    code, _, stderr = run_cli("run", art, "--input", tmp_path / "far.npy", "--backend", "sim")
    assert code == 0 and "hecc: warning: 2 value(s) of input 'x' lie outside" in stderr


def test_recompiling_over_an_artifact_is_allowed(tmp_path, tiny, run_cli):
    art = tmp_path / "tiny.hecc"
    assert run_cli("compile", tiny[0], "-o", art)[0] == 0
    assert run_cli("compile", tiny[0], "-o", art, "-q") == (0, "", "")


def test_console_script_runs_as_a_process(tmp_path, tiny):
    exe = shutil.which("hecc") or os.path.join(os.path.dirname(sys.executable), "hecc")
    proc = subprocess.run([exe, "compile", tiny[0], "-o", str(tmp_path / "t.hecc")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([exe, "compile", str(tmp_path / "nothing.onnx")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
