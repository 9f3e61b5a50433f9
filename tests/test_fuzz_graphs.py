"""Fuzzing: random small graphs of supported ops. The reference backend must equal onnxruntime on
all of them, and the CKKS simulator must equal onnxruntime on the polynomial ones."""
import numpy as np
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

import hecc
from conftest import assert_close

F = TensorProto.FLOAT
WIDTH = 4
UNARY = ["Relu", "Sigmoid", "Tanh", "Neg", "Softplus", "Elu", "LeakyRelu"]
POLY = ["AddConst", "MulConst", "MatMul", "Square", "Neg", "Residual", "Gemm"]


@st.composite
def graphs(draw):
    ops = draw(st.lists(st.sampled_from(POLY + UNARY), min_size=1, max_size=5))
    seed = draw(st.integers(0, 2 ** 16))
    return ops, seed


def _build(ops, seed):
    rng = np.random.default_rng(seed)
    nodes, inits, prev, polynomial = [], [], "x", True
    for i, kind in enumerate(ops):
        out = f"t{i}"
        if kind == "AddConst":
            inits.append(numpy_helper.from_array(rng.normal(0, 1, WIDTH).astype(np.float32), f"c{i}"))
            nodes.append(helper.make_node("Add", [prev, f"c{i}"], [out]))
        elif kind == "MulConst":
            inits.append(numpy_helper.from_array(rng.normal(0, 1, WIDTH).astype(np.float32), f"c{i}"))
            nodes.append(helper.make_node("Mul", [prev, f"c{i}"], [out]))
        elif kind == "MatMul":
            inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (WIDTH, WIDTH)).astype(np.float32), f"w{i}"))
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        elif kind == "Gemm":
            inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (WIDTH, WIDTH)).astype(np.float32), f"w{i}"))
            inits.append(numpy_helper.from_array(rng.normal(0, 0.5, WIDTH).astype(np.float32), f"b{i}"))
            nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], transB=1))
        elif kind == "Square":
            nodes.append(helper.make_node("Mul", [prev, prev], [out]))
        elif kind == "Residual":
            nodes.append(helper.make_node("Add", [prev, "x"], [out]))
        else:
            nodes.append(helper.make_node(kind, [prev], [out]))
            polynomial = polynomial and kind == "Neg"
        prev = out
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", F, ["N", WIDTH])],
                              [helper.make_tensor_value_info("y", F, ["N", WIDTH])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), polynomial


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graph_reference_and_simulator_match_onnxruntime(case):
    ops, seed = case
    model, polynomial = _build(ops, seed)
    x = np.random.default_rng(seed).uniform(-1, 1, (8, WIDTH)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    try:
        prog = hecc.compile(model, calibration=x, layout="batch")
    except hecc.ParameterError:
        return  # deep enough to need more than 881 bits: refused with a typed error, as it must be
    assert_close(prog.run(x)["y"], expected, 1e-5, f"reference {ops}")
    if polynomial and prog.encrypted:
        assert_close(prog.run(x, backend="sim")["y"], expected, 1e-5, f"simulator {ops}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graph_in_the_slots_layout_matches_onnxruntime(case):
    """The slots layout's rotations, diagonals and input layouts on random graphs."""
    ops, seed = case
    model, polynomial = _build(ops, seed)
    if not polynomial:
        return
    x = np.random.default_rng(seed).uniform(-1, 1, (4, WIDTH)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    try:
        prog = hecc.compile(model, calibration=x, layout="slots")
    except hecc.ParameterError:
        return
    assert prog.layouts == ["slots"]
    assert_close(prog.run(x, backend="sim")["y"], expected, 1e-5, f"slots simulator {ops}")
