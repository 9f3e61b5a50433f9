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
import sys
import tempfile

from memory_prediction import CASES, time_v  # the same examples, compiled with the same options

# and the ViT, whose runs memory_prediction leaves out (a batch takes six minutes)
COMPILED = CASES + [("vit_mnist", {})]

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "examples")
HECC = os.path.join(os.path.dirname(sys.executable), "hecc")


def flags(options: dict) -> list[str]:
    """``hecc.compile`` keyword options as `hecc compile` flags."""
    return [part for key, value in options.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "compile_examples.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in COMPILED:
            folder = os.path.join(EXAMPLES, name)
            options = flags(options)
            cmd = [HECC, "compile", os.path.join(folder, "model.onnx"), "-o", os.path.join(tmp, f"{name}.hecc"),
                   "--calibration", os.path.join(folder, "input.npy"), "--force", "-q", *options]
            runs = [time_v(cmd) for _ in range(args.repeats)]
            seconds, rss = min(runs)
            rows.append({"example": name, "options": options, "seconds": round(seconds, 2),
                         "all_seconds": [round(s, 2) for s, _ in runs], "peak_bytes": rss})
            print(f"{name:24s} {seconds:6.2f} s  {rss / 2 ** 30:5.2f} GiB", flush=True)
    with open(args.out, "w") as f:
        json.dump({"cases": rows}, f, indent=2)


if __name__ == "__main__":
    main()
