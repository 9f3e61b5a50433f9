"""The shipped examples compile, and the reference backend reproduces their committed outputs."""
import os

import numpy as np
import onnxruntime as ort
import pytest

import hecc
from conftest import EXAMPLES, MNIST, assert_close

CRYPTONETS = os.path.join(EXAMPLES, "cryptonets_mnist")


@pytest.fixture(scope="module")
def cryptonets():
    return hecc.compile(os.path.join(CRYPTONETS, "model.onnx"))


def test_cryptonets_structure(cryptonets):
    ops = [op.name for op in cryptonets.artifact.graph("tensor").ops]
    assert ops.count("tensor.conv2d") == 1 and ops.count("tensor.matmul") == 2
    assert ops.count("tensor.mul") == 2  # the two squares
    assert cryptonets.inputs == [("input", (1, 1, 28, 28))]


def test_cryptonets_sample_outputs(cryptonets):
    x = np.load(os.path.join(CRYPTONETS, "input.npy"))
    expected = np.load(os.path.join(CRYPTONETS, "expected.npy"))
    labels = np.load(os.path.join(CRYPTONETS, "labels.npy"))
    assert x.shape == (64, 1, 28, 28) and labels.shape == (64,)
    y = cryptonets.run(x)["logits"]
    assert_close(y, expected, 1e-5, "cryptonets logits")
    np.testing.assert_array_equal(y.argmax(1), expected.argmax(1))
    assert (y.argmax(1) == labels).mean() >= 0.95


def test_cryptonets_test_set_accuracy(cryptonets):
    """The shipped 1,000 test images (all 10,000 with HECC_MNIST)."""
    with np.load(MNIST) as d:
        x = (d["x_test"].astype(np.float32) / 255)[:, None]
        labels = d["y_test"]
    ours = cryptonets.run(x)["logits"]
    session = ort.InferenceSession(os.path.join(CRYPTONETS, "model.onnx"))
    theirs = session.run(None, {"input": x})[0]
    assert_close(ours, theirs, 1e-5, "10,000 test images")
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert (ours.argmax(1) == labels).mean() >= (0.985 if len(labels) == 10000 else 0.98)


def test_readme_ops_table_is_generated_from_the_import_table():
    from hecc.frontends.onnx_ops import supported_ops_markdown
    with open(os.path.join(os.path.dirname(EXAMPLES), "README.md")) as f:
        assert supported_ops_markdown() in f.read()


@pytest.mark.parametrize("name, output", [("relu_cnn_mnist", "logits"), ("sigmoid_mlp_mnist", "logits"),
                                          ("tenseal_tutorial_mnist", "logits"),
                                          ("sklearn_logreg_mnist", "probabilities"), ("vit_mnist", "logits")])
def test_example_reference_reproduces_expected(name, output):
    folder = os.path.join(EXAMPLES, name)
    x = np.load(os.path.join(folder, "input.npy"))
    # the ReLU CNN's and the ViT's slots programs (13 levels at N=16384; attention's 2k maps per
    # product of two encrypted matrices) are slow to simulate: their batch programs here
    prog = hecc.compile(os.path.join(folder, "model.onnx"), calibration=x,
                        layout="batch" if name in ("relu_cnn_mnist", "vit_mnist") else "auto")
    assert prog.encrypted
    got = prog.run(x)
    assert_close(got[output], np.load(os.path.join(folder, "expected.npy")), 1e-5, name)
    # the CKKS programs, without noise, compute the same polynomial network in either layout (and
    # the reference's network when it has no approximated activation)
    sims = {layout: prog.run(x, backend="sim", layout=layout)[output] for layout in prog.layouts}
    for layout, out in sims.items():
        assert_close(out, sims[prog.layouts[0]], 1e-6, f"{name}: {layout} vs {prog.layouts[0]}")
        if not prog.artifact.manifest["approximations"]:
            assert_close(out, got[output], 1e-6, f"{name}: {layout} vs reference")
    if name.startswith("sklearn"):
        np.testing.assert_array_equal(got["label"], np.load(os.path.join(folder, "expected_labels.npy")))


def test_the_vit_converted_by_he_friendly_compiles_with_nothing_to_approximate():
    """The exact ViT (refused: 36 levels) after hecc.torch.he_friendly: depth 4 in the batch layout,
    no approximation, the simulator equal to onnxruntime."""
    import onnxruntime as ort
    folder = os.path.join(EXAMPLES, "vit_mnist")
    x = np.load(os.path.join(folder, "input.npy"))[:16]
    path = os.path.join(folder, "converted.onnx")
    prog = hecc.compile(path, calibration=x, layout="batch")
    assert prog.artifact.manifest["approximations"] == []
    assert len(prog.parameters["coeff_modulus_bits"]) - 2 == 4
    expected = ort.InferenceSession(path).run(None, {"input": x})[0]
    assert_close(prog.run(x, backend="sim")["logits"], expected, 1e-5, "converted ViT")


def test_every_example_has_a_readme_with_an_encrypted_run():
    for name in os.listdir(EXAMPLES):
        if not os.path.isdir(os.path.join(EXAMPLES, name)):  # mnist_training.py: the train scripts' helpers
            continue
        with open(os.path.join(EXAMPLES, name, "README.md")) as f:
            text = f.read()
        assert "hecc compile" in text and "--backend tenseal" in text, name


def test_he_friendly_lenet_compiles_where_the_original_is_refused():
    """examples/lenet_he_friendly: the standard LeNet-5 (max pooling) is refused with a pointer to
    hecc.torch.he_friendly; its block-pruned HE-friendly version compiles for the slots layout,
    the reference backend reproduces onnxruntime's logits, the CKKS program (simulated) computes
    the same network, and the report counts the products and rotations the zero weights removed."""
    from hecc.errors import UnsupportedOpError
    from hecc.report import render, zero_block_counts
    folder = os.path.join(EXAMPLES, "lenet_he_friendly")
    with pytest.raises(UnsupportedOpError, match="MaxPool.*he_friendly"):
        hecc.compile(os.path.join(folder, "original.onnx"))
    x = np.load(os.path.join(folder, "input.npy"))
    prog = hecc.compile(os.path.join(folder, "pruned.onnx"), calibration=x, layout="slots")
    got = prog.run(x)["logits"]
    assert_close(got, np.load(os.path.join(folder, "expected_pruned.npy")), 1e-5, "pruned LeNet-5")
    assert_close(prog.run(x[:4], backend="sim")["logits"], got[:4], 1e-6, "pruned LeNet-5, simulated")
    products, rotations, dense_products, dense_rotations = zero_block_counts(prog)
    assert products + rotations < (dense_products + dense_rotations) / 3
    assert "zero weights skipped" in render(prog, measure=False)
    # compiled for the fewest products plus rotations: 90% fewer than the unpruned HE-friendly
    # model's program under the same objective (issue 16), and still the same network
    counts = {}
    for name in ("friendly", "pruned"):
        ops = hecc.compile(os.path.join(folder, f"{name}.onnx"), calibration=x, layout="slots",
                           objective="operations")
        counts[name] = sum(int(op.result.type.count) for op in ops.graph.ops
                           if op.name in ("ckks.mul_plain", "ckks.rotate"))
    assert counts["pruned"] <= 0.1 * counts["friendly"], counts
    assert_close(ops.run(x[:4], backend="sim")["logits"], got[:4], 1e-6, "pruned LeNet-5, operations objective")


def test_federated_logreg_aggregate_compiles_to_small_messages():
    """examples/federated_logreg: the weights Flower's FedAvg aggregated (model.npz) are an
    ordinary scikit-learn model; hecc.sklearn compiles it into one-prime N=2048 batch programs
    (no special prime: nothing rotates) whose simulated classes equal scikit-learn's."""
    import hecc.sklearn
    from sklearn.linear_model import LogisticRegression
    with np.load(os.path.join(EXAMPLES, "federated_logreg", "model.npz")) as w:
        model = LogisticRegression()
        model.coef_, model.intercept_, model.classes_ = w["coef"], w["intercept"], np.arange(10)
    with np.load(MNIST) as d:
        x = d["x_test"][:500].reshape(500, -1).astype(np.float32) / 255
    fhe_model = hecc.sklearn.compile(model, x)
    assert fhe_model.program.with_layout("batch").parameters["coeff_modulus_bits"] == [53]
    np.testing.assert_array_equal(fhe_model.predict(x[:200], fhe="simulate", layout="batch"), model.predict(x[:200]))
