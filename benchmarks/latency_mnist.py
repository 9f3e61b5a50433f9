"""Latency of one image at a time, and evaluation-key size, for the network of TenSEAL's MNIST
tutorial (conv 4 maps 7x7 stride 3, square, dense 256 -> 64, square, dense 64 -> 10), with TenSEAL's
own pipeline for that network measured in the same run (im2col_encoding, conv2d_im2col,
pack_vectors, mm, on the same weights, images and machine).

hecc today has only the batch layout, whose latency for one image is that of a whole batch; the
slots layout (issue 5) is what this benchmark is for. Usage:
    python benchmarks/latency_mnist.py --data ../shared/data/mnist.npz [--images 20]
Writes benchmarks/results/latency_mnist.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import hecc

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "tenseal_tutorial_mnist")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def tenseal_tutorial(images, weights):
    """TenSEAL's tutorial pipeline, as its documentation writes it; per-image timings."""
    import tenseal as ts
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[31, 26, 26, 26, 26, 26, 26, 31])
    ctx.global_scale = 2 ** 26
    ctx.generate_galois_keys()
    key_bytes = len(ctx.serialize(save_public_key=False, save_secret_key=False,
                                  save_galois_keys=True, save_relin_keys=True))
    conv_w, conv_b = weights["conv_weight"], weights["conv_bias"]
    fc1_w, fc1_b, fc2_w, fc2_b = weights["fc1_weight"], weights["fc1_bias"], weights["fc2_weight"], weights["fc2_bias"]
    logits, times = [], {"encrypt": [], "eval": [], "decrypt": []}
    for image in images:
        start = time.perf_counter()
        x_enc, windows = ts.im2col_encoding(ctx, image.tolist(), 7, 7, 3)
        times["encrypt"].append(time.perf_counter() - start)
        start = time.perf_counter()
        channels = [x_enc.conv2d_im2col(k.tolist(), windows) + float(b) for k, b in zip(conv_w[:, 0], conv_b)]
        x = ts.CKKSVector.pack_vectors(channels)
        x.square_()
        x = x.mm(fc1_w.T.tolist()) + fc1_b.tolist()
        x.square_()
        x = x.mm(fc2_w.T.tolist()) + fc2_b.tolist()
        times["eval"].append(time.perf_counter() - start)
        start = time.perf_counter()
        logits.append(x.decrypt())
        times["decrypt"].append(time.perf_counter() - start)
    return np.asarray(logits), {k: float(np.mean(v)) for k, v in times.items()}, key_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "latency_mnist.json"))
    args = parser.parse_args()
    with np.load(args.data) as d:
        images = d["x_test"][: args.images].astype(np.float32) / 255
        labels = d["y_test"][: args.images]
        train = d["x_train"][:2000].astype(np.float32) / 255
    model = os.path.join(EXAMPLE, "model.onnx")
    with np.load(os.path.join(EXAMPLE, "weights.npz")) as w:
        weights = {k: w[k] for k in w.files}
    log(f"TenSEAL tutorial pipeline on {len(images)} images, one at a time ...")
    peer, peer_times, peer_keys = tenseal_tutorial(images, weights)
    log("hecc (batch layout): one image ...")
    prog = hecc.compile(model, calibration=train[:, None])
    plain = prog.run(images[:, None])["logits"]
    start = time.perf_counter()
    one = prog.run(images[:1, None], backend="tenseal")["logits"]
    hecc_seconds = time.perf_counter() - start
    stats = prog.last_stats
    result = {
        "images": len(images),
        "tenseal_tutorial": {"seconds_per_image": peer_times, "eval_key_bytes": peer_keys,
                             "accuracy": float((peer.argmax(1) == labels).mean()),
                             "argmax_agreement_with_plaintext": float((peer.argmax(1) == plain.argmax(1)).mean())},
        "hecc_batch_layout": {"parameters": prog.parameters, "seconds_for_one_image": stats["seconds"],
                              "eval_key_bytes": stats["eval_key_bytes"],
                              "wall_seconds_for_one_image": hecc_seconds,
                              "argmax_equal_to_plaintext_on_first_image": bool(one.argmax(1)[0] == plain.argmax(1)[0]),
                              "note": "one image costs a whole batch in this layout; the slots layout is issue 5"},
        "plaintext_accuracy": float((plain.argmax(1) == labels).mean()),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, default=float)
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
