"""scikit-learn linear models exported with skl2onnx compile, and their reference runs give
scikit-learn's predicted classes (the Concrete ML workflow)."""
import numpy as np
import onnxruntime as ort
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import hecc
from conftest import MNIST, assert_close


@pytest.fixture(scope="module")
def mnist_flat():
    with np.load(MNIST) as d:
        x_train = d["x_train"][:3000].reshape(-1, 784).astype(np.float32) / 255
        x_test = d["x_test"][:1000].reshape(-1, 784).astype(np.float32) / 255
        return x_train, d["y_train"][:3000], x_test, d["y_test"][:1000]


@pytest.fixture(scope="module")
def logreg(mnist_flat):
    x_train, y_train, _, _ = mnist_flat
    return LogisticRegression(max_iter=200).fit(x_train, y_train)


@pytest.mark.parametrize("zipmap", [False, True])
def test_logistic_regression_mnist_classes_equal_sklearn(mnist_flat, logreg, zipmap):
    x_train, y_train, x_test, y_test = mnist_flat
    model = logreg
    onx = to_onnx(model, x_train[:1], options={"zipmap": zipmap}, target_opset=17)
    prog = hecc.compile(onx)
    out = prog.run(x_test)
    label_name = prog.outputs[0][0]
    np.testing.assert_array_equal(out[label_name], model.predict(x_test))
    assert (out[label_name] == y_test).mean() > 0.85
    if not zipmap:
        expected = ort.InferenceSession(onx.SerializeToString()).run(None, {"X": x_test})
        assert_close(out["probabilities"], expected[1], 1e-5, "probabilities")
        assert_close(out["probabilities"], model.predict_proba(x_test), 1e-4, "vs sklearn")


def test_logistic_regression_encrypted_classes_equal_sklearn(mnist_flat, logreg):
    """Through TenSEAL: the scores are computed encrypted, the class decision on the client."""
    x_train, _, x_test, _ = mnist_flat
    onx = to_onnx(logreg, x_train[:1], options={"zipmap": False}, target_opset=17)
    prog = hecc.compile(onx, calibration=x_train[:1000])
    out = prog.run(x_test, backend="tenseal")
    np.testing.assert_array_equal(out["label"], logreg.predict(x_test))
    assert prog.last_stats["op_counts"].get("relinearize", 0) == 0


def test_binary_logistic_regression_and_scaler_pipeline(mnist_flat):
    x_train, y_train, x_test, _ = mnist_flat
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))
    model.fit(x_train[:, ::4], (y_train > 4).astype(np.int64))
    onx = to_onnx(model, x_train[:1, ::4], options={"zipmap": False}, target_opset=17)
    out = hecc.compile(onx).run(np.ascontiguousarray(x_test[:, ::4]))
    np.testing.assert_array_equal(out["label"], model.predict(x_test[:, ::4]))


def test_linear_regression(mnist_flat):
    x_train, y_train, x_test, _ = mnist_flat
    model = LinearRegression().fit(x_train[:, ::8], y_train.astype(np.float64))
    onx = to_onnx(model, x_train[:1, ::8], target_opset=17)
    out = hecc.compile(onx).run(np.ascontiguousarray(x_test[:, ::8]))
    expected = ort.InferenceSession(onx.SerializeToString()).run(None, {"X": np.ascontiguousarray(x_test[:, ::8])})[0]
    assert_close(out["variable"], expected, 1e-5, "regression")
