"""Latency of one image at a time and evaluation-key bytes: hecc's slots layout against TenSEAL's
own pipeline for the network of TenSEAL's MNIST tutorial, in the same run.

Measured, one image at a time on the first --images MNIST test images:
- TenSEAL's tutorial pipeline (im2col_encoding, conv2d_im2col, pack_vectors, mm; context
  [31, 26 x 6, 31], N=8192, default Galois keys) on the tutorial network's weights;
- hecc, slots layout, the same network: exact rotation keys, and under a key budget
  (--max-rotation-keys);
- hecc, slots layout, the CryptoNets example;
- `--layout auto`: what it picks for 1 and 4,096 images, and its estimates against the measured
  time (one image in the slots layout; 4,096 images in the batch layout, two workers).
Per-image times are encrypt, server evaluation and decrypt; hecc's keys are generated once and its
weight plaintexts encoded at the first image (as a server does once per model).

    python benchmarks/latency_mnist.py [--images 1000] [--peer-images N] [--budget 4]
Writes benchmarks/results/latency_mnist.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings

import numpy as np

import hecc
from hecc.backends.tenseal import TensealBackend
from hecc.runtime import stack_inputs, unstack_outputs

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")


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
    for number, image in enumerate(images):
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
        if (number + 1) % 100 == 0:
            log(f"  TenSEAL pipeline: {number + 1}/{len(images)} images")
    return np.asarray(logits), times, key_bytes


@contextlib.contextmanager
def one_core():
    """This process on one core (the last it may use) for the block; its cores restored after."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cores)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def hecc_one_at_a_time(prog, images, what):
    """Encrypt, evaluate and decrypt each image on its own with SEAL (one core)."""
    graph = prog.graph
    stacked, runs = stack_inputs(graph, {prog.inputs[0][0]: images})
    backend = TensealBackend(graph)
    start = time.perf_counter()
    backend.connect(None)
    key_bytes = backend.seal.eval_key_bytes()
    keygen = time.perf_counter() - start
    outs, times = [], {"encrypt": [], "eval": [], "decrypt": []}
    for i in range(runs):
        out, t = backend.run_batch(stacked, i, i + 1)
        outs.append(out[0])
        for k in times:
            times[k].append(t[k])
        if (i + 1) % 100 == 0:
            log(f"  {what}: {i + 1}/{runs} images")
    logits = next(iter(unstack_outputs(graph, [np.concatenate(outs)]).values()))
    return logits, times, key_bytes, keygen


def summary(times):
    """Mean seconds per image of each phase; the first image (which encodes the weights) apart."""
    out = {k: float(np.mean(v[1:] if len(v) > 1 else v)) for k, v in times.items()}
    out["total"] = sum(out.values())
    out["first_image_total"] = float(sum(v[0] for v in times.values()))
    out["median_eval"] = float(np.median(times["eval"]))
    return out


def accuracy(logits, labels):
    return float((np.asarray(logits).argmax(1) == labels).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--peer-images", type=int, help="images for TenSEAL's pipeline (default: --images)")
    parser.add_argument("--budget", type=int, default=4, help="--max-rotation-keys of the key-budget run")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "latency_mnist.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore", hecc.HeccWarning)
    with np.load(args.data) as d:
        test = d["x_test"].astype(np.float32) / 255
        labels = d["y_test"]
        train = d["x_train"][:2000].astype(np.float32) / 255
    images, labels = test[: args.images, None], labels[: args.images]
    result = {"images": len(images)}

    tutorial = os.path.join(EXAMPLES, "tenseal_tutorial_mnist")
    with np.load(os.path.join(tutorial, "weights.npz")) as w:
        weights = {k: w[k] for k in w.files}
    log("compiling the TenSEAL-tutorial network (auto: batch and slots layouts) ...")
    prog = hecc.compile(os.path.join(tutorial, "model.onnx"), calibration=train[:, None])
    budget = hecc.compile(os.path.join(tutorial, "model.onnx"), calibration=train[:, None],
                          layout="slots", max_rotation_keys=args.budget)
    plain = prog.run(images)["logits"]
    result["tutorial_plaintext_accuracy"] = accuracy(plain, labels)

    for name, program in (("hecc_slots", prog.with_layout("slots")), ("hecc_slots_key_budget", budget)):
        log(f"{name}: {len(images)} images one at a time ...")
        logits, times, key_bytes, keygen = hecc_one_at_a_time(program, images, name)
        params = program.parameters
        result[name] = {
            "parameters": {k: params[k] for k in ("poly_modulus_degree", "coeff_modulus_bits", "galois_steps")},
            "rotations_per_image": sum(op.name == "ckks.rotate" for op in program.graph.ops),
            "eval_key_bytes": key_bytes, "keygen_seconds": keygen,
            "seconds_per_image": summary(times), "accuracy": accuracy(logits, labels),
            "argmax_agreement_with_plaintext": float((logits.argmax(1) == plain.argmax(1)).mean()),
            "max_error_over_max_logit": float(np.abs(logits - plain).max() / np.abs(plain).max())}
        log(json.dumps(result[name]))

    log("--layout auto: choices and estimates ...")
    one_estimate = prog.estimate(1, "slots")["total"]
    batch_estimate = prog.estimate(4096, "batch")["total"]
    start = time.perf_counter()
    prog.run(test[:4096, None], backend="tenseal", layout="batch")
    batch_measured = time.perf_counter() - start
    result["auto"] = {
        "picks_for_1": prog.choose_layout(1), "picks_for_4096": prog.choose_layout(4096),
        "slots_1_image": {"estimated": one_estimate,
                          "measured": result["hecc_slots"]["seconds_per_image"]["total"]},
        "batch_4096_images": {"estimated": batch_estimate, "measured": batch_measured,
                              "measured_phases": prog.last_stats["seconds"]}}
    log(json.dumps(result["auto"]))

    log("CryptoNets, slots layout ...")
    cryptonets = hecc.compile(os.path.join(EXAMPLES, "cryptonets_mnist", "model.onnx"),
                              calibration=train[:, None], layout="slots")
    plain_cn = cryptonets.run(images)["logits"]
    logits, times, key_bytes, keygen = hecc_one_at_a_time(cryptonets, images, "CryptoNets")
    result["cryptonets_slots"] = {
        "parameters": {k: cryptonets.parameters[k] for k in ("poly_modulus_degree", "coeff_modulus_bits",
                                                              "galois_steps")},
        "eval_key_bytes": key_bytes, "seconds_per_image": summary(times),
        "accuracy": accuracy(logits, labels), "plaintext_accuracy": accuracy(plain_cn, labels),
        "argmax_agreement_with_plaintext": float((logits.argmax(1) == plain_cn.argmax(1)).mean())}
    log(json.dumps(result["cryptonets_slots"]))

    peer_images = images[: args.peer_images or len(images)]
    log(f"TenSEAL's tutorial pipeline on {len(peer_images)} images, one at a time ...")
    peer, peer_times, peer_keys = tenseal_tutorial(peer_images[:, 0], weights)
    peer_labels = labels[: len(peer_images)]
    result["tenseal_tutorial"] = {
        "images": len(peer_images), "seconds_per_image": summary(peer_times), "eval_key_bytes": peer_keys,
        "accuracy": accuracy(peer, peer_labels),
        "argmax_agreement_with_plaintext": float((peer.argmax(1) == plain[: len(peer)].argmax(1)).mean())}
    ours = result["hecc_slots"]
    result["ratios"] = {
        "latency_tenseal_over_hecc": result["tenseal_tutorial"]["seconds_per_image"]["total"]
        / ours["seconds_per_image"]["total"],
        "eval_latency_tenseal_over_hecc": result["tenseal_tutorial"]["seconds_per_image"]["eval"]
        / ours["seconds_per_image"]["eval"],
        "key_bytes_hecc_over_tenseal": ours["eval_key_bytes"] / peer_keys,
        "key_bytes_hecc_budget_over_tenseal": result["hecc_slots_key_budget"]["eval_key_bytes"] / peer_keys,
        "accuracy_points_hecc_minus_tenseal": 100 * (ours["accuracy"] - result["tenseal_tutorial"]["accuracy"])
        if len(peer_images) == len(images) else None}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, default=float)
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
