"""Orion's LeNet-5 in Orion and in hecc, side by side, one image at a time on one core each
(issue 13).

The network is ``examples/lenet5_orion_mnist``: hecc compiles its ONNX file; Orion runs the same
weights in its own ``orion.models.LeNet`` (the ONNX initializers carry Orion's parameter names),
with a 128-bit-secure configuration (``benchmarks/peers/orion_lenet.py``), in Orion's own virtual
environment, whose Python is $HECC_ORION_PYTHON (``pip install orion-fhe==1.0.2`` there). Both are
calibrated on the same 2,000 training images and run the first MNIST test images one at a time,
each pinned to one core (Orion's Go runtime with GOMAXPROCS=1), one after the other. Latency is
encrypt + evaluate + decrypt per image, averaged from the second image on (the first also
encodes hecc's weight vectors once, as a server does per model).

    HECC_ORION_PYTHON=/path/to/orion-venv/bin/python \\
        python benchmarks/orion_lenet.py --data /path/to/mnist.npz [--images 1000] [--orion-images 20]

Orion fits and compiles LeNet-5 in minutes on this machine (163 s in the recorded run) and
holds its diagonals and keys in memory (about 12 GB): its io_mode "save"/"load" would read keys
and diagonals from disk at every layer of every inference, which is not what its latency should
measure. Writes benchmarks/results/orion_lenet.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

import hecc
from hecc.backends.tenseal import TensealBackend
from hecc.runtime import stack_inputs

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "examples", "lenet5_orion_mnist", "model.onnx")
CORE = 1  # both systems run on this core, one after the other


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load(path, calibration, images):
    with np.load(path) as d:
        train = (d["x_train"][:calibration].astype(np.float32) / 255.0)[:, None]
        test = (d["x_test"][:images].astype(np.float32) / 255.0)[:, None]
        return train, test, d["y_test"][:images].astype(np.int64)


def plaintext_logits(x):
    import onnxruntime as ort
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 500]})[0] for i in range(0, len(x), 500)])


def run_hecc(calibration, images, artifact=None, scales=(None, None)):
    """Compile (unless ``artifact`` is given; ``scales``: --scale-bits and --weight-scale-bits,
    default hecc's choice) and run one image at a time on one core."""
    os.sched_setaffinity(0, {CORE})
    start = time.perf_counter()
    prog = hecc.load(artifact) if artifact else hecc.compile(MODEL, calibration=calibration, layout="slots",
                                                             scale_bits=scales[0], weight_scale_bits=scales[1])
    compile_seconds = time.perf_counter() - start
    graph = prog.graph
    stacked, _ = stack_inputs(graph, {prog.inputs[0][0]: images})
    backend = TensealBackend(graph)
    start = time.perf_counter()
    backend.connect(None)
    keygen = time.perf_counter() - start
    key_bytes = backend.seal.eval_key_bytes()
    logits, seconds, phases = [], [], []
    for i in range(len(images)):
        start = time.perf_counter()
        outputs, timings = backend.run_batch(stacked, i, i + 1)
        seconds.append(time.perf_counter() - start)
        phases.append(timings)
        logits.append(np.asarray(outputs[0]).reshape(-1))
        if (i + 1) % 50 == 0 or i < 3:
            log(f"hecc: image {i + 1}/{len(images)}: {seconds[-1]:.3f} s")
    params = prog.parameters
    return {"logits": np.asarray(logits), "seconds": seconds, "phases": phases, "eval_key_bytes": key_bytes,
            "keygen_seconds": keygen, "compile_seconds": compile_seconds,
            "parameters": {"poly_modulus_degree": params["poly_modulus_degree"],
                           "coeff_modulus_bits": params["coeff_modulus_bits"],
                           "galois_keys": len(params.get("galois_steps", [])),
                           "scales": prog.artifact.manifest.get("scales", {}).get("slots")},
            "rotations_per_image": sum(op.name == "ckks.rotate" for op in graph.ops),
            "products_per_image": sum(op.name == "ckks.mul_plain" for op in graph.ops)}


def onnx_weights(path):
    """The ONNX initializers by name: Orion's LeNet state dict."""
    import onnx
    from onnx import numpy_helper
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def run_orion(python, calibration, images):
    with tempfile.TemporaryDirectory() as tmp:
        weights, data, out = (os.path.join(tmp, n) for n in ("weights.npz", "images.npz", "out.json"))
        np.savez(weights, **onnx_weights(MODEL))
        np.savez(data, calibration=calibration, test=images)
        env = dict(os.environ, GOMAXPROCS="1", OMP_NUM_THREADS="1")
        proc = subprocess.run([python, os.path.join(HERE, "peers", "orion_lenet.py"), weights, data, out],
                              env=env, preexec_fn=lambda: os.sched_setaffinity(0, {CORE}),
                              stdout=subprocess.DEVNULL, stderr=None)
        if proc.returncode != 0:
            raise SystemExit(f"Orion's run failed (exit {proc.returncode})")
        with open(out) as f:
            return json.load(f)


def summary(name, logits, seconds, labels, plain):
    classes = np.asarray(logits).argmax(1)
    steady = seconds[1:] if len(seconds) > 1 else seconds
    return {"system": name, "images": len(seconds), "accuracy": float((classes == labels).mean()),
            "plaintext_accuracy": float((plain.argmax(1) == labels).mean()),
            "argmax_agreement": float((classes == plain.argmax(1)).mean()),
            "max_error_over_max_logit": float(np.abs(np.asarray(logits) - plain).max() / np.abs(plain).max()),
            "seconds_per_image": float(np.mean(steady)), "median_seconds": float(np.median(steady)),
            "first_image_seconds": float(seconds[0])}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="mnist.npz (x_train, y_train, x_test, y_test)")
    p.add_argument("--images", type=int, default=1000, help="test images for hecc")
    p.add_argument("--orion-images", type=int, default=20, help="test images for Orion")
    p.add_argument("--calibration", type=int, default=2000)
    p.add_argument("--artifact", help="a compiled .hecc of the model (default: compile it here)")
    p.add_argument("--scale-bits", type=int, help="hecc's scale (default: its own choice)")
    p.add_argument("--weight-scale-bits", type=int, help="hecc's weight scale (default: its own choice)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "orion_lenet.json"))
    args = p.parse_args()
    warnings.simplefilter("ignore")
    python = os.environ.get("HECC_ORION_PYTHON")
    calibration, images, labels = load(args.data, args.calibration, max(args.images, args.orion_images))
    plain = plaintext_logits(images)
    results = {"machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d"), "core": CORE}
    log(f"hecc: {args.images} images")
    ours = run_hecc(calibration, images[:args.images], args.artifact, (args.scale_bits, args.weight_scale_bits))
    results["hecc"] = {**summary("hecc", ours["logits"], ours["seconds"], labels[:args.images], plain[:args.images]),
                       **{k: v for k, v in ours.items() if k not in ("logits", "seconds", "phases")},
                       "phases_per_image": {k: float(np.mean([t[k] for t in ours["phases"][1:]]))
                                            for k in ours["phases"][0]}}
    if python:
        log(f"Orion ({python}): {args.orion_images} images")
        theirs = run_orion(python, calibration, images[:args.orion_images])
        n = args.orion_images
        results["orion"] = {**summary("orion", theirs["logits"], theirs["seconds"], labels[:n], plain[:n]),
                            **{k: v for k, v in theirs.items() if k not in ("logits", "seconds", "clear_logits")}}
        results["ratios"] = {
            "latency_hecc_over_orion": results["hecc"]["seconds_per_image"] / results["orion"]["seconds_per_image"],
            "key_bytes_hecc_over_orion": results["hecc"]["eval_key_bytes"] / results["orion"]["eval_key_bytes"]}
    else:
        log("HECC_ORION_PYTHON is not set: Orion is not run")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
