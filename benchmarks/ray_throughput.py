"""Throughput of CryptoNets (batch layout) on the local worker pool vs a local Ray cluster on the
same cores (issue 14): predictions per hour for N encrypted MNIST test images, all-in-one
(keygen, encryption and decryption in this process, evaluation on the workers).

    python benchmarks/ray_throughput.py [--inputs 10000] [--cores 2] [--data ../shared/data/mnist.npz]

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


def per_batch(prog, x):
    """What scaling out depends on, for one full batch on one core: the client's encryption
    time, the evaluation time, and the bytes that cross the network (evaluation keys once per
    node; per batch, the encrypted inputs out and the results back)."""
    from hecc.backends.tenseal import TensealBackend, encrypt_batch, evaluate_batch, server_backend
    client = TensealBackend(prog.graph)
    client.connect(None)
    lo, hi = client.spans(len(x))[0]
    keys = {k: v for k, v in client.seal.export().items() if k != "secret"}
    start = time.perf_counter()
    batch = encrypt_batch(client, [x], lo, hi)
    encrypt = time.perf_counter() - start
    server = server_backend(prog.graph, keys)
    start = time.perf_counter()
    results = evaluate_batch(server, batch, 0)
    evaluate = time.perf_counter() - start
    return {"inputs_per_batch": hi - lo, "encrypt_seconds": round(encrypt, 2), "eval_seconds": round(evaluate, 2),
            "eval_key_bytes": sum(len(v) for v in keys.values()),  # what goes to each node
            "input_bytes": sum(len(b) for group in batch for b in group),
            "result_bytes": sum(len(b) for group in results for b in group)}


def on_paper(b, cores_per_node=2, link=1.25e9):
    """Predicted throughput on 10 and 100 nodes from one batch's figures, and its limits: one
    driver process encrypts every batch, and its network link carries every batch's
    ciphertexts."""
    per_worker = b["inputs_per_batch"] / b["eval_seconds"]  # predictions per second
    out = {"encrypt_limit_workers": b["eval_seconds"] / b["encrypt_seconds"],
           "network_limit_workers": link * b["eval_seconds"] / (b["input_bytes"] + b["result_bytes"])}
    for nodes in (10, 100):
        workers = nodes * cores_per_node
        out[f"{nodes}_nodes"] = {
            "evaluation_bound_per_hour": round(workers * per_worker * 3600),
            "one_driver_per_hour": round(min(workers, out["encrypt_limit_workers"], out["network_limit_workers"])
                                         * per_worker * 3600),
            "drivers_needed": int(np.ceil(workers / min(out["encrypt_limit_workers"], out["network_limit_workers"]))),
            "keys_to_nodes_bytes": nodes * b["eval_key_bytes"]}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10000)
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
    log("one batch on one core (for the predictions on paper) ...")
    results["per_batch"] = per_batch(prog, x)
    results["on_paper"] = on_paper(results["per_batch"])
    print(json.dumps(results, indent=2))
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
