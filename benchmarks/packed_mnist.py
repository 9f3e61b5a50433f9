"""Several inputs per ciphertext (issue 13): the TenSEAL-tutorial and CryptoNets examples, each
compiled once with ``--calibration`` (every layout), run through TenSEAL on 1, 64 and 4,096 MNIST
test images in the batch layout, the slots layout (one input per ciphertext) and the packed layout
(K inputs per ciphertext), two workers, as ``hecc run`` does. For each count: what ``--layout
auto`` picks, and its estimate (measured primitive costs) against the measured time.

The slots layout at 4,096 images would take several minutes per example; it runs one image per
worker at a time, so its time is linear in the count: it is measured on --slots-sample images and
scaled (reported as such). Keys are generated once per layout and not counted (a client does that
once). Two measured times: the wall clock of the run (keygen excluded, but the evaluation keys'
export to the workers and their loading included: a server does that once, not per request)
and the work the estimate models, encryption, evaluation and decryption (each worker's; the
evaluation's wall time, the client's phases shared by the workers that ran).

    python benchmarks/packed_mnist.py --data ../shared/data/mnist.npz [--slots-sample 256]
Writes benchmarks/results/packed_mnist.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

import hecc

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")
COUNTS = (1, 64, 4096)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def timed_run(prog, images, layout):
    """(wall seconds without keygen, seconds of the modelled phases, logits, statistics)."""
    start = time.perf_counter()
    out = prog.run(images, backend="tenseal", layout=layout)["logits"]
    wall = time.perf_counter() - start
    stats = prog.last_stats
    t = stats["seconds"]
    used = max(1, min(stats["workers"], stats["batches"]))
    phases = t["eval_wall"] + (t["encrypt"] + t["decrypt"]) / used
    return wall - t.get("keygen", 0.0), phases, out, stats


def measure(name, prog, test, labels, slots_sample):
    plain = prog.run(test[:max(COUNTS)])["logits"]
    result = {"layouts": {}, "counts": {}}
    for layout in prog.layouts:
        p = prog.with_layout(layout).parameters
        result["layouts"][layout] = {"poly_modulus_degree": p["poly_modulus_degree"],
                                     "coeff_modulus_bits": p["coeff_modulus_bits"],
                                     "inputs_per_ciphertext": p.get("inputs_per_ciphertext",
                                                                    p["poly_modulus_degree"] // 2
                                                                    if layout == "batch" else 1),
                                     "galois_keys": len(p.get("galois_steps", []))}
    prog.run(test[:1], backend="tenseal", layout=prog.layouts[0])  # measured costs in place
    for count in COUNTS:
        row = {"picks": prog.choose_layout(count), "layouts": {}}
        for layout in prog.layouts:
            estimate = prog.estimate(count, layout)["total"]
            run_count = count
            if layout == "slots" and count > slots_sample:
                run_count = slots_sample
            log(f"{name}: {count} images, {layout} layout{'' if run_count == count else f' ({run_count} measured)'}")
            wall, phases, out, _ = timed_run(prog, test[:run_count], layout)
            entry = {"estimated": estimate, "measured": phases * count / run_count,
                     "measured_wall": wall * count / run_count, "measured_images": run_count,
                     "argmax_agreement": float((out.argmax(1) == plain[:run_count].argmax(1)).mean()),
                     "accuracy": float((out.argmax(1) == labels[:run_count]).mean())}
            entry["estimate_over_measured"] = estimate / entry["measured"]
            row["layouts"][layout] = entry
            log("  " + json.dumps(entry))
        row["fastest"] = min(row["layouts"], key=lambda k: row["layouts"][k]["measured_wall"])
        row["auto_is_fastest"] = row["picks"] == row["fastest"]
        result["counts"][str(count)] = row
        log(f"{name}, {count} images: auto picks {row['picks']}, fastest measured {row['fastest']}")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    ap.add_argument("--calibration-images", type=int, default=2000)
    ap.add_argument("--slots-sample", type=int, default=256)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "packed_mnist.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore", hecc.HeccWarning)
    data = np.load(args.data)
    train = data["x_train"][:args.calibration_images].astype(np.float32) / 255.0
    test = data["x_test"][:max(COUNTS)].astype(np.float32) / 255.0
    labels = data["y_test"][:max(COUNTS)]
    result = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "examples": {}}
    for name, folder in (("tenseal_tutorial", "tenseal_tutorial_mnist"), ("cryptonets", "cryptonets_mnist")):
        start = time.perf_counter()
        prog = hecc.compile(os.path.join(EXAMPLES, folder, "model.onnx"), calibration=train[:, None])
        compile_seconds = time.perf_counter() - start
        log(f"{name}: compiled in {compile_seconds:.1f} s, layouts {prog.layouts}")
        result["examples"][name] = dict(measure(name, prog, test[:, None], labels, args.slots_sample),
                                        compile_seconds=compile_seconds)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
