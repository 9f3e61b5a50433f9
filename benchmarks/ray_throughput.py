"""Throughput of CryptoNets (batch layout) on the local worker pool vs a local Ray cluster on the
same cores (issue 14): predictions per hour for N encrypted MNIST test images, all-in-one
(keygen, encryption and decryption in this process, evaluation on the workers).

    python benchmarks/ray_throughput.py [--inputs 8192] [--cores 2] [--data ../shared/data/mnist.npz]

The Ray cluster is started here (a head and cores-1 more nodes, one CPU each, as separate
`ray start` processes on this machine) and stopped by process group. Needs `pip install
'hecc[ray]'`. Writes benchmarks/results/ray_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

import hecc

HERE = os.path.dirname(os.path.abspath(__file__))
CRYPTONETS = os.path.join(HERE, "..", "examples", "cryptonets_mnist")
BIN = os.path.dirname(sys.executable)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def images(path, n):
    if os.path.exists(path):
        with np.load(path) as d:
            x, y = (d["x_test"].astype(np.float32) / 255)[:, None], d["y_test"]
    else:
        x, y = np.load(os.path.join(CRYPTONETS, "input.npy")), np.load(os.path.join(CRYPTONETS, "labels.npy"))
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n], np.concatenate([y] * reps)[:n]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(nodes: int):
    temp = tempfile.mkdtemp(prefix="hecc-ray-")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    procs = []
    for i in range(nodes):
        args = (["--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard", "false",
                 "--dashboard-port", str(free_port())] if i == 0 else ["--address", address])
        procs.append(subprocess.Popen([os.path.join(BIN, "ray"), "start", *args, *common],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            out = subprocess.run([os.path.join(BIN, "ray"), "status", "--address", address],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.count(" node_") >= i + 1:
                break
            time.sleep(1)
    return address, procs, temp


def stop_cluster(procs, temp):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)
    shutil.rmtree(temp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=8192)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "ray_throughput.json"))
    args = parser.parse_args()
    x, y = images(args.data, args.inputs)
    prog = hecc.compile(os.path.join(CRYPTONETS, "model.onnx"),
                        calibration=np.load(os.path.join(CRYPTONETS, "input.npy")), layout="batch")
    results = {"inputs": args.inputs, "cores": args.cores, "model": "cryptonets_mnist", "layout": "batch",
               "parameters": prog.parameters["coeff_modulus_bits"]}
    start = time.perf_counter()
    local = prog.run(x, backend="tenseal", layout="batch", workers=args.cores)["logits"]
    seconds = time.perf_counter() - start
    results["local_pool"] = {"seconds": round(seconds, 2), "predictions_per_hour": round(args.inputs / seconds * 3600),
                             "accuracy": float((local.argmax(1) == y).mean()), "stats": prog.last_stats["seconds"]}
    log(f"local pool ({args.cores} workers): {seconds:.1f} s, {args.inputs / seconds * 3600:,.0f} predictions/hour")
    address, procs, temp = start_cluster(args.cores)
    try:
        start = time.perf_counter()
        ray_out = prog.run(x, backend="tenseal", layout="batch", cluster=address)["logits"]
        seconds = time.perf_counter() - start
    finally:
        import ray
        if ray.is_initialized():
            ray.shutdown()
        stop_cluster(procs, temp)
    results["ray_cluster"] = {"seconds": round(seconds, 2), "predictions_per_hour": round(args.inputs / seconds * 3600),
                              "accuracy": float((ray_out.argmax(1) == y).mean()), "nodes": args.cores,
                              "stats": prog.last_stats["seconds"],
                              "same_class_as_local": float((ray_out.argmax(1) == local.argmax(1)).mean())}
    log(f"ray cluster ({args.cores} nodes x 1 CPU): {seconds:.1f} s, "
        f"{args.inputs / seconds * 3600:,.0f} predictions/hour")
    print(json.dumps(results, indent=2))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
