"""Activation approximation: the polynomial lowering's cost and depth, fit quality, the simulator's
out-of-interval warning, and approximated models end to end (simulator and TenSEAL)."""
import math
import os

import numpy as np
import pytest

import hecc
from conftest import EXAMPLES, assert_close
from hecc.backends.reference import ACTIVATIONS, chebyshev
from hecc.ir import Graph, TensorType
from hecc.passes import approximate_activations
from hecc.pipeline import run_passes

TORCH = os.path.join(os.path.dirname(__file__), "data", "torch")


def _poly_graph(coefficients, interval=(-2.0, 3.0)):
    g = Graph()
    x = g.append("hecc.input", [], [TensorType((1, 3), True)], {"name": "x"}).result
    y = g.append("tensor.poly", [x], [TensorType((1, 3), True)],
                 {"coefficients": list(coefficients), "interval": list(interval), "kind": "test"}).result
    g.append("hecc.output", [y], [], {"name": "y"})
    return g


@pytest.mark.parametrize("degree", range(2, 32))
def test_polynomial_lowering_products_and_depth(degree):
    """Degree d: d - 1 ciphertext products up to degree 5; above, the baby-step giant-step
    split's m = 2^(ceil(log2 d) - 1) (degree 8: 4 instead of 7); ceil(log2 d) levels either way."""
    rng = np.random.default_rng(degree)
    coefficients = rng.normal(0, 1, degree + 1) / np.arange(1, degree + 2)
    graph = _poly_graph(coefficients)
    x = rng.uniform(-2, 3, (50, 1, 3))
    graph.meta["ranges"] = {}
    final = run_passes(graph, ["lower-to-ckks", "insert-rescale", "insert-relinearize", "align-levels"],
                       {"scale_bits": 26}).graph
    products = [op for op in final.ops if op.name in ("ckks.mul", "ckks.square")]
    giant = 2 ** (math.ceil(math.log2(degree)) - 1)
    assert len(products) == (degree - 1 if degree <= 5 else giant) <= degree - 1
    levels = max(v.type.level for op in final.ops for v in op.results if hasattr(v.type, "level"))
    assert levels == math.ceil(math.log2(degree)) <= math.ceil(math.log2(degree + 1))
    from hecc.backends.sim import ckks_magnitudes, Simulator
    sim = Simulator(final, parameterized=False)
    trace = {}
    for op in sim.inputs:
        trace[op.result] = x.reshape(50, -1).T
    for op in sim.server:
        trace[op.result] = sim._apply(op, trace)
    out = trace[[op for op in final.ops if op.name == "ckks.decrypt"][0].operands[0]].T.reshape(50, 1, 3)
    assert_close(out, chebyshev(coefficients, (-2.0, 3.0), x), 1e-9, f"degree {degree}")
    assert ckks_magnitudes  # the calibration helper uses the same evaluation


@pytest.mark.parametrize("kind", ["relu", "sigmoid", "tanh", "softplus", "elu", "gelu", "gelu_tanh",
                                  "erf", "silu", "leaky_relu", "hard_sigmoid"])
def test_fit_quality(kind):
    f = lambda x: ACTIVATIONS[kind](x, 0.2 if kind in ("leaky_relu", "hard_sigmoid") else 1.0, 0.5)
    coefficients, error, _ = approximate_activations.fit(f, -6.0, 6.0, 15)
    grid = np.linspace(-6, 6, 1001)
    assert np.max(np.abs(chebyshev(coefficients, (-6.0, 6.0), grid) - f(grid))) <= error + 1e-12
    smooth = kind not in ("relu", "leaky_relu", "hard_sigmoid")
    span = np.ptp(f(grid))
    assert error < (0.015 if smooth else 0.05) * span


def test_weighted_fit_is_better_where_the_data_is():
    f = lambda x: np.maximum(x, 0)
    samples = np.random.default_rng(0).normal(0, 1.5, 5000)
    uniform, _, _ = approximate_activations.fit(f, -10, 10, 8)
    weighted, _, rms = approximate_activations.fit(f, -10, 10, 8, samples)
    err = lambda c: np.sqrt(np.mean((chebyshev(c, (-10, 10), samples) - f(samples)) ** 2))
    assert err(weighted) < 0.6 * err(uniform)
    assert rms == pytest.approx(err(weighted))


def _gelu_model():
    return os.path.join(TORCH, "mlp_gelu_dynamo21_b1.onnx")


def test_compile_reports_approximations_and_warns_without_calibration():
    with pytest.warns(hecc.HeccWarning, match=r"gelu on \[.*\].*sigmoid on \["):
        prog = hecc.compile(_gelu_model())
    kinds = [a["kind"] for a in prog.artifact.manifest["approximations"]]
    assert kinds == ["gelu", "sigmoid"]
    assert prog.encrypted


def test_simulator_warns_about_inputs_outside_the_fitted_interval():
    x = np.load(os.path.join(TORCH, "mlp_gelu.input.npy"))
    prog = hecc.compile(_gelu_model(), calibration=np.repeat(x, 10, axis=0))
    prog.run(x, backend="sim")
    with pytest.warns(hecc.HeccWarning, match="fell outside the interval"):
        prog.run(x * 2, backend="sim")


def test_approximated_model_simulator_equals_the_polynomial_program_and_tenseal_agrees():
    rng = np.random.default_rng(0)
    x = np.load(os.path.join(TORCH, "mlp_gelu.input.npy"))
    cal = np.concatenate([x + 0.2 * rng.standard_normal(x.shape) for _ in range(40)]).astype(np.float32)
    prog = hecc.compile(_gelu_model(), calibration=cal, activation_degree=5)
    assert [a["degree"] for a in prog.artifact.manifest["approximations"]] == [5, 5]
    exact = prog.run(x, backend="reference")["output"]
    poly = prog.run(x, backend="sim")["output"]
    assert_close(poly, exact, 0.05, "approximation error")
    noisy = prog.run(x, backend="sim", noise=True)["output"]
    encrypted = prog.run(x, backend="tenseal")["output"]
    measured = np.abs(encrypted - poly).max()
    predicted = np.abs(noisy - poly).max()
    assert measured < 1e-3
    assert predicted / 4 <= measured <= predicted * 4


def test_relu_cnn_example_accuracy_in_the_simulator():
    folder = os.path.join(EXAMPLES, "relu_cnn_mnist")
    x = np.load(os.path.join(folder, "input.npy"))
    labels = np.load(os.path.join(folder, "labels.npy"))
    prog = hecc.compile(os.path.join(folder, "model.onnx"), calibration=x, activation_degree=8, layout="batch")
    assert prog.parameters["poly_modulus_degree"] == 16384
    assert "BatchNormalization" not in prog.ir("tensor")
    out = prog.run(x, backend="sim", noise=True)["logits"]
    assert (out.argmax(1) == labels).mean() >= 0.95


def test_inspect_report(tmp_path, run_cli):
    art = tmp_path / "g.hecc"
    x = np.load(os.path.join(TORCH, "mlp_gelu.input.npy"))
    np.save(tmp_path / "cal.npy", np.repeat(x, 5, axis=0))
    assert run_cli("compile", _gelu_model(), "-o", art, "--calibration", tmp_path / "cal.npy")[0] == 0
    code, stdout, _ = run_cli("inspect", art, "--report")
    assert code == 0 and "batch layout: CKKS N=" in stdout and "gelu" in stdout and "sigmoid" in stdout


def test_automatic_degrees_are_capped_when_the_network_answers_as_well():
    """A ReLU's own error target asks for degree 9 or more (4 levels); the network's classes on
    the calibration data are as good with degree 8 (3 levels), so the program takes degree 8."""
    from onnx import TensorProto, helper, numpy_helper
    from hecc.degrees import output_quality
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, s).astype(np.float32), n)
             for n, s in (("w1", (16, 8)), ("w2", (3, 16)))]
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
                               helper.make_node("Relu", ["h"], ["r"]),
                               helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.normal(0, 1, (500, 8)).astype(np.float32)
    chosen = hecc.compile(model, calibration=x, layout="batch", approx_error=0.009)
    assert chosen.artifact.manifest["approximations"][0]["degree"] == 8  # alone it would be 9
    given = hecc.compile(model, calibration=x, layout="batch", approx_error=0.009, activation_degree=9)
    assert given.artifact.manifest["approximations"][0]["degree"] == 9  # a degree given is kept
    exact = chosen.run(x)["y"]
    for prog in (chosen, given):
        agreement, error = output_quality([exact], [prog.run(x, backend="sim")["y"]])
        assert agreement >= 0.93 and error < 0.01
    assert output_quality([np.eye(3)], [np.eye(3)]) == (1.0, 0.0)


def test_newton_reciprocal_is_checked_at_the_interval_ends_not_only_on_the_samples():
    """Calibration samples crowded in the middle of [0.05, 20] (a subsample misses the ends):
    the first guess and Newton steps are chosen for the whole calibrated interval, so 1/x stays
    within the target at both ends; a margin of 1 keeps the interval positive."""
    import importlib
    from hecc.ir import Graph, TensorType
    aa = importlib.import_module("hecc.passes.approximate_activations")
    for margin, low in ((0.1, 0.05), (1.0, 0.5)):
        g = Graph()
        x = g.append("hecc.input", [], [TensorType((1, 4), True)], {"name": "x"}).result
        act = g.append("tensor.activation", [x], [TensorType((1, 4), True)], {"kind": "reciprocal"})
        g.append("hecc.output", [act.result], [], {"name": "y"})
        g.meta["intervals"] = {x: (low, 20.0)}
        g.meta["samples"] = {x: np.random.default_rng(0).uniform(1.0, 3.0, 20000)}
        out = aa.run(g, {"margin": margin})
        from hecc.backends.reference import evaluate
        ends = np.array([[low, 0.5, 5.0, 20.0]])
        y = evaluate(out, [ends[None]])[0][0]
        assert np.max(np.abs(y * ends - 1)) <= 0.01, (margin, y * ends)
