"""Accuracy of approximated activations under encryption (issue 4): the ReLU CNN, the sigmoid MLP
and the scikit-learn logistic regression examples on MNIST test images, through TenSEAL, with the
simulator's noise-model prediction of the error measured side by side.

    python benchmarks/activations_mnist.py --data ../shared/data/mnist.npz [--images 1000]
Writes benchmarks/results/activations_mnist.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

import hecc

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")
# (example, compile options): degree 8 keeps the ReLU CNN (two activations) at N=16384
CASES = [("relu_cnn_mnist", {"activation_degree": 8}), ("sigmoid_mlp_mnist", {}),
         ("sklearn_logreg_mnist", {})]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--only", help="run one example")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "activations_mnist.json"))
    args = parser.parse_args()
    with np.load(args.data) as d:
        images = d["x_test"][: args.images].astype(np.float32) / 255
        labels = d["y_test"][: args.images]
        train = d["x_train"][:2000].astype(np.float32) / 255
    results = {}
    for name, options in CASES:
        if args.only and args.only != name:
            continue
        model = os.path.join(EXAMPLES, name, "model.onnx")
        flat = name.startswith("sklearn")
        x = images.reshape(len(images), -1) if flat else images[:, None]
        cal = train.reshape(len(train), -1) if flat else train[:, None]
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        plain = session.run(None, {session.get_inputs()[0].name: x})
        log(f"{name}: compiling ...")
        prog = hecc.compile(model, calibration=cal, **options)
        out_name = prog.outputs[0][0] if not flat else "probabilities"
        scores_plain = plain[0] if not flat else plain[1]
        ref = prog.run(x, backend="reference")[out_name]
        sim = prog.run(x, backend="sim", noise=True)[out_name]
        log(f"{name}: TenSEAL on {len(x)} images, parameters {prog.parameters} ...")
        start = time.perf_counter()
        enc_all = prog.run(x, backend="tenseal", workers=2, progress=log)
        seconds = time.perf_counter() - start
        enc = enc_all[out_name]
        scale = float(np.abs(ref).max())
        entry = {
            "options": options, "parameters": prog.parameters,
            "approximations": prog.artifact.manifest.get("approximations", []),
            "plaintext_accuracy": float((scores_plain.argmax(1) == labels).mean()),
            "encrypted_accuracy": float((enc.argmax(1) == labels).mean()),
            "simulated_accuracy": float((sim.argmax(1) == labels).mean()),
            "argmax_agreement_with_onnxruntime": float((enc.argmax(1) == scores_plain.argmax(1)).mean()),
            "seconds": seconds, "stats": prog.last_stats,
        }
        # CKKS error alone: encrypted vs the same polynomial program without noise
        poly = prog.run(x, backend="sim")[out_name]
        entry["ckks_error_measured"] = float(np.abs(enc - poly).max() / scale)
        entry["ckks_error_predicted"] = float(np.abs(sim - poly).max() / scale)
        if flat:  # onnxruntime's labels are scikit-learn's (train.py reports it on the whole test set)
            entry["encrypted_labels_equal_sklearn"] = float((enc_all["label"] == plain[0]).mean())
        results[name] = entry
        log(f"{name}: {json.dumps({k: v for k, v in entry.items() if k not in ('stats',)}, default=float)}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, default=float)
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
