"""Issue 13's small ReLU CNN (``examples/small_relu_cnn_mnist``) compiled with ``--calibration``
only, run through TenSEAL on the first --images MNIST test images in each --layout (two workers,
as ``hecc run``): encrypted accuracy against the plaintext network, argmax agreement, times and
evaluation-key bytes. Run it under ``/usr/bin/time -v`` with one layout to measure its peak memory.

    python benchmarks/small_relu_cnn.py --data ../shared/data/mnist.npz [--layout slots packed batch] [--images 1000]
Writes benchmarks/results/small_relu_cnn.json (one entry per layout, merged with what is there).
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

import hecc

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "examples", "small_relu_cnn_mnist", "model.onnx")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    ap.add_argument("--layout", nargs="+", default=["slots", "packed", "batch"])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--calibration-images", type=int, default=2000)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "small_relu_cnn.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore", hecc.HeccWarning)
    data = np.load(args.data)
    calibration = (data["x_train"][:args.calibration_images].astype(np.float32) / 255.0)[:, None]
    x = (data["x_test"][:args.images].astype(np.float32) / 255.0)[:, None]
    labels = data["y_test"][:args.images]
    start = time.perf_counter()
    prog = hecc.compile(MODEL, calibration=calibration)
    compile_seconds = time.perf_counter() - start
    plain = prog.run(x)["logits"]
    results = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    for layout in args.layout:
        start = time.perf_counter()
        out = prog.run(x, backend="tenseal", layout=layout)["logits"]
        wall = time.perf_counter() - start
        stats = prog.last_stats
        params = prog.with_layout(layout).parameters
        results[layout] = {
            "date": time.strftime("%Y-%m-%d"), "images": args.images, "compile_seconds": compile_seconds,
            "parameters": {"poly_modulus_degree": params["poly_modulus_degree"],
                           "coeff_modulus_bits": params["coeff_modulus_bits"],
                           "inputs_per_ciphertext": params.get("inputs_per_ciphertext", 1),
                           "galois_keys": len(params.get("galois_steps", []))},
            "wall_seconds": wall, "seconds": stats["seconds"], "eval_key_bytes": stats["eval_key_bytes"],
            "accuracy": float((out.argmax(1) == labels).mean()),
            "plaintext_accuracy": float((plain.argmax(1) == labels).mean()),
            "argmax_agreement": float((out.argmax(1) == plain.argmax(1)).mean()),
            "estimate": prog.estimate(args.images, layout)}
        print(json.dumps({layout: results[layout]}), flush=True)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
