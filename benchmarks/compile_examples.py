"""Compile time and peak memory of `hecc compile` for every example (issue 13: under 20 s each),
as its README compiles it: `--calibration` on the example's 64 sample inputs (the ReLU CNN with
`--activation-degree 8`), every layout (`--layout auto`), one process, wall time and peak
resident memory from `/usr/bin/time -v`.

    python benchmarks/compile_examples.py [--repeats 2]

Writes benchmarks/results/compile_examples.json (the best of the repeats per example).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")
HECC = os.path.join(os.path.dirname(sys.executable), "hecc")
CASES = [("cryptonets_mnist", []), ("tenseal_tutorial_mnist", []), ("sigmoid_mlp_mnist", []),
         ("sklearn_logreg_mnist", []), ("small_relu_cnn_mnist", []),
         ("relu_cnn_mnist", ["--activation-degree", "8"]), ("lenet5_orion_mnist", []), ("lenet5_mnist", [])]


def timed(cmd) -> tuple[float, int]:
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) * 1024
    return seconds, rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "compile_examples.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in CASES:
            folder = os.path.join(EXAMPLES, name)
            cmd = [HECC, "compile", os.path.join(folder, "model.onnx"), "-o", os.path.join(tmp, f"{name}.hecc"),
                   "--calibration", os.path.join(folder, "input.npy"), "--force", "-q", *options]
            runs = [timed(cmd) for _ in range(args.repeats)]
            seconds, rss = min(runs)
            rows.append({"example": name, "options": options, "seconds": round(seconds, 2),
                         "all_seconds": [round(s, 2) for s, _ in runs], "peak_bytes": rss})
            print(f"{name:24s} {seconds:6.2f} s  {rss / 2 ** 30:5.2f} GiB", flush=True)
    with open(args.out, "w") as f:
        json.dump({"cases": rows}, f, indent=2)


if __name__ == "__main__":
    main()
