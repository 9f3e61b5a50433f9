"""Issue 17: every estimator ``hecc.sklearn`` supports (the classifiers and regressors, with their
preprocessing, of ``tests/test_sklearn_api.py``) compiled with ``hecc.sklearn.compile`` and run
with ``fhe="execute"`` (TenSEAL), ``"simulate"`` and ``"disable"`` against the estimator's own
``predict``: classifiers on --samples MNIST test images (fitted on 3,000 training images),
regressors on scikit-learn's 1,797 digits (fitted on them, the digit plus one as the target). Classes must
be equal; regression values are compared relative to each value and to the largest |value|.

    python benchmarks/sklearn_estimators.py --data ../shared/data/mnist.npz
Writes benchmarks/results/sklearn_estimators.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
import warnings

import numpy as np

import hecc
import hecc.sklearn

HERE = os.path.dirname(os.path.abspath(__file__))


def estimators():
    """The estimator tables of tests/test_sklearn_api.py (one list of what is supported)."""
    path = os.path.join(HERE, "..", "tests", "test_sklearn_api.py")
    spec = importlib.util.spec_from_file_location("sklearn_api_cases", path)
    module = importlib.util.module_from_spec(spec)
    import sys
    sys.path.insert(0, os.path.dirname(path))  # its conftest import
    spec.loader.exec_module(module)
    return module.CLASSIFIERS, module.REGRESSORS


def compare(model, fhe_model, x, regression: bool) -> dict:
    expected = model.predict(x)
    out = {}
    for mode in ("execute", "simulate", "disable"):
        start = time.perf_counter()
        got = fhe_model.predict(x, fhe=mode)
        entry = {"seconds": time.perf_counter() - start}
        if regression:
            err = np.abs(np.asarray(got, dtype=np.float64) - expected)
            entry["max_relative_error"] = float(np.max(err / np.maximum(np.abs(expected), 1e-12)))
            entry["max_error_over_max_value"] = float(np.max(err) / np.max(np.abs(expected)))
            entry["values_within_1e-3_relative"] = int(np.sum(err <= 1e-3 * np.abs(expected)))
        else:
            entry["classes_equal"] = int(np.sum(got == expected))
        out[mode] = entry
    program = fhe_model.program
    out["samples"] = len(x)
    out["rings"] = {layout: program.with_layout(layout).parameters["poly_modulus_degree"]
                    for layout in program.layouts}
    out["scales"] = [program.artifact.manifest["options"].get("scale_bits"),
                     program.artifact.manifest["options"].get("weight_scale_bits")]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sklearn_estimators.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from sklearn.datasets import load_digits
    classifiers, regressors = estimators()
    with np.load(args.data) as d:
        x_train = d["x_train"][:3000].reshape(-1, 784).astype(np.float32) / 255
        y_train = d["y_train"][:3000]
        x_test = d["x_test"][:args.samples].reshape(-1, 784).astype(np.float32) / 255
    digits_x, digits_y = load_digits(return_X_y=True)
    digits_x = digits_x.astype(np.float32)
    results = {"date": time.strftime("%Y-%m-%d")}
    for name, make in classifiers.items():
        for classes in (2, 10):
            mask = y_train < classes
            model = make().fit(x_train[mask], y_train[mask])
            fhe_model = hecc.sklearn.compile(model, x_train[mask])
            results[f"{name} ({classes} classes, MNIST)"] = entry = compare(model, fhe_model, x_test, False)
            print(name, classes, {m: entry[m] for m in ("execute", "simulate", "disable")}, flush=True)
    for name, make in regressors.items():
        model = make().fit(digits_x, digits_y + 1.0)  # positive targets: the Gamma and Tweedie log links
        fhe_model = hecc.sklearn.compile(model, digits_x)
        results[f"{name} (digits)"] = entry = compare(model, fhe_model, digits_x, True)
        print(name, {m: entry[m] for m in ("execute", "simulate", "disable")}, flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
