"""The slots lowering's record of what zero weights removed (products by plaintext vectors and
rotations against the same maps with no zero weight), and the compile report's line from it."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import hecc
from hecc.ir import parse
from hecc.pipeline import run_passes
from hecc.report import render, zero_block_counts


def test_lowering_counts_the_products_and_rotations_zero_weights_removed():
    """The slots lowering records, for a program with zero weights, its products and rotations and
    those of the same maps with no zero weight (golden: a banded 8x8 layer of 2 diagonals after a
    dense one)."""
    text = (
        '%0 = "hecc.input"() {name = "x"} : () -> tensor<1x8, secret>\n'
        '%1 = "tensor.constant"() {name = "w1"} : () -> tensor<8x8, public>\n'
        '%2 = "tensor.matmul"(%0, %1) {} : (tensor<1x8, secret>, tensor<8x8, public>) -> tensor<1x8, secret>\n'
        '%3 = "tensor.mul"(%2, %2) {} : (tensor<1x8, secret>, tensor<1x8, secret>) -> tensor<1x8, secret>\n'
        '%4 = "tensor.constant"() {name = "w2"} : () -> tensor<8x8, public>\n'
        '%5 = "tensor.matmul"(%3, %4) {} : (tensor<1x8, secret>, tensor<8x8, public>) -> tensor<1x8, secret>\n'
        '"hecc.output"(%5) {name = "y"} : (tensor<1x8, secret>) -> ()\n')
    rng = np.random.default_rng(0)
    w1 = rng.uniform(0.5, 1.0, (8, 8))
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    band = np.where((i - j) % 8 <= 1, rng.uniform(0.5, 1.0, (8, 8)), 0.0)  # y_j = x_j w[j, j] + x_{j+1} w[j+1, j]

    def lower(w2):
        graph = parse(text, {"w1": w1, "w2": w2})
        return run_passes(graph, ["lower-to-ckks"], {"layout": "slots", "slots": 64}).graph

    def counts(graph):
        return [sum(op.result.type.count for op in graph.ops if op.name == name)
                for name in ("ckks.mul_plain", "ckks.rotate")]
    pruned, dense = lower(band), lower(rng.uniform(0.5, 1.0, (8, 8)))
    assert "zero_blocks" not in dense.constants
    recorded = pruned.constants["zero_blocks"].tolist()
    assert recorded[:2] == counts(pruned) and recorded[2:] == counts(dense)
    # the first map reads the client's expanded input (1 product, a rotate-and-sum of 3); the second,
    # by the diagonal method, has 2 diagonals and 1 rotation instead of 8 and 4 (g = 2: a baby step
    # and giant steps 1, 2, 3)
    assert recorded == [3, 4, 9, 7]


def banded_model(w2: np.ndarray) -> bytes:
    """x (N, 8) -> MatMul w1 -> x^2 -> MatMul w2 -> y, as ONNX."""
    w1 = np.random.default_rng(1).uniform(0.1, 0.2, (8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Mul", ["h", "h"], ["s"]),
         helper.make_node("MatMul", ["s", "w2"], ["y"])], "banded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2.astype(np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def test_report_counts_what_zero_weights_removed():
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    band = np.where((i - j) % 8 <= 1, rng.uniform(0.5, 1.0, (8, 8)), 0.0)
    calibration = rng.uniform(-1, 1, (16, 8)).astype(np.float32)
    pruned = hecc.compile(banded_model(band), calibration=calibration, layout="slots")
    products, rotations, dense_products, dense_rotations = zero_block_counts(pruned)
    assert products < dense_products and rotations < dense_rotations
    assert (f"zero weights skipped: {dense_products - products} products and {dense_rotations - rotations} "
            "rotations fewer than the same maps with no zero weights") in render(pruned, measure=False)
    dense = hecc.compile(banded_model(rng.uniform(0.5, 1.0, (8, 8))), calibration=calibration, layout="slots")
    assert zero_block_counts(dense) is None
    assert "zero weights skipped" not in render(dense, measure=False)
    x = calibration[:4]
    np.testing.assert_allclose(pruned.run(x, backend="sim")["y"], pruned.run(x)["y"], rtol=1e-4, atol=1e-4)


def test_a_selection_of_zeros_and_ones_is_not_counted_as_pruned_weights():
    """A Gather of one token becomes a product by a 0/1 selection matrix: its zeros are structure,
    not pruning, and would cost a second lowering to count; weights with zeros among them are."""
    from hecc.passes.lower_to_ckks import _pruned
    select = np.zeros((1, 17))
    select[0, 0] = 1.0
    weights = np.array([[0.5, 0.0], [0.0, -1.25]])
    assert not _pruned(select) and not _pruned(np.ones((3, 3))) and not _pruned(np.zeros(4))
    assert _pruned(weights)
