"""Predicted against measured peak memory of `hecc run --backend tenseal` (issue 13): every
example in both layouts, one process (`--workers 1`), peak resident memory from
`/usr/bin/time -v`.

    python benchmarks/memory_prediction.py [--skip relu_cnn_mnist/batch ...]

The prediction is the Python process with hecc and TenSEAL loaded and the artifact read (measured
here per example, the same way), plus the compile report's "predicted memory": the evaluation keys
as SEAL holds them (``key_memory_bytes``) and ``predicted_peak_bytes`` (the sum over ciphertext
sizes of each size's peak, since SEAL keeps freed memory per size, and the encoded weights kept for
reuse). Writes benchmarks/results/memory_prediction.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

import hecc
from hecc.backends.common import key_memory_bytes, predicted_peak_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")
BIN = os.path.dirname(sys.executable)
CASES = [("cryptonets_mnist", {}), ("tenseal_tutorial_mnist", {}), ("sigmoid_mlp_mnist", {}),
         ("sklearn_logreg_mnist", {}), ("small_relu_cnn_mnist", {}), ("relu_cnn_mnist", {"activation_degree": 8}),
         ("lenet5_orion_mnist", {}), ("lenet5_mnist", {})]
# batch programs the report predicts at hours to days per batch (LeNet-5: 1,500 s on two cores;
# the classic LeNet-5: 103,000 s and 167 GB)
SKIP = ["lenet5_orion_mnist/batch", "lenet5_mnist/batch"]


def time_v(cmd) -> tuple[float, int]:
    """(wall seconds, peak resident bytes) of a command, from `/usr/bin/time -v`."""
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    return seconds, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) * 1024


def max_rss(cmd) -> int:
    return time_v(cmd)[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip", nargs="*", default=SKIP, help="cases to leave out, as example/layout")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "memory_prediction.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in CASES:
            folder = os.path.join(EXAMPLES, name)
            x = np.load(os.path.join(folder, "input.npy"))
            prog = hecc.compile(os.path.join(folder, "model.onnx"), calibration=x, **options)
            art = os.path.join(tmp, f"{name}.hecc")
            prog.save(art)
            base = max_rss([sys.executable, "-c", "import sys, hecc, hecc.backends.tenseal; hecc.load(sys.argv[1]).graph",
                            art])
            for layout in prog.layouts:
                if f"{name}/{layout}" in args.skip:
                    continue
                inputs = os.path.join(tmp, f"{name}.{layout}.npy")
                np.save(inputs, x if layout == "batch" else x[:2])
                stats = os.path.join(tmp, f"{name}.{layout}.json")
                measured = max_rss([os.path.join(BIN, "hecc"), "run", art, "--input", inputs, "--backend", "tenseal",
                                    "--layout", layout, "--workers", "1", "--output",
                                    os.path.join(tmp, f"{name}.{layout}.out.npy"), "--stats", stats, "-q"])
                graph = prog.with_layout(layout).graph
                keys, ciphertexts = key_memory_bytes(graph), predicted_peak_bytes(graph)
                predicted = base + keys + ciphertexts
                rows.append({"example": name, "layout": layout, "measured_bytes": measured,
                             "predicted_bytes": predicted, "ciphertext_bytes": ciphertexts, "key_bytes": keys,
                             "base_bytes": base, "ratio": round(measured / predicted, 2)})
                print(f"{name:24s} {layout:5s} measured {measured / 2 ** 30:6.2f} GiB, predicted "
                      f"{predicted / 2 ** 30:6.2f} GiB (ratio {measured / predicted:.2f})", flush=True)
    with open(args.out, "w") as f:
        json.dump({"cases": rows}, f, indent=2)


if __name__ == "__main__":
    main()
