"""Compile time and peak memory as models grow: an activation over n values (elementwise work must
be linear in n) and a chain of n nodes (compile time linear in the number of nodes), each at a
size and at four times it. Every compile runs as its own `hecc compile` process under
/usr/bin/time, so the figures include Python's start-up (about 0.5 s here).

    python benchmarks/compile_scaling.py [--out benchmarks/results/compile_scaling.json]
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
import onnx
from onnx import TensorProto, helper

F = TensorProto.FLOAT


def relu_model(n: int):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", F, ["N", n])],
                              [helper.make_tensor_value_info("y", F, ["N", n])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), (8, n)


def chain_model(n: int):
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        inits.append(helper.make_tensor(f"c{i}", F, [1], [0.001]))
        nodes.append(helper.make_node("Add", [prev, f"c{i}"], [f"v{i}"]))
        prev = f"v{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info(prev, F, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), (8, 4)


def measure(model, shape, folder: str, name: str) -> dict:
    path, data = os.path.join(folder, f"{name}.onnx"), os.path.join(folder, f"{name}.npy")
    onnx.save(model, path)
    np.save(data, np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32))
    hecc = os.path.join(os.path.dirname(sys.executable), "hecc")
    proc = subprocess.run(["/usr/bin/time", "-v", hecc, "compile", path, "-o", os.path.join(folder, f"{name}.hecc"),
                           "--calibration", data, "-q", "--force"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return {"seconds": round(seconds, 2), "peak_mb": round(peak_kb / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "compile_scaling.json"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for kind, make, sizes in (("relu", relu_model, (4096, 16384)), ("chain", chain_model, (5000, 20000))):
            for n in sizes:
                model, shape = make(n)
                results[f"{kind} {n}"] = measure(model, shape, folder, f"{kind}{n}")
                print(f"{kind} {n}: {results[f'{kind} {n}']}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
