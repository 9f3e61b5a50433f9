"""Pass registry checks and golden IR tests.

Each ``tests/passes/<pass>/<case>.hir`` is run through that one pass (with the options in
``<case>.options.json``, if any) and must print exactly as ``<case>.expected.hir``, or fail with a
message containing ``<case>.expected.err``. Constants take values from ``<case>.weights.json`` where
a case needs particular values and seeded random values otherwise; for tensor-to-tensor passes the
reference backend then checks that the pass kept the program's meaning on random inputs.
"""
import glob
import importlib
import json
import os

import numpy as np
import pytest

from conftest import assert_close
from hecc.backends.reference import evaluate
from hecc.ir import parse, print_graph, verify
from hecc.passes import PASSES, TENSOR_PIPELINE
from hecc.pipeline import parse_pipeline, run_passes
from hecc.errors import PassError, UserError

HERE = os.path.join(os.path.dirname(__file__), "passes")
CASES = sorted(glob.glob(os.path.join(HERE, "*", "*.hir")))
CASES = [c for c in CASES if not c.endswith(".expected.hir")]


def test_registry_names_match_modules():
    for name, module in PASSES.items():
        assert module.NAME == name
        assert module.__name__.rsplit(".", 1)[1] == name.replace("-", "_")
        assert module.__doc__ and module.__doc__.startswith(name + ":"), f"{name} needs a docstring"
        assert "Assumes" in module.__doc__ and "Guarantees" in module.__doc__


def test_every_pass_module_is_registered():
    folder = os.path.dirname(importlib.import_module("hecc.passes").__file__)
    modules = {f[:-3].replace("_", "-") for f in os.listdir(folder)
               if f.endswith(".py") and f != "__init__.py"}
    modules |= {f.replace("_", "-") for f in os.listdir(folder)  # a pass split into a package
                if os.path.isfile(os.path.join(folder, f, "__init__.py"))}
    assert modules == set(PASSES)


def test_every_pass_has_golden_tests():
    for name in PASSES:
        assert glob.glob(os.path.join(HERE, name, "*.expected.hir")), f"no golden test for {name}"
    for case in CASES:
        assert os.path.exists(case[:-4] + ".expected.hir") or os.path.exists(case[:-4] + ".expected.err"), case


def _is_tensor_graph(graph):
    return not any(op.name.startswith("ckks.") for op in graph.ops)


def test_pipeline_names_are_registered():
    assert parse_pipeline(TENSOR_PIPELINE) == TENSOR_PIPELINE
    with pytest.raises(PassError, match="unknown pass.*no-such-pass"):
        parse_pipeline("canonicalize,no-such-pass")


def _constants(graph, case):
    rng = np.random.default_rng(7)
    given = {}
    weights = case[:-4] + ".weights.json"
    if os.path.exists(weights):
        with open(weights) as f:
            given = json.load(f)
    out = {}
    for op in graph.ops:
        if op.name == "tensor.constant":
            name, shape = op.attrs["name"], op.result.type.shape
            out[name] = (np.asarray(given[name], dtype=np.float64).reshape(shape) if name in given
                         else rng.standard_normal(shape))
        elif op.name == "ckks.linear":
            rows, cols = op.result.type.count, op.operands[0].type.count
            out[op.attrs["matrix"]] = rng.standard_normal((rows, cols))
            if op.attrs.get("bias"):
                out[op.attrs["bias"]] = rng.standard_normal(rows)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: os.path.relpath(c, HERE)[:-4])
def test_golden(case):
    pass_name = os.path.basename(os.path.dirname(case))
    stem = case[:-4]
    with open(case) as f:
        text = f.read()
    options = {}
    if os.path.exists(stem + ".options.json"):
        with open(stem + ".options.json") as f:
            options = json.load(f)
    graph = parse(text)
    graph.constants.update(_constants(graph, case))
    verify(graph)
    if os.path.exists(stem + ".expected.err"):
        with open(stem + ".expected.err") as f:
            message = f.read().strip()
        with pytest.raises(UserError) as info:
            run_passes(graph, [pass_name], options)
        assert message in str(info.value)
        return
    with open(stem + ".expected.hir") as f:
        expected = f.read()
    before = graph.copy()
    after = run_passes(graph, [pass_name], options).graph
    assert print_graph(after) == expected
    if _is_tensor_graph(before) and _is_tensor_graph(after) and getattr(PASSES[pass_name], "EXACT", True):
        rng = np.random.default_rng(1)
        inputs = [rng.standard_normal((3,) + op.result.type.shape) for op in before.inputs()]
        for y0, y1 in zip(evaluate(before, inputs), evaluate(after, inputs)):
            assert_close(y1, y0, 1e-12, case)


def test_sparse_products_by_blas_equal_the_ones_summed_by_position(monkeypatch):
    """Sparse @ Sparse: a product with many partial sums per entry goes through a dense BLAS
    product; it equals the product summed by position (the path below the threshold)."""
    from hecc.passes.lower_to_ckks import sparse
    rng = np.random.default_rng(5)

    def random_sparse(m, n, density):
        dense = rng.normal(size=(m, n)) * (rng.random((m, n)) < density)
        return sparse.Sparse.from_dense(dense), dense
    a, da = random_sparse(60, 90, 0.2)
    b, db = random_sparse(90, 70, 0.2)
    dense_path = a @ b
    monkeypatch.setattr(sparse, "BLAS_FLOPS_PER_PRODUCT", 0)
    summed = a @ b
    assert dense_path.shape == summed.shape == (60, 70)
    np.testing.assert_allclose(dense_path.dense(), summed.dense(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(summed.dense(), da @ db, rtol=0, atol=1e-12)


def test_form_with_a_constant_equals_the_op_run_per_column(monkeypatch):
    """lower-to-ckks: an add, sub or multiply of one form (dense after a matmul, sparse after a
    transpose) with a broadcast constant, in either operand order, scales the form's rows in one
    pass (``with_constant``); the program computes what the one ``through`` makes (running the
    op once per column) computes, and what the tensor program computes."""
    from hecc.backends.sim import Simulator
    from hecc.passes.lower_to_ckks import batch
    text = """
%0 = "hecc.input"() {name = "x"} : () -> tensor<1x4x3, secret>
%1 = "tensor.constant"() {name = "w"} : () -> tensor<3x3, public>
%2 = "tensor.matmul"(%0, %1) {} : (tensor<1x4x3, secret>, tensor<3x3, public>) -> tensor<1x4x3, secret>
%3 = "tensor.constant"() {name = "g"} : () -> tensor<3, public>
%4 = "tensor.add"(%2, %3) {} : (tensor<1x4x3, secret>, tensor<3, public>) -> tensor<1x4x3, secret>
%12 = "tensor.constant"() {name = "h"} : () -> tensor<3, public>
%5 = "tensor.sub"(%12, %4) {} : (tensor<3, public>, tensor<1x4x3, secret>) -> tensor<1x4x3, secret>
%6 = "tensor.mul"(%3, %5) {} : (tensor<3, public>, tensor<1x4x3, secret>) -> tensor<1x4x3, secret>
%7 = "tensor.transpose"(%6) {perm = [0, 2, 1]} : (tensor<1x4x3, secret>) -> tensor<1x3x4, secret>
%8 = "tensor.constant"() {name = "b"} : () -> tensor<4, public>
%9 = "tensor.mul"(%8, %7) {} : (tensor<4, public>, tensor<1x3x4, secret>) -> tensor<1x3x4, secret>
%10 = "tensor.sub"(%8, %9) {} : (tensor<4, public>, tensor<1x3x4, secret>) -> tensor<1x3x4, secret>
%11 = "tensor.mul"(%10, %10) {} : (tensor<1x3x4, secret>, tensor<1x3x4, secret>) -> tensor<1x3x4, secret>
"hecc.output"(%11) {name = "y"} : (tensor<1x3x4, secret>) -> ()
"""
    x = np.random.default_rng(3).normal(size=(5, 1, 4, 3))
    tensor = parse(text)
    tensor.constants.update(_constants(tensor, "with_constant.hir"))
    expected = evaluate(tensor, [x])[0]
    calls = []
    original = batch.Lowering.with_constant
    monkeypatch.setattr(batch.Lowering, "with_constant",
                        lambda self, op, forms: calls.append(original(self, op, forms)) or calls[-1])
    outputs = []
    for replaced in (False, True):
        if replaced:
            monkeypatch.setattr(batch.Lowering, "with_constant", lambda self, op, forms: None)
        graph = tensor.copy()
        graph.constants = dict(tensor.constants)
        program = run_passes(graph, ["lower-to-ckks"], {"layout": "batch"}).graph
        sim = Simulator(program, parameterized=False)
        trace = {op.result: x.reshape(5, -1).T for op in sim.inputs}
        for op in sim.server:
            trace[op.result] = sim._apply(op, trace)
        decrypt = next(op for op in program.ops if op.name == "ckks.decrypt")
        outputs.append(trace[decrypt.operands[0]].T.reshape(expected.shape))
    assert sum(form is not None for form in calls) >= 4
    assert_close(outputs[0], outputs[1], 1e-12, "with_constant against through")
    assert_close(outputs[0], expected, 1e-9, "against the tensor program")


def test_diagonal_rows_in_emission_order_are_the_product_rows_rotated_by_their_giant_steps():
    """The slots layout's weight table is written in one pass: each product's diagonal row, in the
    order the products are emitted (-1: a row of zeros), rotated by its giant step (k // g) * g."""
    from hecc.passes.lower_to_ckks.diagonal import Part, Plan
    from hecc.passes.lower_to_ckks.placement import compact
    rng = np.random.default_rng(4)
    rows, cols = np.nonzero(rng.random((40, 100)) < 0.3)
    part = Part("x", compact(100, 256), rows, cols, rng.normal(size=rows.size))
    plan = Plan([part], compact(40, 256), 256, g=4)
    plain = plan.diagonal_rows()
    _, ks, _ = plan._product_fields()
    order = np.concatenate([rng.permutation(plan.products.size), [-1]])
    table = plan.diagonal_rows(order, plan.g)
    assert table.shape == (order.size, plan.length) and not table[-1].any()
    for row, product in enumerate(order[:-1]):
        assert np.array_equal(table[row], np.roll(plain[product], (ks[product] // plan.g) * plan.g))


@pytest.mark.parametrize("cyclic", [True, False])
def test_block_sums_add_every_block_that_holds_products_once_in_at_most_log2_doublings(cyclic):
    """``block_sums``: after the shift, the doublings reach each block that holds products exactly
    once (the subset sums are distinct), inside the span when the value does not repeat; never
    more doublings than summing every block."""
    from hecc.passes.lower_to_ckks.diagonal import block_sums
    rng = np.random.default_rng(7)
    for _ in range(300):
        count = 1 << int(rng.integers(1, 10))
        blocks = np.unique(rng.integers(0, count, int(rng.integers(1, min(count, 12) + 1))))
        if rng.random() < 0.5:  # clustered, the case it is for
            start = int(rng.integers(0, count))
            blocks = np.unique((start + rng.integers(0, max(count // 8, 1), blocks.size)) % count)
        shift, steps = block_sums(blocks, count, cyclic)
        sums = [shift]
        for t in steps:
            sums += [s + t for s in sums]
        if cyclic:
            sums = [s % count for s in sums]
        else:
            assert min(sums) >= 0 and max(sums) < count
        assert len(set(sums)) == len(sums) and set(blocks.tolist()) <= set(sums)
        assert len(steps) <= count.bit_length() - 1


def test_block_sums_of_clustered_blocks_golden():
    """A final classifier's blocks (0..10 and 511 of 512, the value repeating): a window of 16
    from block 511, which a span that does not repeat cannot wrap to (all 9 doublings); two
    clusters ({0, 31, 32, 63} of 64): two doublings."""
    from hecc.passes.lower_to_ckks.diagonal import block_sums
    assert block_sums(np.array(list(range(11)) + [511]), 512, True) == (511, [8, 4, 2, 1])
    assert block_sums(np.array(list(range(11)) + [511]), 512, False) == (0, [256, 128, 64, 32, 16, 8, 4, 2, 1])
    for cyclic in (True, False):
        shift, steps = block_sums(np.array([0, 31, 32, 63]), 64, cyclic)
        assert shift == 0 and sorted(steps) == [31, 32]


def test_lowering_refuses_an_unknown_objective():
    """The lowering's ``objective`` option (the compile option, also reachable through the pass
    options) is time or operations, never silently another."""
    graph = parse('%0 = "hecc.input"() {name = "x"} : () -> tensor<1x4, secret>\n'
                  '%1 = "tensor.mul"(%0, %0) {} : (tensor<1x4, secret>, tensor<1x4, secret>) -> tensor<1x4, secret>\n'
                  '"hecc.output"(%1) {name = "y"} : (tensor<1x4, secret>) -> ()\n')
    with pytest.raises(PassError, match="objective"):
        run_passes(graph, ["lower-to-ckks"], {"layout": "slots", "slots": 64, "objective": "speed"})
