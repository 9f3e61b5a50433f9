"""The CKKS path: simulator vs reference on polynomial models (the backbone differential test),
TenSEAL on small batches, parameter errors, and backend coverage of the ckks dialect."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import hecc
from conftest import EXAMPLES, assert_close
from hecc.backends import sim, tenseal as tenseal_backend
from hecc.ir import OPS

F = TensorProto.FLOAT
CRYPTONETS = os.path.join(EXAMPLES, "cryptonets_mnist")
RNG = np.random.default_rng(5)


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
                              [helper.make_tensor_value_info(n, F, None) for n in outputs],
                              [numpy_helper.from_array(np.asarray(v) if np.asarray(v).dtype.kind == "i"
                                                       else np.asarray(v, np.float32), n)
                               for n, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def n(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, **attrs)


# Polynomial models that exercise every lowering: conv + avgpool + BN-like affine, pad and
# concat, x^3 (mul after square: align-levels), a residual sum of two depths, two inputs.
POLY_MODELS = {
    "conv_pool_cube": lambda: _model(
        [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         n("Mul", ["p", "s"], ["q"]), n("Add", ["q", "t"], ["r"]), n("Pow", ["r", "three"], ["cube"]),
         n("Flatten", ["cube"], ["f"]), n("Gemm", ["f", "fw", "fb"], ["y"], transB=1)],
        {"x": ["N", 1, 6, 6]}, ["y"],
        {"w": RNG.normal(0, 0.5, (2, 1, 3, 3)), "s": RNG.uniform(0.5, 1.5, (2, 1, 1)), "t": RNG.normal(0, .1, (2, 1, 1)),
         "three": 3.0, "fw": RNG.normal(0, 0.3, (4, 18)), "fb": RNG.normal(0, 0.1, 4)}),
    "residual_pad_concat": lambda: _model(
        [n("MatMul", ["x", "w"], ["h"]), n("Mul", ["h", "h"], ["sq"]), n("Add", ["sq", "h"], ["res"]),
         n("Pad", ["res", "pads"], ["padded"]), n("Concat", ["padded", "x"], ["cat"], axis=1),
         n("Mul", ["cat", "cat"], ["y0"]), n("Softmax", ["y0"], ["y"], axis=1)],
        {"x": ["N", 3]}, ["y0", "y"],
        {"w": RNG.normal(0, 0.5, (3, 3)), "pads": np.array([0, 1, 0, 2], np.int64)}),
    "two_inputs_product": lambda: _model(
        [n("Mul", ["a", "b"], ["p"]), n("Sub", ["p", "a"], ["d"]), n("ReduceSum", ["d", "axes"], ["y"], keepdims=1)],
        {"a": ["N", 4], "b": ["N", 4]}, ["y"], {"axes": np.array([1], np.int64)}),
}


def _inputs(prog, batch, rng):
    return {name: rng.uniform(-1, 1, (batch * shape[0],) + shape[1:]) for name, shape in prog.inputs}


@pytest.mark.parametrize("name", sorted(POLY_MODELS))
def test_simulator_equals_reference(name):
    model = POLY_MODELS[name]()
    rng = np.random.default_rng(0)
    probe = hecc.compile(model)
    calibration = _inputs(probe, 64, rng)
    prog = hecc.compile(model, calibration=calibration)
    assert prog.encrypted, prog.artifact.manifest
    x = _inputs(prog, 20, rng)
    ref = prog.run(x, backend="reference")
    out = prog.run(x, backend="sim")
    for key in ref:
        assert_close(out[key], ref[key], 1e-6, f"{name} {key}")


def test_cryptonets_simulator_equals_reference():
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x)
    assert prog.parameters["poly_modulus_degree"] == 8192
    ref = prog.run(x, backend="reference")["logits"]
    assert_close(prog.run(x, backend="sim")["logits"], ref, 1e-6, "noiseless simulator")
    noisy = prog.run(x, backend="sim", noise=True)["logits"]
    assert_close(noisy, ref, 1e-2, "simulator with noise")
    assert (noisy.argmax(1) == ref.argmax(1)).mean() >= 0.98


def test_lazy_rescale_has_one_rescale_per_level_and_fewer_primes_than_eager():
    model = os.path.join(CRYPTONETS, "model.onnx")
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    lazy = hecc.compile(model, calibration=x, layout="batch")
    eager = hecc.compile(model, calibration=x, rescale="eager")
    assert eager.layouts == ["batch"]  # the eager baseline is a batch-layout one
    lazy_ops = [op.name for op in lazy.graph.ops]
    assert lazy_ops.count("ckks.rescale") == 2 and lazy_ops.count("ckks.square") == 2
    assert not any(op.attrs.get("rescale_terms") for op in lazy.graph.ops)
    assert all(op.attrs.get("rescale_terms") for op in eager.graph.ops if op.name == "ckks.linear")
    assert len(lazy.parameters["coeff_modulus_bits"]) < len(eager.parameters["coeff_modulus_bits"])
    lazy.run(x[:4], backend="sim")
    eager.run(x[:4], backend="sim")
    assert lazy.last_stats["op_counts"]["rescale"] == 945
    assert eager.last_stats["op_counts"]["rescale"] > 100_000


def test_simulator_names_the_op_that_overflows():
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x)
    with pytest.raises(hecc.InputError, match=r"overflow in the encrypted program.*\n  at %\d+ = \"ckks\."):
        prog.run(x[:4] * 3000, backend="sim")


def test_too_deep_model_gets_parameter_error(tmp_path, run_cli):
    nodes, prev = [], "x"
    for i in range(40):
        nodes.append(n("Mul", [prev, prev], [f"s{i}"]))
        prev = f"s{i}"
    nodes.append(n("Identity", [prev], ["y"]))
    onnx.save(_model(nodes, {"x": ["N", 2]}, ["y"], {}), tmp_path / "deep.onnx")
    np.save(tmp_path / "cal.npy", np.full((4, 2), 0.99, np.float32))
    code, _, stderr = run_cli("compile", tmp_path / "deep.onnx", "--calibration", tmp_path / "cal.npy")
    assert code == 2
    assert "needs multiplicative depth 40" in stderr and "881 bits" in stderr
    assert not os.path.exists(tmp_path / "deep.hecc")


def test_every_ckks_op_has_an_implementation_in_every_backend():
    ops = {name for name in OPS if name.startswith("ckks.")} - {"ckks.params"}
    import inspect
    sim_source = inspect.getsource(sim.Simulator)
    tenseal_source = inspect.getsource(tenseal_backend.TensealBackend)
    for name in ops:
        if name == "ckks.decrypt":
            continue
        assert f'"{name}"' in tenseal_source, f"tenseal backend lacks {name}"
        if name not in ("ckks.relinearize", "ckks.modswitch"):
            assert f'"{name}"' in sim_source, f"simulator lacks {name}"
    assert "ckks.decrypt" in {op for op in ops}


def test_tenseal_cryptonets_small_batch_matches_reference():
    """Real SEAL end to end on 16 MNIST digits in both layouts (CI runs this). The slots program
    shares a 60-bit prime between each linear map and the square after it (weights at 2^19,
    values at 2^22): its error stays within three times the simulator's prediction."""
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))[:16]
    labels = np.load(os.path.join(CRYPTONETS, "labels.npy"))[:16]
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=np.load(os.path.join(CRYPTONETS, "input.npy")))
    assert prog.layouts == ["batch", "slots", "packed"]
    assert prog.artifact.manifest["scales"] == {"batch": [26, 14], "slots": [22, 19], "packed": [22, 19]}
    predicted = prog.artifact.manifest["predicted_precision"]["slots"]
    assert predicted < 1e-2
    ref = prog.run(x, backend="reference")["logits"]
    packed = prog.artifact.manifest["predicted_precision"]["packed"]
    per_ct = prog.with_layout("packed").parameters["inputs_per_ciphertext"]
    assert per_ct >= 2
    # one key set's error over 16 digits: measured 0.66x to 2.3x the prediction over six key sets
    # (slots); the packed program (8 digits per ciphertext) errs most on digit 8, up to 4.9x its
    # prediction over nine key sets (0.87x to 4.9x; the same before streams): a gap in the noise
    # model that is not understood yet, so its bound is wider
    for layout, tolerance in (("batch", 2e-2), ("slots", 3 * predicted), ("packed", 6 * packed)):
        out = prog.run(x, backend="tenseal", layout=layout)["logits"]
        assert_close(out, ref, tolerance, f"tenseal ({layout}) vs reference")
        np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))
        assert (out.argmax(1) == labels).mean() >= 0.9
        stats = prog.last_stats
        assert stats["backend"] == "tenseal" and stats["layout"] == layout
        assert stats["parameters"]["poly_modulus_degree"] == prog.with_layout(layout).parameters["poly_modulus_degree"]
        assert stats["eval_key_bytes"] > 0 and stats["seconds"]["eval"] > 0
        if layout == "batch":
            assert stats["galois_steps"] == [] and stats["batches"] == 1
        else:  # K inputs per ciphertext (1 in the slots layout); Galois keys for the steps used
            k = per_ct if layout == "packed" else 1
            graph = prog.with_layout(layout).graph
            steps = {op.attrs["step"] for op in graph.ops if op.name == "ckks.rotate"}
            assert stats["galois_steps"] == sorted(steps) and stats["batches"] == 16 // k
            assert stats["op_counts"]["rotate"] == 16 // k * sum(op.name == "ckks.rotate" for op in graph.ops)
            if layout == "packed":  # every step a multiple of K: each input's slots rotate among themselves
                assert all(step % k == 0 for step in steps)


def test_packed_layout_serves_a_partial_last_ciphertext():
    """K inputs per ciphertext and a count that is not a multiple of K: the simulator without
    noise equals the reference on every input, the last ciphertext padded (with copies of a real
    input, which stay inside the calibrated ranges)."""
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x, layout="packed")
    k = prog.parameters["inputs_per_ciphertext"]
    count = 2 * k + 1
    out = prog.run(x[:count], backend="sim")["logits"]
    assert out.shape == (count, 10) and prog.last_stats["batches"] == 3
    assert_close(out, prog.run(x[:count])["logits"], 1e-6, "packed sim vs reference")


def test_slots_layout_at_the_waterline_scale_is_precise_to_1e_3():
    """With --scale-bits 26 --weight-scale-bits 26 every linear map gets its own prime: N=8192
    and SEAL within 1e-3 of the reference."""
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))[:4]
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=np.load(os.path.join(CRYPTONETS, "input.npy")),
                        layout="slots", scale_bits=26, weight_scale_bits=26)
    assert prog.parameters["poly_modulus_degree"] == 8192
    assert_close(prog.run(x, backend="tenseal")["logits"], prog.run(x)["logits"], 1e-3, "tenseal vs reference")


def test_auto_layout_picks_slots_for_one_input_and_batch_for_4096():
    """From the cost model (primitives measured on this machine once, then stored)."""
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x)
    assert prog.choose_layout(1) == "slots" and prog.choose_layout(4096) == "batch"
    one, full = prog.estimate(1, "slots"), prog.estimate(4096, "batch")
    assert one["total"] < prog.estimate(1, "batch")["total"]
    assert full["total"] < prog.estimate(4096, "slots")["total"]
    prog.run(x[:1], backend="sim")
    assert prog.last_stats["layout"] == "slots"


def test_tenseal_runs_every_ckks_op():
    """mul, sums of ciphertexts from different levels (modswitch, scale alignment) and several
    batches across two workers."""
    model = POLY_MODELS["two_inputs_product"]()
    rng = np.random.default_rng(1)
    probe = hecc.compile(model)
    prog = hecc.compile(model, calibration=_inputs(probe, 32, rng))
    names = {op.name for op in prog.graph.ops}
    assert {"ckks.mul", "ckks.add", "ckks.modswitch", "ckks.linear"} <= names
    slots = prog.parameters["poly_modulus_degree"] // 2
    x = _inputs(prog, slots + 3, rng)
    ref = prog.run(x, backend="reference")["y"]
    out = prog.run(x, backend="tenseal", workers=2)["y"]
    assert prog.last_stats["batches"] == 2 and prog.last_stats["workers"] == 2
    assert_close(out, ref, 1e-3, "two inputs")


TUTORIAL = os.path.join(os.path.dirname(__file__), "..", "examples", "tenseal_tutorial_mnist")


def test_rotation_key_budget_keeps_the_slots_program_correct_in_sim_and_tenseal():
    x = np.load(os.path.join(TUTORIAL, "input.npy"))
    free = hecc.compile(os.path.join(TUTORIAL, "model.onnx"), calibration=x, layout="slots")
    tight = hecc.compile(os.path.join(TUTORIAL, "model.onnx"), calibration=x, layout="slots",
                         max_rotation_keys=4)
    steps = tight.parameters["galois_steps"]
    assert len(steps) <= 4 < len(free.parameters["galois_steps"])
    rotations = [op.attrs["step"] for op in tight.graph.ops if op.name == "ckks.rotate"]
    assert set(rotations) <= set(steps)
    assert len(rotations) > sum(op.name == "ckks.rotate" for op in free.graph.ops)
    ref = tight.run(x[:4])["logits"]
    for backend in ("sim", "tenseal"):
        out = tight.run(x[:4], backend=backend)["logits"]
        assert_close(out, ref, 1e-3, f"{backend} with 4 rotation keys")
        np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))
    info = tight.artifact.manifest["rotation_keys"]
    assert info["rotations"] == len(rotations) and info["rotations_without_budget"] < info["rotations"]


def test_slots_layout_skips_zero_diagonals_of_a_block_pruned_layer():
    """MOFHEI's point: weights pruned in blocks aligned with the packing (here: whole generalized
    diagonals of the second layer) cost no products."""
    rng = np.random.default_rng(3)
    first = rng.normal(0, 0.2, (64, 64)).astype(np.float32)
    dense = rng.normal(0, 0.3, (16, 64)).astype(np.float32)
    rows, cols = np.indices(dense.shape)
    pruned = np.where((cols - rows) % 64 >= 8, 0, dense).astype(np.float32)  # a band: 8 diagonals
    xs = rng.uniform(-1, 1, (8, 64)).astype(np.float32)
    counts = {}
    for name, w in (("dense", dense), ("pruned", pruned)):
        nodes = [helper.make_node("Gemm", ["x", "a"], ["h"], transB=1),
                 helper.make_node("Mul", ["h", "h"], ["s"]),
                 helper.make_node("Gemm", ["s", "w"], ["y"], transB=1)]
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                                  [numpy_helper.from_array(first, "a"), numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        prog = hecc.compile(model.SerializeToString(), calibration=xs, layout="slots")
        assert_close(prog.run(xs, backend="sim")["y"], prog.run(xs)["y"], 1e-9, name)
        counts[name] = sum(op.name == "ckks.mul_plain" for op in prog.graph.ops)
    assert counts["pruned"] == 1 + 8 < counts["dense"]  # the input layer, then one product per diagonal


def test_slots_layout_sums_align_exactly_after_a_dozen_26_bit_rescales():
    """SEAL's 26-bit primes lie up to 5% below 2^26: along 13 rescales the operands of a sum
    drifted apart and TenSEAL stopped with an internal error. Every product by a plaintext is now
    encoded so that the rescale after it lands exactly on the nominal scale. (The lowering now
    needs 11 of those primes for this model, not 13.)"""
    rng = np.random.default_rng(0)
    inits = {n: rng.normal(0, 0.5, s) for n, s in (("w1", (16, 16)), ("b1", (16,)), ("w2", (16, 16)),
                                                    ("b2", (16,)), ("w3", (4, 16)))}
    model = _model([n("Gemm", ["x", "w1", "b1"], ["h1"], transB=1), n("Relu", ["h1"], ["r1"]),
                    n("Gemm", ["r1", "w2", "b2"], ["h2"], transB=1), n("Relu", ["h2"], ["r2"]),
                    n("Gemm", ["r2", "w3"], ["y"], transB=1)], {"x": ["N", 16]}, ["y"], inits)
    x = rng.uniform(-1, 1, (64, 16)).astype(np.float32)
    prog = hecc.compile(model, calibration=x, layout="slots", activation_degree=8)
    assert prog.parameters["coeff_modulus_bits"].count(26) >= 10
    encrypted = prog.run(x[:2], backend="tenseal")["y"]
    simulated = prog.run(x[:2], backend="sim")["y"]
    assert_close(encrypted, simulated, 3e-3, "TenSEAL vs simulator")


def test_segments_evaluated_a_few_rows_at_a_time_equal_the_simulator(monkeypatch):
    """A batch-layout segment (a linear layer and the polynomial after it) runs ROW_CHUNK rows
    at a time so its temporaries never exist for every row at once; with chunks of 2 rows (and
    one worker, so nothing is split by the executor) TenSEAL still equals the simulator."""
    torch_data = os.path.join(os.path.dirname(__file__), "data", "torch")
    x = np.load(os.path.join(torch_data, "mlp_gelu.input.npy"))
    rng = np.random.default_rng(0)
    cal = np.concatenate([x + 0.2 * rng.standard_normal(x.shape) for _ in range(40)]).astype(np.float32)
    prog = hecc.compile(os.path.join(torch_data, "mlp_gelu_dynamo21_b1.onnx"), calibration=cal,
                        activation_degree=5, layout="batch")
    segments = tenseal_backend.TensealBackend(prog.graph).segments
    assert any(len(s) > 3 and s[0].result.type.count > 2 for s in segments)
    from hecc.backends import segments as row_segments
    monkeypatch.setattr(row_segments, "ROW_CHUNK", 2)
    simulated = prog.run(x, backend="sim")["output"]
    encrypted = prog.run(x, backend="tenseal", workers=1)["output"]
    assert np.abs(encrypted - simulated).max() < 1e-3


def _wide_relu_model(rng, hidden=128):
    inits = {"w1": rng.normal(0, 0.4, (hidden, 16)), "b1": rng.normal(0, 0.1, hidden),
             "w2": rng.normal(0, 0.3, (4, hidden))}
    return _model([n("Gemm", ["x", "w1", "b1"], ["h"], transB=1), n("Relu", ["h"], ["r"]),
                   n("Gemm", ["r", "w2"], ["y"], transB=1)], {"x": ["N", 16]}, ["y"], inits)


def test_streams_run_a_wide_activation_chunk_by_chunk_and_equal_the_simulator(monkeypatch):
    """A ReLU polynomial between two dense layers of the batch layout is one stream: its 128
    rows run 8 at a time from the first layer through the powers to the sums of the next layer,
    in this process and split over two forked workers, and both equal the simulator. The
    predicted memory falls against the same program evaluated op by op."""
    from hecc.backends import segments as row_segments
    from hecc.backends.common import predicted_peak_bytes
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (64, 16)).astype(np.float32)
    prog = hecc.compile(_wide_relu_model(rng), calibration=x, layout="batch", activation_degree=4)
    monkeypatch.setattr(row_segments, "ROW_CHUNK", 8)
    streams = [s for s in tenseal_backend.TensealBackend(prog.graph).segments if isinstance(s, row_segments.Stream)]
    assert len(streams) == 1 and streams[0].count == 128 and len(streams[0].tails) >= 2
    streamed = predicted_peak_bytes(prog.graph)
    simulated = prog.run(x[:3], backend="sim")["y"]
    for workers in (1, 2):
        encrypted = prog.run(x[:3], backend="tenseal", workers=workers)["y"]
        assert np.abs(encrypted - simulated).max() < 1e-3 * np.abs(simulated).max(), workers
    monkeypatch.setattr(row_segments, "STREAM_MIN_CHUNKS", 10 ** 9)
    assert not any(isinstance(s, row_segments.Stream) for s in tenseal_backend.TensealBackend(prog.graph).segments)
    assert streamed < 0.6 * predicted_peak_bytes(prog.graph)


def test_plan_orders_the_relu_cnn_so_its_streams_are_contiguous_and_dependencies_hold():
    """The ReLU CNN example's batch program (degree 8: eight terms of its 676-row convolution
    feed the next layers): one stream of 676 rows; the plan is a permutation of the server ops
    in which every operand is made before it is read and each stream is one run; the predicted
    memory of a batch falls from 14 GiB (op by op) to under 4 GiB."""
    from hecc.backends import segments as row_segments
    from hecc.backends.common import SERVER_OPS, predicted_peak_bytes
    folder = os.path.join(EXAMPLES, "relu_cnn_mnist")
    prog = hecc.compile(os.path.join(folder, "model.onnx"), calibration=np.load(os.path.join(folder, "input.npy")),
                        layout="batch", activation_degree=8)
    server = [op for op in prog.graph.ops if op.name in SERVER_OPS]
    order, segments = row_segments.plan(prog.graph, server, False)
    assert sorted(map(id, order)) == sorted(map(id, server))
    assert [id(op) for s in segments for op in s] == [id(op) for op in order]
    made = set()
    for op in order:
        assert all(v in made or v.producer.name == "hecc.input" for v in op.operands), op
        made.update(op.results)
    streams = [s for s in segments if isinstance(s, row_segments.Stream)]
    assert [s.count for s in streams] == [676]
    assert predicted_peak_bytes(prog.graph) < 4 * 2 ** 30


def test_noise_prediction_in_forked_processes_equals_the_one_in_process(monkeypatch):
    """A large program's three noise simulations (exact and two draws) run in two forked
    processes; the prediction is the same figure as in one process (seeded draws)."""
    import hecc.api as api
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))[:16]
    final = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x, layout="slots").graph
    results = []
    for work in (0, 10 ** 18):
        monkeypatch.setattr(api, "PARALLEL_NOISE_WORK", work)
        results.append(api._simulated_noise(final, {"input": x}))
    assert results[0] == results[1] and results[0][0] > 0


def test_magnitudes_in_forked_halves_equal_the_ones_in_process(monkeypatch):
    """A large slots-layout magnitude simulation splits its inputs between two forked processes;
    every value's maximum is the one the whole run finds in one process, to the bit."""
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))[:16]
    program = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x, layout="slots").graph
    results = []
    for work in (0, 10 ** 18):
        monkeypatch.setattr(sim, "PARALLEL_MAGNITUDE_WORK", work)
        results.append(sim.ckks_magnitudes(program, [x]))
    assert results[0] == results[1] and len(results[0]) > 10


def test_materialized_polynomial_outputs_equal_the_simulator_and_cost_a_level_each(monkeypatch):
    """Batch layout, two ReLU polynomials on wide layers made ciphertexts (the lowering LeNet-5
    needs: merged, each layer's T_1 term composed the maps across layers into 6.7 million
    products): one level more per polynomial than merged, far fewer products by weights, and
    TenSEAL equals the simulator, which equals the reference within the approximation."""
    from hecc.backends.common import LinearWeights
    from hecc.passes.lower_to_ckks import batch as batch_lowering
    rng = np.random.default_rng(11)
    inits = {"w1": rng.normal(0, 0.4, (64, 16)), "b1": rng.normal(0, 0.1, 64),
             "w2": rng.normal(0, 0.2, (64, 64)), "w3": rng.normal(0, 0.3, (4, 64))}
    model = _model([n("Gemm", ["x", "w1", "b1"], ["h"], transB=1), n("Relu", ["h"], ["r"]),
                    n("Gemm", ["r", "w2"], ["h2"], transB=1), n("Relu", ["h2"], ["r2"]),
                    n("Gemm", ["r2", "w3"], ["y"], transB=1)], {"x": ["N", 16]}, ["y"], inits)
    x = rng.uniform(-1, 1, (64, 16)).astype(np.float32)
    merged = hecc.compile(model, calibration=x, layout="batch", activation_degree=3)
    monkeypatch.setattr(batch_lowering, "WIDE_POLY", 8)
    monkeypatch.setattr(hecc.api, "MERGED_PRODUCTS_LIMIT", 0)  # the merged lowering is over budget
    wide = hecc.compile(model, calibration=x, layout="batch", activation_degree=3)

    def depth(prog):
        return max(op.result.type.level for op in prog.graph.ops if op.name == "ckks.rescale")
    assert depth(wide) == depth(merged) + 2

    def products(prog):
        return sum(LinearWeights(prog.graph, op).nnz for op in prog.graph.ops if op.name == "ckks.linear")
    assert products(wide) < 0.7 * products(merged)
    reference = merged.run(x[:3], backend="reference")["y"]
    simulated = wide.run(x[:3], backend="sim")["y"]
    assert np.abs(simulated - merged.run(x[:3], backend="sim")["y"]).max() < 1e-6 * np.abs(reference).max() + 1e-9
    encrypted = wide.run(x[:3], backend="tenseal", workers=1)["y"]
    assert np.abs(encrypted - simulated).max() < 1e-3 * np.abs(simulated).max()


def test_primitive_costs_are_measured_at_a_few_levels_and_interpolated_between():
    """A new parameter set is measured at MEASURED_LEVELS levels (the top, the bottom and evenly
    between) and the levels between are interpolated: every level gets a positive cost, an
    unmeasured one lies between its measured neighbours, and nothing rescales below the last."""
    chain = [30] + [26] * 6 + [30]
    costs = tenseal_backend.measure_primitives(8192, chain, repeats=2, levels=3)
    depth = len(chain) - 2  # data primes - 1
    assert set(costs) >= {"rotate", "relinearize", "multiply_plain", "encrypt", "rescale"}
    for name, per_level in costs.items():
        assert len(per_level) == depth + 1, name
        assert all(t > 0 for t in per_level[:depth]), name
    assert costs["rescale"][depth] == costs["modswitch"][depth] == 0.0
    rotate = costs["rotate"]  # measured at levels 0, 3 and 6
    assert min(rotate[0], rotate[3]) <= rotate[1] <= max(rotate[0], rotate[3])


def _attention_model(rng, tokens=5, width=4, heads=2):
    """Two-head attention with a square in place of softmax: Q K^T and A V multiply two
    encrypted tensors of rank 4 (batch, heads, tokens, head width)."""
    head = width // heads
    inits = {name: rng.normal(0, 0.5, (width, width)) for name in ("wq", "wk", "wv")}
    inits["split"] = np.array([-1, tokens, heads, head], np.int64)
    inits["merge"] = np.array([-1, tokens, width], np.int64)
    nodes = [n("MatMul", ["x", "wq"], ["q0"]), n("MatMul", ["x", "wk"], ["k0"]), n("MatMul", ["x", "wv"], ["v0"])]
    for name in ("q", "k", "v"):
        nodes += [n("Reshape", [f"{name}0", "split"], [f"{name}1"]),
                  n("Transpose", [f"{name}1"], [name], perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3])]
    nodes += [n("MatMul", ["q", "k"], ["s"]), n("Mul", ["s", "s"], ["a"]), n("MatMul", ["a", "v"], ["o"]),
              n("Transpose", ["o"], ["o1"], perm=[0, 2, 1, 3]), n("Reshape", ["o1", "merge"], ["y"])]
    return _model(nodes, {"x": ["N", tokens, width]}, ["y"], inits)


def test_products_of_two_encrypted_matrices_equal_onnxruntime_in_every_backend():
    """Attention's Q K^T and A V (MatMul of two encrypted tensors, with heads as a batch
    dimension) in every layout: the reference backend equals onnxruntime, the simulator equals
    the reference, and TenSEAL the simulator."""
    import onnxruntime as ort
    rng = np.random.default_rng(12)
    model = _attention_model(rng)
    x = rng.uniform(-1, 1, (16, 5, 4)).astype(np.float32)
    prog = hecc.compile(model, calibration=x)
    assert prog.layouts == ["batch", "slots", "packed"]
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x[:3]})[0]
    reference = prog.run(x[:3], backend="reference")["y"]
    assert_close(reference, expected, 1e-5, "reference")
    for layout in prog.layouts:
        simulated = prog.run(x[:3], backend="sim", layout=layout)["y"]
        assert np.abs(simulated - reference).max() < 1e-6 * np.abs(reference).max(), layout
    for layout in ("batch", "slots"):
        simulated = prog.run(x[:3], backend="sim", layout=layout)["y"]
        encrypted = prog.run(x[:3], backend="tenseal", layout=layout, workers=1)["y"]
        assert np.abs(encrypted - simulated).max() < 1e-3 * np.abs(simulated).max(), layout


@pytest.mark.parametrize("case", ["layer_norm", "softmax_inside"])
def test_layer_norm_and_softmax_inside_run_encrypted_within_their_reported_error(case):
    """LayerNormalization (1/sqrt by a polynomial and Newton steps) and a Softmax that a MatMul
    reads (attention: row mean subtracted, exp by squaring, reciprocal of the row sums): the
    reference backend equals onnxruntime to 1e-5, the report gives each approximation's error on
    the calibration data, the simulator (the approximated program) is within it of onnxruntime,
    and TenSEAL equals the simulator."""
    import onnxruntime as ort
    rng = np.random.default_rng(21)
    if case == "layer_norm":
        model = _model([n("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1, epsilon=1e-2),
                        n("MatMul", ["h", "w"], ["y"])], {"x": ["N", 3, 4]}, ["y"],
                       {"g": rng.uniform(.5, 1.5, 4), "b": rng.normal(0, .1, 4), "w": rng.normal(0, .5, (4, 2))})
        shape, kinds = (3, 4), ["rsqrt"]
    else:
        model = _model([n("MatMul", ["x", "w"], ["s"]), n("Softmax", ["s"], ["a"], axis=-1),
                        n("MatMul", ["a", "x"], ["y"])], {"x": ["N", 3, 3]}, ["y"], {"w": rng.normal(0, .4, (3, 3))})
        shape, kinds = (3, 3), ["softmax", "reciprocal (softmax)"]
    x = rng.uniform(-1, 1, (256,) + shape).astype(np.float32)
    prog = hecc.compile(model, calibration=x, layout="batch")
    report = prog.artifact.manifest["approximations"]
    assert [a["kind"] for a in report] == kinds
    error = report[0]["max_error_on_calibration"]
    assert 0 < error < 0.02
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x[:3]})[0]
    assert_close(prog.run(x[:3], backend="reference")["y"], expected, 1e-5, case)
    simulated = prog.run(x[:3], backend="sim")["y"]
    weights = np.abs(np.asarray(model.graph.initializer[-1].float_data or
                                onnx.numpy_helper.to_array(model.graph.initializer[-1]))).sum()
    assert np.abs(simulated - expected).max() <= 4 * error * max(weights, 1.0)
    encrypted = prog.run(x[:3], backend="tenseal", workers=1)["y"]
    assert np.abs(encrypted - simulated).max() < 1e-3 * np.abs(expected).max()


def _pooled_cnn(rng, side=16, c1=6, c2=16):
    """conv -> x^2 -> 2x2 average pooling -> a sparse conv (two taps) -> x^2 -> pooling -> dense."""
    second = np.zeros((c2, c1, 3, 3))
    second[:, :, 0, 0], second[:, :, 2, 1] = rng.normal(0, 0.3, (c2, c1)), rng.normal(0, 0.3, (c2, c1))
    return _model([n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), n("Mul", ["c1", "c1"], ["s1"]),
                   n("AveragePool", ["s1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
                   n("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]), n("Mul", ["c2", "c2"], ["s2"]),
                   n("AveragePool", ["s2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
                   n("Flatten", ["p2"], ["f"]), n("Gemm", ["f", "fw"], ["y"], transB=1)],
                  {"x": ["N", 1, side, side]}, ["y"],
                  {"w1": rng.normal(0, 0.5, (c1, 1, 3, 3)), "w2": second,
                   "fw": rng.normal(0, 0.3, (5, c2 * side * side // 16))})


def test_pooling_summed_by_additions_in_the_batch_layout(monkeypatch):
    """In the batch layout an average pooling of an activation is its windows' sums (a linear
    map of unit weights: additions, no level) scaled in the next map, not folded into it (a
    product per window element): fewer products, the same numbers in the simulator, and in
    TenSEAL within the noise model."""
    from hecc.backends.common import op_counts
    from hecc.passes.lower_to_ckks.batch import Lowering
    rng = np.random.default_rng(12)
    model = _pooled_cnn(rng, side=8)
    x = rng.uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    prog = hecc.compile(model, calibration=x, layout="batch")
    sums = [op for op in prog.graph.ops if op.name == "ckks.linear" and op.attrs["weight_scale"] == 0]
    assert len(sums) == 2
    expected = prog.run(x, backend="reference")["y"]
    assert_close(prog.run(x, backend="sim")["y"], expected, 1e-6, "batch")
    simulated = prog.run(x[:4], backend="sim")["y"]
    predicted = np.abs(prog.run(x[:4], backend="sim", noise=True)["y"] - simulated).max()
    encrypted = prog.run(x[:4], backend="tenseal", workers=1)["y"]
    assert np.abs(encrypted - simulated).max() <= max(2 * predicted, 1e-3 * np.abs(simulated).max())
    monkeypatch.setattr(Lowering, "summed_pooling", lambda self, x, pool, shape: None)
    folded = hecc.compile(model, calibration=x, layout="batch")
    assert_close(folded.run(x, backend="sim")["y"], expected, 1e-6, "folded")

    def products(p):
        return op_counts(p.graph, 1)["multiply_plain"]
    assert products(prog) < 0.5 * products(folded)


def test_pooling_summed_by_rotations_equals_the_folded_one_in_every_backend(monkeypatch):
    """An average pooling before a sparse convolution is summed by two rotations of the
    activation's ciphertext instead of folded into the convolution (four diagonals per weight):
    fewer products, the same numbers in the simulator (= onnxruntime, the model being
    polynomial), the packed layout and TenSEAL."""
    import onnxruntime as ort
    from hecc.passes.lower_to_ckks import pooling
    rng = np.random.default_rng(11)
    model = _pooled_cnn(rng)
    x = rng.uniform(-1, 1, (16, 1, 16, 16)).astype(np.float32)
    prog = hecc.compile(model, calibration=x)
    assert {"slots", "packed"} <= set(prog.layouts)
    expected = prog.run(x, backend="reference")["y"]
    assert_close(expected, ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0], 1e-5,
                 "reference vs onnxruntime")
    for layout in ("slots", "packed"):
        assert_close(prog.run(x, backend="sim", layout=layout)["y"], expected, 1e-6, layout)
    simulated = prog.run(x[:2], backend="sim", layout="slots")["y"]
    predicted = np.abs(prog.run(x[:2], backend="sim", layout="slots", noise=True)["y"] - simulated).max()
    encrypted = prog.run(x[:2], backend="tenseal", layout="slots", workers=1)["y"]
    assert np.abs(encrypted - simulated).max() <= max(2 * predicted, 1e-3 * np.abs(simulated).max())
    monkeypatch.setattr(pooling.PoolingByRotation, "pooled_alt", lambda self, op, form: None)
    folded = hecc.compile(model, calibration=x, layout="slots")
    assert_close(folded.run(x, backend="sim")["y"], expected, 1e-6, "folded")

    def products(p):
        return sum(op.name == "ckks.mul_plain" for op in p.with_layout("slots").graph.ops)
    assert products(prog) < products(folded)


def test_simulating_one_period_of_the_slots_equals_simulating_them_all(monkeypatch):
    """A slots-layout model far smaller than the ring's slots has its values replicated over them,
    and the simulator computes one period (here 64 slots of 4,096; the ViT's 2,048 of 8,192): the
    outputs and every value's maximum are those of a simulation over all the slots, to the bit,
    and the simulated CKKS error (each slot's noise drawn alike) has the same size."""
    model = POLY_MODELS["conv_pool_cube"]()
    x = np.random.default_rng(3).uniform(-1, 1, (48, 1, 6, 6))
    program = hecc.compile(model, calibration=x, layout="slots")
    graph, ckks = program.graph, program.artifact.graph("ckks-slots")
    periodic = sim.Simulator(graph)
    assert periodic.period * 16 <= periodic.slots
    runs = []
    for whole in (False, True):
        if whole:
            monkeypatch.setattr(sim, "slot_period", lambda graph, slots: slots)
        assert (sim.Simulator(graph).period == periodic.slots) == whole
        exact = sim.Simulator(graph).run([x])[0]
        errors = [sim.Simulator(graph, noise=True, seed=seed).run([x])[0] - exact for seed in range(8)]
        runs.append((exact, sim.ckks_magnitudes(ckks, [x]), np.std(errors)))
    (exact, peaks, error), (exact_all, peaks_all, error_all) = runs
    assert np.array_equal(exact, exact_all) and peaks == peaks_all and len(peaks) > 5
    assert 0.8 < error / error_all < 1.25 and error > 0


def test_a_replicated_slots_program_is_packed_as_the_lowering_packs_it(monkeypatch):
    """A one-input slots program whose values repeat with period P (64 of 4,096 slots here)
    becomes the packed program for slots / P inputs per ciphertext without a second lowering;
    every stage and weight is the one the lowering makes, and so are the outputs."""
    import contextlib
    from hecc import api
    from hecc.backends import workers
    model = POLY_MODELS["conv_pool_cube"]()
    x = np.random.default_rng(3).uniform(-1, 1, (48, 1, 6, 6))

    @contextlib.contextmanager
    def no_larger_k(fn, item, memory_hint=""):  # K = slots / P is kept (the search would go on to 128 here)
        yield lambda: []  # (the slots layout's other scale variant is then estimated in process)
    monkeypatch.setattr(workers, "beside", no_larger_k)
    made = []
    interleaved = api._interleaved
    monkeypatch.setattr(api, "_interleaved", lambda *a, **k: made.append(interleaved(*a, **k)) or made[-1])
    derived = hecc.compile(model, calibration=x, layout="packed")
    assert made and made[0] is not None and derived.parameters["inputs_per_ciphertext"] == 64
    monkeypatch.setattr(api, "_interleaved", lambda *a, **k: None)
    lowered = hecc.compile(model, calibration=x, layout="packed")
    assert lowered.parameters["inputs_per_ciphertext"] == 64
    for stage in ("ckks-packed", "final-packed"):
        assert derived.ir(stage) == lowered.ir(stage)
    graph = lowered.artifact.graph("final-packed")
    for name in graph.constants:
        assert np.array_equal(derived.artifact.constants[name], lowered.artifact.constants[name]), name
    assert np.array_equal(derived.run(x, backend="sim")["y"], lowered.run(x, backend="sim")["y"])


@pytest.mark.parametrize("layout", ["slots", "batch"])
def test_the_magnitude_runs_outputs_are_the_final_programs_exact_outputs(layout):
    """The noise prediction compares noisy runs with the outputs the magnitude measurement's run
    computed on the same inputs (no third run): they are a noiseless run of the final program."""
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))[:16]
    program = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"), calibration=x, layout=layout)
    ckks = program.artifact.graph("ckks" if layout == "batch" else "ckks-slots")
    _, outputs = sim.magnitudes_and_outputs(ckks, [x], 8)
    exact = sim.Simulator(program.graph).run([x[:8]])
    assert len(outputs) == len(exact) == 1
    assert_close(outputs[0], exact[0], 1e-12, layout)


def _banded_classifier(offsets):
    """x (N, 64) -> dense 64 -> square -> 4 logits, logit i reading inputs i + offsets (mod 64)."""
    rng = np.random.default_rng(11)
    first = rng.normal(0, 0.2, (64, 64)).astype(np.float32)
    last = np.zeros((4, 64), np.float32)
    for i in range(4):
        last[i, (i + np.asarray(offsets)) % 64] = rng.normal(0, 0.3, len(offsets))
    return _model([n("Gemm", ["x", "a"], ["h"], transB=1), n("Mul", ["h", "h"], ["s"]),
                   n("Gemm", ["s", "w"], ["y"], transB=1)], {"x": ["N", 64]}, ["y"], {"a": first, "w": last})


def test_the_decrypted_map_sums_only_the_blocks_that_hold_its_products(monkeypatch):
    """A classifier whose logits read a few inputs on either side of their own slot, from a
    64-slot period, its output gathered into blocks of 4 that do not repeat (the only placement
    offered here): the sum adds the 3 blocks that hold products (a shift and two doublings, not the
    four doublings of all 16 blocks), and the simulator and SEAL equal the reference."""
    from hecc.passes.lower_to_ckks.slots import SlotsLowering
    offered = SlotsLowering.candidates

    def gathered_only(self, aff, parts):
        found = offered(self, aff, parts)
        return [c for c in found if c.span and c.span == c.period] if self.to_client else found
    monkeypatch.setattr(SlotsLowering, "candidates", gathered_only)
    model = _banded_classifier([-2, -1, 0, 1, 2, 3, 4, 5])
    xs = np.random.default_rng(2).uniform(-1, 1, (6, 64)).astype(np.float32)
    prog = hecc.compile(model, calibration=xs, layout="slots")
    ops = prog.graph.ops
    last = max(i for i, op in enumerate(ops) if op.name in ("ckks.mul", "ckks.square"))
    steps = [op.attrs["step"] for op in ops[last:] if op.name == "ckks.rotate"]
    assert sum(op.name == "ckks.mul_plain" for op in ops[last:]) == 4
    assert 16 not in steps and 32 not in steps and 8 in steps and 4 in steps, steps
    assert_close(prog.run(xs, backend="sim")["y"], prog.run(xs)["y"], 1e-9, "gathered output")
    assert_close(prog.run(xs[:2], backend="tenseal")["y"], prog.run(xs[:2])["y"], 1e-3, "tenseal")


def test_operations_objective_counts_a_rotation_as_a_product():
    """``objective="operations"`` weighs a product and a rotation alike (a client ciphertext half,
    a key a quarter): on this model it counts no more of them than the default (time) objective,
    which weighs a rotation as about ten products."""
    from hecc.passes.lower_to_ckks import slots_op_counts
    model = _banded_classifier([-2, -1, 0, 1, 2, 3, 4, 5])
    xs = np.random.default_rng(2).uniform(-1, 1, (6, 64)).astype(np.float32)
    totals = {}
    for objective in ("time", "operations"):
        prog = hecc.compile(model, calibration=xs, layout="slots", objective=objective)
        assert prog.artifact.manifest["options"]["objective"] == objective
        counts = slots_op_counts(prog.graph)
        totals[objective] = counts["products"] + counts["rotations"]
    assert totals["operations"] <= totals["time"]
    with pytest.raises(hecc.UserError, match="objective"):
        hecc.compile(model, calibration=xs, layout="slots", objective="speed")


@pytest.mark.parametrize("objective", ["time", "operations"])
def test_a_product_whose_first_factor_has_spans_places_both_factors_where_they_fit(objective):
    """y reads 84 of 200 inputs into 10 outputs, which the lowering may gather over spans (or, as
    a value the client also decrypts through a softmax, into a longer period); w reads 3,000 inputs
    of a longer period, which those spans cannot gather: z = y * w then puts both factors in a
    placement without spans (it used to take y's and compute w wrong, by more than |z|)."""
    rng = np.random.default_rng(0)
    wy = np.zeros((10, 200), np.float32)
    wy[:, :84] = rng.normal(0, 0.3, (10, 84))
    model = _model([n("Mul", ["x", "x"], ["h"]), n("Gemm", ["h", "wy"], ["y"], transB=1),
                    n("Softmax", ["y"], ["p"], axis=1), n("Mul", ["u", "u"], ["g"]),
                    n("Gemm", ["g", "ww"], ["w"], transB=1), n("Mul", ["y", "w"], ["z"])],
                   {"x": ["N", 200], "u": ["N", 3000]}, ["p", "z"],
                   {"wy": wy, "ww": rng.normal(0, 0.05, (10, 3000))})
    xs = {"x": rng.uniform(-1, 1, (6, 200)).astype(np.float32), "u": rng.uniform(-1, 1, (6, 3000)).astype(np.float32)}
    prog = hecc.compile(model, calibration=xs, layout="slots", objective=objective)
    ref, got = prog.run(xs), prog.run(xs, backend="sim")
    for name in ("p", "z"):
        assert_close(got[name], ref[name], 1e-9, name)
