"""``hecc.sklearn.compile``: every supported estimator, alone and behind the supported
preprocessing, predicts what scikit-learn predicts (classes exactly, with the estimator's labels
and dtype; regression values within 1e-3 relative) under ``fhe="disable"`` and
``fhe="simulate"``; a few run encrypted (``fhe="execute"``, TenSEAL) on 1,000 inputs in one batch.
"""
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import (ElasticNet, GammaRegressor, Lasso, LinearRegression, LogisticRegression,
                                  PoissonRegressor, Ridge, RidgeClassifier, SGDClassifier, TweedieRegressor)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, Normalizer, PolynomialFeatures, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

import hecc
import hecc.sklearn
from conftest import MNIST


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def mnist_flat():
    with np.load(MNIST) as d:
        x_train = d["x_train"][:3000].reshape(-1, 784).astype(np.float32) / 255
        x_test = d["x_test"][:1000].reshape(-1, 784).astype(np.float32) / 255
        return x_train, d["y_train"][:3000], x_test


CLASSIFIERS = {
    "LogisticRegression": lambda: LogisticRegression(max_iter=500),
    "LinearSVC": lambda: LinearSVC(),
    "SGDClassifier": lambda: SGDClassifier(random_state=0),
    "SGDClassifier-log-loss": lambda: SGDClassifier(loss="log_loss", random_state=0),
    "RidgeClassifier": lambda: RidgeClassifier(),
    "StandardScaler-LogisticRegression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
    "MinMaxScaler-PCA-LinearSVC": lambda: make_pipeline(MinMaxScaler(), PCA(20, random_state=0), LinearSVC()),
    "Normalizer-StandardScaler-RidgeClassifier": lambda: make_pipeline(Normalizer(), StandardScaler(),
                                                                       RidgeClassifier()),
}
REGRESSORS = {
    "LinearRegression": lambda: LinearRegression(),
    "Ridge": lambda: Ridge(),
    "Lasso": lambda: Lasso(alpha=0.01),
    "ElasticNet": lambda: ElasticNet(alpha=0.01),
    "PoissonRegressor": lambda: PoissonRegressor(max_iter=1000),
    "GammaRegressor": lambda: make_pipeline(StandardScaler(), GammaRegressor(max_iter=1000)),
    "TweedieRegressor": lambda: TweedieRegressor(),
    "TweedieRegressor-log-link": lambda: TweedieRegressor(power=1.5, max_iter=1000),
    "PCA-Ridge": lambda: make_pipeline(PCA(20, random_state=0), Ridge()),
    "Normalizer-MinMaxScaler-Ridge": lambda: make_pipeline(Normalizer(), MinMaxScaler(), Ridge()),
}


def assert_same_classes(fhe_model, model, x, fhe):
    predicted, expected = fhe_model.predict(x, fhe=fhe), model.predict(x)
    assert predicted.dtype == expected.dtype
    np.testing.assert_array_equal(predicted, expected)
    np.testing.assert_allclose(fhe_model.decision_function(x, fhe=fhe), model.decision_function(x),
                               rtol=1e-4, atol=1e-4 * np.abs(model.decision_function(x)).max())
    if hasattr(model, "predict_proba"):
        np.testing.assert_allclose(fhe_model.predict_proba(x, fhe=fhe), model.predict_proba(x), atol=1e-4)
    else:
        assert not hasattr(fhe_model, "predict_proba")


@pytest.mark.parametrize("classes", [2, 10])
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_equals_sklearn(digits, name, classes):
    x, y = digits
    labels = y if classes == 10 else np.where(y > 4, "big", "small")  # string labels too
    model = CLASSIFIERS[name]().fit(x, labels)
    fhe_model = hecc.sklearn.compile(model, x, layout="batch")
    for fhe in ("disable", "simulate"):
        assert_same_classes(fhe_model, model, x, fhe)


@pytest.mark.parametrize("name", sorted(REGRESSORS))
def test_regressor_equals_sklearn(digits, name):
    x, y = digits
    model = REGRESSORS[name]().fit(x, y + 1.0)  # positive targets: the Gamma and Tweedie log links
    fhe_model = hecc.sklearn.compile(model, x, layout="batch")
    for fhe in ("disable", "simulate"):
        predicted = fhe_model.predict(x, fhe=fhe)
        assert predicted.shape == model.predict(x).shape and predicted.dtype == model.predict(x).dtype
        np.testing.assert_allclose(predicted, model.predict(x), rtol=1e-3)


@pytest.mark.parametrize("model", [
    LogisticRegression(max_iter=300),
    make_pipeline(Normalizer(), StandardScaler(), RidgeClassifier()),
], ids=["LogisticRegression", "Normalizer-StandardScaler-RidgeClassifier"])
def test_encrypted_mnist_classes_equal_sklearn(mnist_flat, model):
    """1,000 MNIST test images encrypted in one batch: the classes equal scikit-learn's."""
    x_train, y_train, x_test = mnist_flat
    model.fit(x_train, y_train)
    fhe_model = hecc.sklearn.compile(model, x_train, layout="batch")
    np.testing.assert_array_equal(fhe_model.predict(x_test, fhe="execute"), model.predict(x_test))
    assert fhe_model.last_stats["backend"] == "tenseal" and fhe_model.last_stats["batches"] == 1


def test_one_encrypted_mnist_input_is_small(mnist_flat, tmp_path):
    """A model whose work is one linear map sends one densely packed ciphertext per input, in the
    smallest ring that holds its primes: under 40 KB for 784 MNIST features (it was three
    ciphertexts of N=8192, 237 KB), and the classes still equal scikit-learn's."""
    from hecc.clientserver import Client, Server
    x_train, y_train, x_test = mnist_flat
    model = LogisticRegression(max_iter=300).fit(x_train, y_train)
    program = hecc.sklearn.compile(model, x_train).program.with_layout("slots")
    assert program.parameters["poly_modulus_degree"] == 4096
    inputs = [op for op in program.graph.ops if op.name == "hecc.input"]
    assert len(inputs) == 1 and inputs[0].result.type.count == 1
    client = Client(program, tmp_path / "keys")
    client.keygen()
    client.encrypt({"X": x_test[:1]}, tmp_path / "in.hecc")
    assert (tmp_path / "in.hecc").stat().st_size <= 40_000
    # the report states it (SEAL's bytes; the file adds its container's few hundred)
    from hecc.report import encrypted_input_bytes, render
    stated = encrypted_input_bytes(program.graph)
    # (another encryption: zstd's output of random bytes varies by a few hundred bytes)
    assert 0.98 * stated <= (tmp_path / "in.hecc").stat().st_size <= 1.02 * stated + 2000
    import re
    reported = re.search(r"encrypted input: ([0-9.]+) KB per input", render(program, measure=False))
    assert reported and abs(float(reported.group(1)) * 1e3 - stated) < 0.02 * stated  # zstd of random bytes
    Server(program, tmp_path / "keys" / "eval.keys").evaluate(tmp_path / "in.hecc", tmp_path / "out.hecc")
    scores = client.decrypt(tmp_path / "out.hecc")["probabilities"]
    assert model.classes_[np.argmax(scores)] == model.predict(x_test[:1])[0]
    np.testing.assert_array_equal(program.run(x_test[:8], backend="sim")["probabilities"].argmax(1),
                                  model.predict(x_test[:8]))


def test_encrypted_poisson_regression_equals_sklearn(digits):
    x, y = digits
    model = PoissonRegressor(max_iter=1000).fit(x, y)
    fhe_model = hecc.sklearn.compile(model, x, layout="batch")
    np.testing.assert_allclose(fhe_model.predict(x[:1000], fhe="execute"), model.predict(x[:1000]), rtol=1e-3)


def test_unsupported_estimator_is_named_with_the_supported_ones(digits):
    x, y = digits
    with pytest.raises(hecc.sklearn.UnsupportedEstimatorError, match="DecisionTreeClassifier") as info:
        hecc.sklearn.compile(DecisionTreeClassifier().fit(x, y), x)
    assert isinstance(info.value, hecc.UserError)
    for supported in hecc.sklearn.SUPPORTED_CLASSIFIERS + hecc.sklearn.SUPPORTED_REGRESSORS:
        assert supported in str(info.value)
    step = make_pipeline(PolynomialFeatures(), Ridge()).fit(x[:, :4], y)
    with pytest.raises(hecc.sklearn.UnsupportedEstimatorError, match="pipeline step PolynomialFeatures"):
        hecc.sklearn.compile(step, x[:, :4])


def test_the_client_makes_the_decision(digits):
    """The compiled program computes the linear scores only: no argmax, exp or normalization."""
    x, y = digits
    model = make_pipeline(Normalizer(), PoissonRegressor()).fit(x, y)
    fhe_model = hecc.sklearn.compile(model, x, layout="batch")
    assert fhe_model.program.inputs[0][1][-1] == 64
    tensor_ops = {line.split("=")[-1].split()[0] for line in fhe_model.program.ir("tensor").splitlines()
                  if "=" in line}
    assert not tensor_ops & {"tensor.argmax", "tensor.normalize", "tensor.softmax"}, tensor_ops
    with pytest.raises(hecc.UserError, match="unknown fhe mode"):
        fhe_model.predict(x, fhe="encrypt")


def test_a_product_by_an_all_zero_vector_runs_in_seal(mnist_flat):
    """The packed program of a binary classifier on MNIST multiplies one ciphertext by a diagonal
    whose weights are all zero; SEAL refuses such a product (its result would be transparent), so
    the backend gives a fresh encryption of zero instead, and the classes equal scikit-learn's."""
    x_train, y_train, x_test = mnist_flat
    binary = y_train < 2
    model = SGDClassifier(loss="log_loss", random_state=0).fit(x_train[binary], y_train[binary])
    fhe_model = hecc.sklearn.compile(model, x_train[binary])
    assert "packed" in fhe_model.program.layouts
    np.testing.assert_array_equal(fhe_model.predict(x_test[:200], fhe="execute", layout="packed"),
                                  model.predict(x_test[:200]))


def test_a_regressor_gets_values_precise_near_zero(digits):
    """A regressor is compiled at scales beyond one 60-bit prime (the slots layout rescales the
    product), so even a prediction near zero keeps 1e-3 relative: this pipeline predicts -0.019
    for one digit, where the batch layout's best scales leave 2e-3 relative."""
    x, y = digits
    model = make_pipeline(Normalizer(), MinMaxScaler(), Ridge()).fit(x, y + 1.0)
    fhe_model = hecc.sklearn.compile(model, x)
    options = fhe_model.program.artifact.manifest["options"]
    assert (options["scale_bits"], options["weight_scale_bits"]) == hecc.sklearn.REGRESSION_SCALES
    assert "batch" not in fhe_model.program.layouts
    expected = model.predict(x)
    worst = int(np.argmin(np.abs(expected)))
    chosen = np.r_[worst, np.arange(40)]
    np.testing.assert_allclose(fhe_model.predict(x[chosen], fhe="execute"), expected[chosen], rtol=1e-3)
