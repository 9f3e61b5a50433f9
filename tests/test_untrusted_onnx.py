"""Hostile ONNX models and .npy files: each is refused with a typed error (ModelError, InputError),
quickly and without a large allocation; valid models with external data still compile."""
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import hecc
from conftest import assert_close
from hecc.arrays import MAX_ARRAY_ELEMENTS, load_named_arrays, load_npy
from hecc.errors import InputError, ModelError
from hecc.frontends.onnx_fold_sizes import check_fold, fold_sizes
from hecc.frontends.onnx_limits import MAX_TENSOR_ELEMENTS

F, I64 = TensorProto.FLOAT, TensorProto.INT64
HECC = shutil.which("hecc", path=os.path.dirname(sys.executable)) or shutil.which("hecc")


def make_model(nodes, inits=(), inputs=None, opset=17, sparse=()):
    inputs = {"x": [1, 4]} if inputs is None else inputs
    graph = helper.make_graph(
        nodes, "hostile", [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", F, None)], list(inits), sparse_initializer=list(sparse))
    graph.output[0].type.tensor_type.shape.SetInParent()  # rank unknown: the checker wants a shape
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def const(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def node(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), **attrs)


def add_to_x(op, ins, inits, **attrs):
    """``y = x + op(ins)``: the op's inputs are all constants, so hecc folds it."""
    return make_model([node(op, ins, ["c"], **attrs), node("Add", ["x", "c"])], inits)


def forged_tensor(name, dims, **data):
    return TensorProto(name=name, data_type=F, dims=dims, **data)


def fake_key_file(path, kind="secret"):
    """A zip shaped like hecc's key files: header.json (format hecc-keys) and a SEAL blob."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("header.json", json.dumps({"format": "hecc-keys", "kind": kind}))
        zf.writestr("secret.seal", (0xA15E).to_bytes(2, "little") + bytes(62))


def external_model(folder, location, offset=None, length=None, dims=(4,), name="model.onnx"):
    w = TensorProto(name="w", data_type=F, dims=list(dims), data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = w.external_data.add()
            entry.key, entry.value = key, str(value)
    model = make_model([node("Add", ["x", "w"])], [w])
    path = os.path.join(folder, name)
    onnx.save(model, path)
    return path


# name -> a model that asks for a huge allocation (each must be refused with a ModelError)
HOSTILE = {
    "initializer_huge_dims_raw": lambda: make_model(
        [node("Add", ["x", "w"])], [forged_tensor("w", [10**6, 10**6], raw_data=b"\0" * 16)]),
    "initializer_huge_dims_typed": lambda: make_model(
        [node("Add", ["x", "w"])], [forged_tensor("w", [10**6, 10**6], float_data=[1.0, 2.0])]),
    "initializer_more_than_bound": lambda: make_model(
        [node("Add", ["x", "w"])], [forged_tensor("w", [2**28], raw_data=b"\0" * 16)]),
    "constant_node_huge_dims": lambda: make_model(
        [helper.make_node("Constant", [], ["c"], value=forged_tensor("v", [10**5, 10**5], raw_data=b"\0" * 4)),
         node("Add", ["x", "c"])]),
    "sparse_initializer_huge": lambda: make_model(
        [node("Add", ["x", "s"])], sparse=[helper.make_sparse_tensor(
            const("s", [1.0]), const("s_idx", [3], np.int64), [10**6, 10**6])]),
    "pad_constant": lambda: add_to_x("Pad", ["k", "pads"], [const("k", np.ones((2, 2))),
                                                           const("pads", [10**6] * 4, np.int64)]),
    "constant_of_shape": lambda: add_to_x("ConstantOfShape", ["shape"],
                                          [const("shape", [10**5, 10**5], np.int64)]),
    "expand": lambda: add_to_x("Expand", ["k", "shape"], [const("k", [1.0]),
                                                         const("shape", [10**5, 10**5], np.int64)]),
    "tile": lambda: add_to_x("Tile", ["k", "reps"], [const("k", np.ones((2, 2))),
                                                     const("reps", [10**5, 10**5], np.int64)]),
    "range": lambda: add_to_x("Range", ["a", "b", "d"], [const("a", 0, np.int64), const("b", 10**12, np.int64),
                                                         const("d", 1, np.int64)]),
    "resize": lambda: add_to_x("Resize", ["k", "", "scales"], [const("k", np.ones((1, 1, 4, 4))),
                                                              const("scales", [1, 1, 10**4, 10**4])]),
    "one_hot": lambda: add_to_x("OneHot", ["i", "depth", "v"], [const("i", [0, 1], np.int64),
                                                               const("depth", 10**10, np.int64),
                                                               const("v", [0.0, 1.0])]),
    "broadcast_outer_product": lambda: add_to_x("Mul", ["a", "b"], [const("a", np.ones((2**14, 1))),
                                                                   const("b", np.ones((1, 2**14)))]),
    "random_normal": lambda: add_to_x("RandomNormal", [], [], shape=[10**5, 10**5]),
    "conv_dilated": lambda: add_to_x("Conv", ["k", "w"], [const("k", np.ones((1, 1, 8, 8))),
                                                         const("w", np.ones((1, 1, 3, 3)))],
                                     dilations=[10**4, 10**4], pads=[10**4] * 4),
    "huge_encrypted_input": lambda: make_model([node("Relu", ["x"])], inputs={"x": [1, 10**9]}),
    "pad_encrypted": lambda: make_model([node("Pad", ["x", "pads"])], [const("pads", [0, 10**7, 0, 10**7], np.int64)]),
}


def _outside_symlink(folder):
    (folder.parent / "outside.bin").write_bytes(bytes(16))
    os.symlink(folder.parent / "outside.bin", folder / "link.bin")
    return external_model(folder, "link.bin")


def _parent_folder(folder):
    (folder.parent / "outside.bin").write_bytes(bytes(16))
    return external_model(folder, "../outside.bin")


def _huge_dims(folder):
    (folder / "w.bin").write_bytes(bytes(16))
    return external_model(folder, "w.bin", dims=(10**6, 10**6))


def _key_file(folder, name):
    fake_key_file(folder / "keys" / name)
    return external_model(folder, f"keys/{name}", offset=30, length=16)


# name -> (model folder -> path of a model whose external data must be refused)
EXTERNAL_HOSTILE = {
    "external_secret_key": lambda folder: _key_file(folder, "secret.key"),
    "external_key_renamed": lambda folder: _key_file(folder, "weights.bin"),
    "external_parent_folder": _parent_folder,
    "external_absolute_path": lambda folder: external_model(folder, "/etc/passwd", offset=0, length=16),
    "external_symlink_outside": _outside_symlink,
    "external_huge_dims": _huge_dims,
}


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    paths = {}
    for name, build in HOSTILE.items():
        paths[name] = str(tmp_path_factory.mktemp(name) / f"{name}.onnx")
        onnx.save(build(), paths[name])
    for name, build in EXTERNAL_HOSTILE.items():
        paths[name] = build(tmp_path_factory.mktemp(name))
    return paths


@pytest.mark.parametrize("name", sorted(HOSTILE) + sorted(EXTERNAL_HOSTILE))
def test_hostile_model_refused_quickly(name, hostile_files):
    start = time.perf_counter()
    with pytest.raises(ModelError) as info:
        hecc.compile(hostile_files[name])
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{name}: refused after {elapsed:.2f} s"
    message = str(info.value)
    if name in EXTERNAL_HOSTILE:
        assert "initializer 'w'" in message, message
    else:
        assert "bound" in message or "MAX_" in message, message


def test_hostile_models_refused_by_cli_without_large_allocation(hostile_files, tmp_path):
    """Each hostile model through ``hecc compile`` in its own process: exit code 2, one message,
    no traceback; the peak RSS of those processes stays small."""
    assert HECC, "the hecc script is not installed next to the Python interpreter"
    driver = r"""
import json, resource, subprocess, sys, time
hecc, out, paths = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
results = {}
for name, path in paths.items():
    start = time.perf_counter()
    p = subprocess.run([hecc, "compile", path, "-o", out, "-q"], capture_output=True, text=True)
    results[name] = [p.returncode, p.stderr, time.perf_counter() - start]
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"results": results, "peak_rss_bytes": peak}))
"""
    done = subprocess.run([sys.executable, "-c", driver, HECC, str(tmp_path / "out.hecc"),
                           json.dumps(hostile_files)], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    for name, (code, stderr, seconds) in report["results"].items():
        assert code == 2, f"{name}: exit code {code}: {stderr}"
        assert "Traceback" not in stderr and stderr.startswith("hecc: error:"), f"{name}: {stderr}"
        assert seconds < 10, f"{name}: {seconds:.1f} s"
    assert report["peak_rss_bytes"] < 400 * 2**20, f"peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MB"
    assert not os.path.exists(tmp_path / "out.hecc")


def test_forged_tensor_message_names_tensor_and_sizes(hostile_files):
    with pytest.raises(ModelError, match=r"initializer 'w' declares dims \[1000000, 1000000\].*MAX_TENSOR_ELEMENTS"):
        hecc.compile(hostile_files["initializer_huge_dims_raw"])
    with pytest.raises(ModelError, match="initializer 'w' carries 16 bytes of data, but .* need 64"):
        hecc.compile(make_model([node("Add", ["x", "w"])], [forged_tensor("w", [4, 4], raw_data=b"\0" * 16)]))


def test_fold_refusal_names_node_op_and_size(hostile_files):
    with pytest.raises(ModelError, match=r"'ConstantOfShape_0' \(ConstantOfShape\) would compute an "
                                         r"output 'c' of 10,000,000,000 elements"):
        hecc.compile(hostile_files["constant_of_shape"])


def test_model_file_bound_checked_before_reading(tmp_path, monkeypatch):
    import hecc.frontends.onnx as frontend
    path = tmp_path / "big.onnx"
    onnx.save(make_model([node("Relu", ["x"])]), str(path))
    monkeypatch.setattr(frontend, "MAX_MODEL_BYTES", 10)
    with pytest.raises(ModelError, match="more than an ONNX file can hold"):
        hecc.compile(str(path))
    with pytest.raises(ModelError, match="not a regular file"):
        hecc.compile(str(tmp_path))


# --- constant folding: the output sizes told before evaluating --------------------------------

def _i64(*v):
    return np.asarray(v, dtype=np.int64)


SMALL_FOLDS = {  # (node, inputs, opset): each must tell exactly the size the evaluator computes
    "ConstantOfShape": (node("ConstantOfShape", ["s"]), [_i64(3, 4)], 17),
    "Expand": (node("Expand", ["a", "s"]), [np.ones((3, 1), np.float32), _i64(2, 1, 5)], 17),
    "Tile": (node("Tile", ["a", "r"]), [np.ones((2, 3), np.float32), _i64(2, 3)], 17),
    "Pad": (node("Pad", ["a", "p"]), [np.ones((2, 3), np.float32), _i64(1, 0, 2, 3)], 17),
    "Pad_axes": (node("Pad", ["a", "p", "", "ax"]), [np.ones((2, 3), np.float32), _i64(1, 2), None, _i64(-1)], 18),
    "Pad_attr": (node("Pad", ["a"], pads=[1, 1, 1, 1]), [np.ones((2, 3), np.float32)], 7),
    "Range": (node("Range", ["a", "b", "d"]), [np.array(0.5), np.array(10.0), np.array(3.0)], 17),
    "Range_negative": (node("Range", ["a", "b", "d"]), [_i64(10)[0], _i64(0)[0], _i64(-3)[0]], 17),
    "Resize_scales": (node("Resize", ["a", "", "sc"]), [np.ones((1, 1, 2, 3), np.float32), None,
                                                      np.array([1, 1, 2, 1.5], np.float32)], 17),
    "Resize_sizes": (node("Resize", ["a", "", "", "sz"]), [np.ones((1, 1, 2, 3), np.float32), None, None,
                                                         _i64(1, 1, 5, 7)], 17),
    "OneHot": (node("OneHot", ["i", "d", "v"]), [_i64(0, 2, 1), np.array(4), np.array([0, 1], np.float32)], 17),
    "Add_broadcast": (node("Add", ["a", "b"]), [np.ones((4, 1), np.float32), np.ones((1, 6), np.float32)], 17),
    "Gather": (node("Gather", ["a", "i"], axis=1), [np.ones((5, 6), np.float32), _i64(0, 2, 3)], 17),
    "Concat": (node("Concat", ["a", "b"], axis=0), [_i64(1, 2), _i64(3)], 17),
    "Reshape": (node("Reshape", ["a", "s"]), [np.ones((2, 6), np.float32), _i64(3, -1)], 17),
    "Slice": (node("Slice", ["a", "s", "e"]), [np.ones((5, 6), np.float32), _i64(1), _i64(3)], 17),
    "MatMul": (node("MatMul", ["a", "b"]), [np.ones((2, 3, 4), np.float32), np.ones((4, 5), np.float32)], 17),
    "Transpose": (node("Transpose", ["a"], perm=[1, 0]), [np.ones((2, 3), np.float32)], 17),
    "Conv": (node("Conv", ["a", "w"], pads=[1, 1, 1, 1]), [np.ones((1, 2, 5, 5), np.float32),
                                                         np.ones((3, 2, 3, 3), np.float32)], 17),
}


@pytest.mark.parametrize("case", sorted(SMALL_FOLDS))
def test_fold_sizes_match_the_evaluator(case):
    n, inputs, opset = SMALL_FOLDS[case]
    counts, work = fold_sizes(n, inputs, {"": opset})
    feeds = {name: x for name, x in zip(n.input, inputs) if name}
    actual = ReferenceEvaluator(n, opsets={"": opset}).run(None, feeds)
    assert counts == [np.asarray(a).size for a in actual]
    assert 0 <= work <= MAX_TENSOR_ELEMENTS


def test_fold_sizes_upper_bound_for_data_dependent_ops():
    x = np.array([[0, 1, 0], [2, 0, 3]], np.float32)
    counts, _ = fold_sizes(node("NonZero", ["a"]), [x], {"": 17})
    assert counts == [x.ndim * x.size]  # at most; the evaluator gives 2 x 3
    assert fold_sizes(node("Custom", ["a"], domain="example.com"), [x], {"": 17})[0] == [None]


def test_fold_sizes_without_allocating():
    n = node("ConstantOfShape", ["s"])
    assert fold_sizes(n, [_i64(10**9, 10**9)], {"": 17})[0] == [10**18]
    n = node("Tile", ["a", "r"])  # onnx's own inference overflows int64 here; the rule does not
    assert fold_sizes(n, [np.ones((3, 4), np.float32), _i64(2**62, 2**62)], {"": 17})[0] == [12 * 2**124]
    n = node("Conv", ["a", "w"], dilations=[10**4, 10**4])
    _, work = fold_sizes(n, [np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32)], {"": 17})
    assert work > MAX_TENSOR_ELEMENTS


def test_check_fold_refuses_unknown_sizes_and_control_flow():
    with pytest.raises(ModelError, match="cannot be told"):
        check_fold(node("Custom", ["a"], domain="example.com"), "c0", [np.ones(3)], {"": 17})
    body = helper.make_graph([], "body", [], [])
    with pytest.raises(ModelError, match="control flow"):
        check_fold(node("If", ["b"], then_branch=body, else_branch=body), "if0", [np.array(True)], {"": 17})
    assert check_fold(node("Add", ["a", "b"]), "add0", [np.ones(3), np.ones(3)], {"": 17}) == 3


def test_shape_arithmetic_still_folds():
    x = helper.make_tensor_value_info("x", F, ["batch", 2, 3])
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "zero"], ["b"], axis=0),
             node("Unsqueeze", ["b", "zero1"], ["b1"]), node("Concat", ["b1", "minus1"], ["t"], axis=0),
             node("Reshape", ["x", "t"], ["y"])]
    graph = helper.make_graph(nodes, "shapes", [x], [helper.make_tensor_value_info("y", F, ["batch", 6])],
                              [const("zero", 0, np.int64), const("zero1", [0], np.int64),
                               const("minus1", [-1], np.int64)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    data = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    assert_close(hecc.compile(model).run(data)["y"], data.reshape(2, 6))


# --- external data ---------------------------------------------------------------------------

def test_external_data_key_file_by_name_refused(tmp_path):
    fake_key_file(tmp_path / "keys" / "secret.key")
    path = external_model(tmp_path, "keys/secret.key", offset=30, length=16)
    with pytest.raises(ModelError, match="initializer 'w'.*names a hecc key file"):
        hecc.compile(path)


def test_external_data_key_file_by_content_refused(tmp_path):
    fake_key_file(tmp_path / "keys" / "renamed.bin")
    with pytest.raises(ModelError, match="initializer 'w'.*hecc key file \\(format 'hecc-keys'\\)"):
        hecc.compile(external_model(tmp_path, "keys/renamed.bin", offset=0, length=16))
    import struct
    (tmp_path / "blob.bin").write_bytes(struct.pack("<HBBBBHQ", 0xA15E, 16, 4, 3, 2, 0, 32) + bytes(16))
    with pytest.raises(ModelError, match="SEAL's serialization header"):
        hecc.compile(external_model(tmp_path, "blob.bin", offset=0, length=16))


def test_external_data_outside_the_folder_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(bytes(16))
    with pytest.raises(ModelError, match="initializer 'w'.*leads outside the model's folder"):
        hecc.compile(external_model(folder, "../outside.bin"))
    with pytest.raises(ModelError, match="initializer 'w'.*is an absolute path"):
        hecc.compile(external_model(folder, str(tmp_path / "outside.bin")))
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    with pytest.raises(ModelError, match="initializer 'w'.*leads outside the model's folder"):
        hecc.compile(external_model(folder, "link.bin"))


def test_external_data_symlink_to_key_inside_folder_refused(tmp_path):
    fake_key_file(tmp_path / "keys" / "secret.key")
    os.symlink(tmp_path / "keys" / "secret.key", tmp_path / "weights.bin")
    with pytest.raises(ModelError, match="names a hecc key file"):
        hecc.compile(external_model(tmp_path, "weights.bin", offset=30, length=16))


@pytest.mark.parametrize("location, offset, length, match", [
    ("weights.bin", 8, 16, "runs past the end"),
    ("weights.bin", 0, 12, "is 12 bytes, but its dims"),
    ("weights.bin", 100, None, "offset 100 lies past the end"),
    ("weights.bin", "-4", 16, "not a non-negative integer"),
    ("missing.bin", None, None, "does not exist"),
    (".hidden/weights.bin", None, None, "hidden file or folder"),
    ("fifo.bin", None, None, "not a regular file"),
    ("sub", None, None, "not a regular file"),
])
def test_external_data_bad_regions_refused(tmp_path, location, offset, length, match):
    (tmp_path / "weights.bin").write_bytes(bytes(16))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "weights.bin").write_bytes(bytes(16))
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "fifo.bin")
    with pytest.raises(ModelError, match=match):
        hecc.compile(external_model(tmp_path, location, offset, length))


def test_external_data_huge_declared_dims_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(bytes(16))
    with pytest.raises(ModelError, match="MAX_TENSOR_ELEMENTS"):
        hecc.compile(external_model(tmp_path, "weights.bin", dims=(10**6, 10**6)))


def test_external_data_shared_bytes_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(bytes(16))
    model = make_model([node("Add", ["x", "w"]), node("Add", ["y0", "v"], ["y"])], [])
    model.graph.node[0].output[0] = "y0"
    for name in ("w", "v"):
        t = model.graph.initializer.add()
        t.CopyFrom(TensorProto(name=name, data_type=F, dims=[4], data_location=TensorProto.EXTERNAL))
        t.external_data.add(key="location", value="weights.bin")
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ModelError, match="also reads; each tensor must have its own bytes"):
        hecc.compile(str(tmp_path / "model.onnx"))


def test_external_data_from_bytes_or_modelproto_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(bytes(16))
    path = external_model(tmp_path, "weights.bin")
    with open(path, "rb") as f:
        data = f.read()
    for source in (data, onnx.load(path, load_external_data=False)):
        with pytest.raises(ModelError, match="initializer 'w'.*pass the model's path"):
            hecc.compile(source)


def _dense_model():
    rng = np.random.default_rng(1)
    w1, b1 = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    w2 = rng.standard_normal((5, 3)).astype(np.float32)
    nodes = [node("MatMul", ["x", "w1"], ["h"]), node("Add", ["h", "b1"], ["z"]), node("Mul", ["z", "z"], ["s"]),
             node("MatMul", ["s", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", F, ["batch", 6])],
                              [helper.make_tensor_value_info("y", F, ["batch", 3])],
                              [const("w1", w1), const("b1", b1), const("w2", w2)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_valid_external_data_model_compiles_and_runs(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = str(folder / "dense.onnx")
    onnx.save_model(_dense_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="dense.onnx.data", size_threshold=0)
    assert onnx.load(path, load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    x = np.random.default_rng(2).standard_normal((3, 6)).astype(np.float32)
    expected = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    prog = hecc.compile(path)
    assert_close(prog.run(x)["y"], expected, 1e-5, "external data model")
    os.symlink(folder / "dense.onnx.data", folder / "alias.data")  # a symlink inside the folder is fine
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "alias.data"
    onnx.save(model, str(folder / "alias.onnx"))
    assert_close(hecc.compile(str(folder / "alias.onnx")).run(x)["y"], expected, 1e-5, "via a symlink")


def test_modelproto_given_is_not_modified():
    model = _dense_model()
    before = model.SerializeToString()
    hecc.compile(model)
    assert model.SerializeToString() == before


def test_sparse_initializer_is_a_constant():
    model = make_model([node("Add", ["x", "s"])], sparse=[helper.make_sparse_tensor(
        const("s", [5.0, 7.0]), const("s_idx", [1, 3], np.int64), [4])])
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    assert_close(hecc.compile(model).run(x)["y"], x + np.array([0, 5, 0, 7]))


# --- .npy and .npz files ---------------------------------------------------------------------

def _write_header(path, shape, descr="<f8", payload=b"\0" * 8):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(payload)


def test_load_npy_huge_shape_header_refused_without_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    _write_header(path, (10**12,))
    assert os.path.getsize(path) < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"shape \(1000000000000,\) of float64.*MAX_ARRAY_ELEMENTS"):
        load_npy(str(path))
    assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB
    _write_header(path, (1000, 1000))
    with pytest.raises(InputError, match="but the file holds 8: it is truncated"):
        load_npy(str(path))


def test_load_npy_truncated_and_padded_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(100.0))
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(InputError, match="truncated"):
        load_npy(str(path))
    path.write_bytes(data + b"junk")
    with pytest.raises(InputError, match="800 bytes of data\\), but the file holds 804"):
        load_npy(str(path))
    path.write_bytes(data[:5])
    with pytest.raises(InputError, match="not a .npy file"):
        load_npy(str(path))


def test_load_npy_refuses_pickles_and_non_numeric(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="Python objects"):
        load_npy(str(path))
    np.save(path, np.array(["a", "b"]))
    with pytest.raises(InputError, match="not numbers"):
        load_npy(str(path))


def test_load_npy_refuses_missing_directory_and_other_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_npy(str(tmp_path / "missing.npy"))
    with pytest.raises(InputError, match="is a directory"):
        load_npy(str(tmp_path))
    (tmp_path / "text.npy").write_text("1,2,3\n")
    with pytest.raises(InputError, match="not a .npy file"):
        load_npy(str(tmp_path / "text.npy"))
    np.savez(tmp_path / "a.npz", x=np.ones(3))
    with pytest.raises(InputError, match="is an .npz archive"):
        load_npy(str(tmp_path / "a.npz"))


def test_load_npy_header_length_checked_before_reading(tmp_path):
    path = tmp_path / "v2.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + b"{}")
    with pytest.raises(InputError, match="header declares a length of 2,147,483,648 bytes"):
        load_npy(str(path))


@pytest.mark.parametrize("array", [np.arange(12.0).reshape(3, 4), np.asfortranarray(np.ones((2, 3), np.float32)),
                                   np.array(3.5), np.zeros((0, 4)), np.arange(5, dtype=">i4"),
                                   np.array([1 + 2j]), np.array([True, False])])
def test_load_npy_reads_valid_arrays(tmp_path, array):
    np.save(tmp_path / "a.npy", array)
    got = load_npy(str(tmp_path / "a.npy"))
    assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)


def _framed(version, header, payload):
    """An .npy file: magic, ``version``, the header length in that version's width, the header."""
    width = 2 if version == 1 else 4
    return b"\x93NUMPY" + bytes([version, 0]) + len(header).to_bytes(width, "little") + header + payload


_HEADERS = st.builds(
    lambda descr, shape, fortran: repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode(),
    st.sampled_from(["<f8", "<f4", "|O", "<U3", "|V8", "<c16", "|b1", ">i2", "x", "<f8x"]),
    st.lists(st.integers(-2, 10**13), max_size=4).map(tuple), st.booleans())
_NPY_FILES = st.one_of(
    st.tuples(st.sampled_from([1, 2, 3]), st.binary(max_size=300)).map(
        lambda t: b"\x93NUMPY" + bytes([t[0], 0]) + t[1]),  # random bytes after the magic
    st.builds(_framed, st.sampled_from([1, 2]), st.binary(max_size=120), st.binary(max_size=64)),
    st.builds(_framed, st.sampled_from([1, 2]), _HEADERS, st.binary(max_size=64)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_NPY_FILES)
def test_load_npy_fuzz_only_input_errors(tmp_path, data):
    path = tmp_path / "fuzz.npy"
    path.write_bytes(data)
    try:
        array = load_npy(str(path))
    except InputError:
        return
    assert isinstance(array, np.ndarray) and array.size <= MAX_ARRAY_ELEMENTS


def test_load_named_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.arange(6.0).reshape(2, 3), y=np.ones(4, np.float32))
    np.savez_compressed(tmp_path / "b.npz", x=np.arange(6.0).reshape(2, 3), y=np.ones(4, np.float32))
    for name in ("a.npz", "b.npz"):
        arrays = load_named_arrays(str(tmp_path / name))
        assert sorted(arrays) == ["x", "y"] and np.array_equal(arrays["x"], np.arange(6.0).reshape(2, 3))
    np.savez(tmp_path / "c.npz", x=np.array([None], dtype=object))
    with pytest.raises(InputError, match="member 'x.npy' holds Python objects"):
        load_named_arrays(str(tmp_path / "c.npz"))
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as zf:
        with zf.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with pytest.raises(InputError, match=r"member 'x.npy'.*shape \(1000000000000,\)"):
        load_named_arrays(str(tmp_path / "d.npz"))
    with pytest.raises(InputError, match="not a readable .npz archive"):
        load_named_arrays(__file__)
    with pytest.raises(InputError, match="is a directory"):
        load_named_arrays(str(tmp_path))


def test_load_named_arrays_refuses_declared_huge_member_before_reading(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros(1000))
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="declares 4,294,967,280 bytes uncompressed"):
        load_named_arrays(str(path))
