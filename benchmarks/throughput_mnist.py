"""Throughput of the CryptoNets example under encryption (batch layout), with its peers measured in
the same run:

- hecc (lazy rescaling) over the full MNIST test set through TenSEAL, on both cores: encrypted
  accuracy vs plaintext, argmax agreement with onnxruntime, predictions per hour of server
  evaluation;
- hecc on one core, one batch (the per-core figure, against the issue's floor of per-op costs);
- hecc with --rescale eager (the baseline of the rescale pass), one batch;
- a hand-written TenSEAL CKKSVector implementation of the same batch-packed network, as a TenSEAL
  user would write it (one vector per pixel, automatic rescaling after every multiplication),
  one batch.

A batch costs the same however many of its slots are filled, so one batch of N/2 inputs measures
a peer's throughput. Usage:
    python benchmarks/throughput_mnist.py --data ../shared/data/mnist.npz [--images 10000]
Writes benchmarks/results/throughput_mnist.json and prints a Markdown table for RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import hecc

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "examples", "cryptonets_mnist", "model.onnx")
FLOOR_MS = {"multiply_plain_add": 0.42, "square_relin_rescale": 6.4}  # the floor, per op


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_mnist(path, n):
    with np.load(path) as d:
        x = (d["x_test"][:n].astype(np.float32) / 255)[:, None]
        y = d["y_test"][:n]
        calib = (d["x_train"][:2000].astype(np.float32) / 255)[:, None]
    return x, y, calib


def cryptonets_weights(path):
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(path).graph.initializer}
    return init["conv.weight"], init["conv.bias"], init["fc1.weight"], init["fc1.bias"], init["fc2.weight"], init["fc2.bias"]


def _dense(vectors, weight, bias):
    """One dense layer over a list of CKKSVectors, the way TenSEAL's API invites."""
    out = []
    for k in range(weight.shape[0]):
        acc = None
        for j, v in enumerate(vectors):
            term = v * float(weight[k, j])
            acc = term if acc is None else acc + term
        out.append(acc + float(bias[k]))
    return out


def tenseal_ckksvector_baseline(x, weights):
    """The CryptoNets network written with TenSEAL's high-level API, batch-packed: one CKKSVector
    per pixel holding one value per image; every multiplication rescales automatically."""
    import tenseal as ts
    cw, cb, w1, b1, w2, b2 = weights
    start = time.perf_counter()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[40, 26, 26, 26, 26, 26, 40])
    ctx.global_scale = 2 ** 26
    keygen = time.perf_counter() - start
    start = time.perf_counter()
    img = x[:, 0]
    padded = np.pad(img, ((0, 0), (1, 1), (1, 1)))
    enc = [[ts.ckks_vector(ctx, padded[:, i, j].tolist()) for j in range(30)] for i in range(30)]
    encrypt = time.perf_counter() - start
    start = time.perf_counter()
    hidden = []
    for c in range(5):
        for i in range(13):
            for j in range(13):
                acc = None
                for di in range(5):
                    for dj in range(5):
                        w = float(cw[c, 0, di, dj])
                        term = enc[2 * i + di][2 * j + dj] * w
                        acc = term if acc is None else acc + term
                acc = acc + float(cb[c])
                hidden.append(acc * acc)
    logits = _dense([h * h for h in _dense(hidden, w1, b1)], w2, b2)
    evaluate = time.perf_counter() - start
    start = time.perf_counter()
    out = np.stack([np.asarray(v.decrypt()) for v in logits], axis=1)[: len(x)]
    decrypt = time.perf_counter() - start
    return out, {"keygen": keygen, "encrypt": encrypt, "eval": evaluate, "decrypt": decrypt}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--peer-images", type=int, default=4096, help="images for the one-batch peers")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "throughput_mnist.json"))
    args = parser.parse_args()

    x, labels, calib = load_mnist(args.data, args.images)
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    plain = session.run(None, {"input": x})[0]
    plain_pred = plain.argmax(1)
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "images": len(x),
              "plaintext_accuracy": float((plain_pred == labels).mean())}

    log("compiling (lazy rescale) ...")
    prog = hecc.compile(MODEL, calibration=calib)
    result["parameters"] = prog.parameters
    log(f"parameters {prog.parameters}; running {len(x)} images through TenSEAL on 2 workers ...")
    out = prog.run(x, backend="tenseal", workers=2, progress=log)["logits"]
    stats = prog.last_stats
    pred = out.argmax(1)
    result["hecc"] = {
        "accuracy": float((pred == labels).mean()),
        "argmax_agreement_with_onnxruntime": float((pred == plain_pred).mean()),
        "max_abs_error_over_max_logit": float(np.abs(out - plain).max() / np.abs(plain).max()),
        "stats": stats,
        "predictions_per_hour": len(x) / stats["seconds"]["eval_wall"] * 3600,
    }
    counts = stats["op_counts"]
    per_batch = {k: v / stats["batches"] for k, v in counts.items()}
    floor = (per_batch["multiply_plain"] * FLOOR_MS["multiply_plain_add"] + per_batch["square"] *
             FLOOR_MS["square_relin_rescale"]) / 1000
    result["floor_seconds_per_batch_per_core"] = floor
    log(f"hecc: {result['hecc']['predictions_per_hour']:.0f} predictions/hour")

    if not args.skip_peers:
        xp = x[: args.peer_images]
        log("hecc, one batch on one core ...")
        prog.run(xp, backend="tenseal", workers=1)
        one = prog.last_stats["seconds"]
        result["hecc_one_core"] = {"seconds": one, "floor_ratio": floor / one["eval"]}
        log("hecc with --rescale eager, one batch ...")
        eager = hecc.compile(MODEL, calibration=calib, rescale="eager")
        eout = eager.run(xp, backend="tenseal", workers=1)["logits"]
        es = eager.last_stats
        result["hecc_eager"] = {"parameters": eager.parameters, "stats": es,
                                "accuracy": float((eout.argmax(1) == labels[: len(xp)]).mean()),
                                "predictions_per_hour_per_core": es["parameters"]["poly_modulus_degree"] / 2
                                / es["seconds"]["eval"] * 3600}
        log("hand-written TenSEAL CKKSVector baseline, one batch ...")
        bout, bt = tenseal_ckksvector_baseline(xp, cryptonets_weights(MODEL))
        result["tenseal_ckksvector"] = {"seconds": bt, "images": len(xp),
                                        "accuracy": float((bout.argmax(1) == labels[: len(xp)]).mean()),
                                        "argmax_agreement_with_onnxruntime": float((bout.argmax(1) == plain_pred[: len(xp)]).mean()),
                                        "predictions_per_hour": 4096 / bt["eval"] * 3600}
        result["ratio_hecc_vs_tenseal"] = result["hecc"]["predictions_per_hour"] / result["tenseal_ckksvector"]["predictions_per_hour"]
        result["ratio_one_core"] = bt["eval"] / one["eval"]
        result["ratio_lazy_vs_eager_one_core"] = es["seconds"]["eval"] / one["eval"]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, default=float)
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
