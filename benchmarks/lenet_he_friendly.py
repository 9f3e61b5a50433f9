"""Issue 16: the HE-friendly LeNet-5 of ``examples/lenet_he_friendly`` before and after block
pruning, compiled by hecc for the slots layout (calibrated on training images) under each
``objective`` (time: the default; operations: products and rotations counted alike) and run
through TenSEAL: products and rotations of each program, encrypted latency per image (one image at
a time, one worker, so one core), and the pruned model's encrypted accuracy on the first --images
test images against its plaintext (onnxruntime) predictions (two workers, the --accuracy-objective
program).

    python benchmarks/lenet_he_friendly.py --data ../shared/data/mnist.npz [--latency-images 4] [--images 1000]
Writes benchmarks/results/lenet_he_friendly.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import onnxruntime as ort

import hecc
from hecc.passes.lower_to_ckks import slots_op_counts
from latency_mnist import hecc_one_at_a_time, one_core

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "lenet_he_friendly")


def one_at_a_time(program, images: np.ndarray, plain: np.ndarray) -> dict:
    """Keys once, then each image encrypted, evaluated and decrypted alone on one core."""
    with one_core():
        logits, times, key_bytes, keygen = hecc_one_at_a_time(program.with_layout("slots"), images, "hecc")
    seconds = [sum(phases) for phases in zip(*times.values())]
    return {"keygen_seconds": keygen, "eval_key_bytes": key_bytes,
            "seconds_per_image": seconds, "median_seconds_per_image": float(np.median(seconds)),
            "classes_equal_to_plaintext": bool(np.all(logits.argmax(1) == plain.argmax(1)))}


def onnx_logits(path: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 1000]})[0] for i in range(0, len(x), 1000)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    ap.add_argument("--latency-images", type=int, default=4, help="images timed one at a time per model")
    ap.add_argument("--images", type=int, default=1000, help="test images of the pruned model's accuracy run")
    ap.add_argument("--calibration-images", type=int, default=2000)
    ap.add_argument("--accuracy-objective", default="operations", choices=["time", "operations"],
                    help="the compile objective of the pruned program the accuracy run uses")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "lenet_he_friendly.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore", hecc.HeccWarning)
    data = np.load(args.data)
    calibration = (data["x_train"][:args.calibration_images].astype(np.float32) / 255.0)[:, None]
    x = (data["x_test"].astype(np.float32) / 255.0)[:, None]
    labels = data["y_test"]
    results = {"date": time.strftime("%Y-%m-%d")}
    for name in ("friendly", "pruned"):
        path = os.path.join(EXAMPLE, f"{name}.onnx")
        plain = onnx_logits(path, x)
        results[name] = {"plaintext_test_accuracy": float((plain.argmax(1) == labels).mean())}
        for objective in ("time", "operations"):
            start = time.perf_counter()
            program = hecc.compile(path, calibration=calibration, layout="slots", objective=objective)
            compile_seconds = time.perf_counter() - start
            params = program.parameters
            entry = {"compile_seconds": compile_seconds, **slots_op_counts(program.with_layout("slots").graph),
                     "poly_modulus_degree": params["poly_modulus_degree"],
                     "coeff_modulus_bits": params["coeff_modulus_bits"],
                     "galois_keys": len(params.get("galois_steps", [])),
                     "predicted_seconds_per_image": program.estimate(1, "slots")}
            entry.update(one_at_a_time(program, x[:args.latency_images], plain[:args.latency_images]))
            if name == "pruned" and args.images and objective == args.accuracy_objective:
                start = time.perf_counter()
                out = program.run(x[:args.images], backend="tenseal", workers=2)["logits"]
                entry["accuracy_run"] = {
                    "images": args.images, "wall_seconds": time.perf_counter() - start,
                    "encrypted_accuracy": float((out.argmax(1) == labels[:args.images]).mean()),
                    "plaintext_accuracy": float((plain[:args.images].argmax(1) == labels[:args.images]).mean()),
                    "argmax_agreement": float((out.argmax(1) == plain[:args.images].argmax(1)).mean()),
                    "max_abs_logit_error": float(np.max(np.abs(out - plain[:args.images])))}
            results[name][objective] = entry
            print(json.dumps({name: {objective: entry}}, default=float), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, default=float)
        f.write("\n")


if __name__ == "__main__":
    main()
