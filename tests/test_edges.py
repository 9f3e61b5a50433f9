"""Issue 12's findings at the edges, each in the form it was found: options out of range, inputs
beyond the calibrated range, NaN weights, odd file arguments, a damaged cost cache, and
elementwise work that must stay linear in the tensor size."""
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hecc
from conftest import EXAMPLES

HECC = shutil.which("hecc") or os.path.join(os.path.dirname(sys.executable), "hecc")
CRYPTONETS = os.path.join(EXAMPLES, "cryptonets_mnist")
SIGMOID = os.path.join(EXAMPLES, "sigmoid_mlp_mnist")


def _cli(*args, cwd=None, env=None):
    proc = subprocess.run([HECC, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _refused(proc, message):
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def cryptonets(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    np.save(root / "in4.npy", x[:4])
    np.save(root / "far.npy", x[:4] * 3.0)  # far outside the calibrated pixel range [0, 1]
    assert _cli("compile", os.path.join(CRYPTONETS, "model.onnx"), "-o", root / "cn.hecc", "--calibration",
                os.path.join(CRYPTONETS, "input.npy"), "-q").returncode == 0
    return root


def test_an_input_beyond_the_calibrated_range_is_refused_by_tenseal_run_and_by_encrypt(cryptonets):
    root = cryptonets
    for quiet in ((), ("-q",)):
        _refused(_cli("run", "cn.hecc", "--input", "far.npy", "--backend", "tenseal", "--layout", "batch",
                      *quiet, cwd=root), "overflow in the encrypted program")
    assert _cli("keygen", "cn.hecc", "--out", "keys", "-q", cwd=root).returncode == 0
    _refused(_cli("encrypt", "cn.hecc", "far.npy", "--keys", "keys", "-o", "far.ct", cwd=root),
             "--allow-out-of-range")
    assert not (root / "far.ct").exists()
    proc = _cli("encrypt", "cn.hecc", "far.npy", "--keys", "keys", "-o", "far.ct", "--allow-out-of-range",
                cwd=root)
    assert proc.returncode == 0 and "outside" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (("--activation-margin", "-0.6"), "activation-margin must be a number from 0 to 1"),
    (("--weight-scale-bits", "1"), "weight-scale-bits must be an integer from 8 to 60"),
    (("--scale-bits", "0"), "scale-bits must be an integer from 16 to 60"),
    (("--approx-error", "nan"), "approx-error must be a number in (0, 1]"),
    (("--activation-degree", "0"), "activation-degree must be an integer from 1 to 31"),
])
def test_options_out_of_range_are_refused_with_the_allowed_range(tmp_path, args, message):
    _refused(_cli("compile", os.path.join(SIGMOID, "model.onnx"), "-o", tmp_path / "s.hecc", "--calibration",
                  os.path.join(SIGMOID, "input.npy"), *args), message)


@pytest.mark.parametrize("option, value, message", [
    ("scale_bits", 0, "scale-bits must be an integer from 16 to 60, got 0"),
    ("activation_margin", -0.6, "activation-margin must be a number from 0 to 1"),
    ("weight_scale_bits", 1.5, "weight-scale-bits must be an integer"),
    ("layout", "cloud", "choose auto, batch, slots or packed"),
])
def test_the_api_checks_options_like_the_cli(option, value, message):
    with pytest.raises(hecc.UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hecc.compile(os.path.join(SIGMOID, "model.onnx"), **{option: value})


def _tiny(path, weight):
    w = numpy_helper.from_array(weight.astype(np.float32), "dense.weight")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "dense.weight"], ["y"])], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_nan_weights_are_refused_naming_the_tensor(tmp_path):
    weight = np.ones((3, 2))
    weight[1, 1] = np.nan
    path = _tiny(str(tmp_path / "nan.onnx"), weight)
    with pytest.raises(hecc.ModelError, match="dense.weight"):
        hecc.compile(path)
    _refused(_cli("compile", path, "-o", tmp_path / "n.hecc"), "dense.weight")


def test_calibration_as_a_path_or_an_npz_of_named_arrays(tmp_path):
    path = _tiny(str(tmp_path / "m.onnx"), np.arange(6.0).reshape(3, 2))
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3))
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    by_path = hecc.compile(str(tmp_path / "m.onnx"), calibration=str(tmp_path / "x.npy"))
    assert by_path.artifact.manifest["input_ranges"]["x"] == [float(x.min()), float(x.max())]
    assert _cli("compile", path, "-o", tmp_path / "m.hecc", "--calibration", tmp_path / "x.npz", "-q").returncode == 0
    assert hecc.load(str(tmp_path / "m.hecc")).artifact.manifest["input_ranges"]["x"] == [float(x.min()), float(x.max())]


def test_odd_input_arguments(tmp_path):
    path = _tiny(str(tmp_path / "m.onnx"), np.arange(6.0).reshape(3, 2))
    x = np.ones((2, 3))
    np.save(tmp_path / "a=b.npy", x)
    assert _cli("compile", path, "-o", "m.hecc", "-q", cwd=tmp_path).returncode == 0
    proc = _cli("run", "m.hecc", "--input", "a=b.npy", "--output", "y.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), x @ np.arange(6.0).reshape(3, 2), rtol=1e-6)
    _refused(_cli("run", "m.hecc", "--input", "x=a=b.npy", "--input", "x=a=b.npy", cwd=tmp_path), "given twice")


def test_key_folder_mistakes_get_their_own_message(cryptonets, tmp_path):
    root = cryptonets
    if not (root / "keys").exists():
        assert _cli("keygen", "cn.hecc", "--out", "keys", "-q", cwd=root).returncode == 0
    assert _cli("keygen", "cn.hecc", "--out", "slotkeys", "--layout", "slots", "-q", cwd=root).returncode == 0
    assert _cli("encrypt", "cn.hecc", "in4.npy", "--keys", "keys", "-o", "x.ct", "-q", cwd=root).returncode == 0
    _refused(_cli("encrypt", "cn.hecc", "in4.npy", "--keys", "keys/secret.key", "-o", "y.ct", cwd=root),
             "--keys takes the keys folder")
    _refused(_cli("eval", "cn.hecc", "x.ct", "--eval-keys", "slotkeys/eval.keys", "-o", "y.ct", "--layout", "batch",
                  cwd=root), "was made for the slots layout, but this command uses the batch layout")
    shutil.copytree(root / "keys", tmp_path / "cut")
    data = (tmp_path / "cut" / "secret.key").read_bytes()
    (tmp_path / "cut" / "secret.key").write_bytes(data[: len(data) // 2])
    _refused(_cli("decrypt", root / "cn.hecc", root / "x.ct", "--keys", tmp_path / "cut", "-o", tmp_path / "z.npy"),
             "truncated")


def test_a_damaged_cost_cache_is_measured_again(cryptonets, tmp_path):
    costs = tmp_path / "costs.json"
    costs.write_text('{"8192:51,54,54,54": {"add": "fast", "rotate": [1, 2]}, "x": 3}')
    proc = _cli("inspect", cryptonets / "cn.hecc", "--report", env={"HECC_COSTS": str(costs)})
    assert proc.returncode == 0, proc.stderr
    assert "predicted time" in proc.stdout


def test_elementwise_work_stays_linear_in_the_tensor_size():
    """An activation on 16,384 values lowers to diagonal maps (16,384 weights each), never to a
    16,384 x 16,384 matrix; benchmarks/compile_scaling.py measures time and memory."""
    n = 16384
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(0).uniform(-3, 3, (4, n)).astype(np.float32)
    prog = hecc.compile(model, calibration=x, layout="batch", activation_degree=5)
    sizes = [array.size for array in prog.artifact.constants.values()]
    assert max(sizes) <= n
    y = prog.run(x, backend="sim")["y"]
    assert np.abs(y - 1 / (1 + np.exp(-x))).max() < 0.05
