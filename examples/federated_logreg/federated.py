#!/usr/bin/env python3
"""Federated training with Flower, then encrypted inference with hecc.

1. Federated training (Flower's simulation runtime, FedAvg): --clients clients (10 by default)
   each hold a disjoint shard of MNIST's 60,000 training images and never share it; each round,
   every client fits a scikit-learn LogisticRegression from the global weights on its own shard
   (--local-epochs lbfgs iterations) and sends back its weights, which FedAvg averages, weighted
   by the shards' sizes.
2. The aggregated weights become an ordinary fitted scikit-learn LogisticRegression, compiled for
   encryption with ``hecc.sklearn.compile`` (calibrated on one client's shard: the compiler only
   measures ranges).
3. The client/server split on the first --test-images test digits: the data owner makes the keys
   (``hecc.Client``), encrypts the digits to a file and keeps the secret key; the server
   (``hecc.Server``) evaluates the file with the evaluation keys only; the data owner decrypts
   the scores and takes the class. The encrypted classes are compared with the aggregated model's
   plaintext ``predict``.

    pip install 'hecc[federated]'
    python examples/federated_logreg/federated.py --data /path/to/mnist.npz

Writes metrics.json (and model.npz: the aggregated weights) next to this script, or to --outdir.
"""
import argparse
import json
import os
import tempfile
import time
import warnings

import numpy as np


def load_mnist(path):
    with np.load(path) as d:
        flat = (lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0)
        return flat(d["x_train"]), d["y_train"].astype(np.int64), flat(d["x_test"]), d["y_test"].astype(np.int64)


def shard(x, y, index: int, count: int, seed: int):
    """Client ``index``'s disjoint share of (x, y): a seeded permutation cut in ``count`` parts."""
    order = np.random.default_rng(seed).permutation(len(x))
    mine = np.sort(np.array_split(order, count)[index])
    return x[mine], y[mine]


def new_model(local_epochs: int):
    from sklearn.linear_model import LogisticRegression
    # warm_start: each fit continues from the weights set from the global model
    return LogisticRegression(max_iter=local_epochs, warm_start=True)


def set_weights(model, arrays, classes) -> None:
    model.coef_, model.intercept_ = np.array(arrays[0]), np.array(arrays[1])
    model.classes_ = np.asarray(classes)


def federated_training(args, x_train, y_train, x_test, y_test):
    """FedAvg over --rounds rounds in Flower's simulation runtime; the aggregated (coef, intercept)
    and the global model's test accuracy after each round."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    classes = np.arange(10)
    features = x_train.shape[1]
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        x, y = shard(x_train, y_train, int(context.node_config["partition-id"]),
                     int(context.node_config["num-partitions"]), args.seed)
        model = new_model(args.local_epochs)
        set_weights(model, msg.content["arrays"].to_numpy_ndarrays(), classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs stops after local_epochs iterations on purpose
            model.fit(x, y)
        reply = RecordDict({"arrays": ArrayRecord([model.coef_, model.intercept_]),
                            "metrics": MetricRecord({"num-examples": len(x),
                                                     "train-accuracy": float(model.score(x, y))})})
        return Message(content=reply, reply_to=msg)

    history = []

    def evaluate(server_round: int, arrays) -> MetricRecord:
        model = new_model(args.local_epochs)
        set_weights(model, arrays.to_numpy_ndarrays(), classes)
        accuracy = float(model.score(x_test, y_test))
        history.append({"round": server_round, "test_accuracy": accuracy})
        print(f"round {server_round}: global model test accuracy {accuracy:.4f}", flush=True)
        return MetricRecord({"accuracy": accuracy})

    final = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=args.clients,
                          min_available_nodes=args.clients)
        initial = ArrayRecord([np.zeros((10, features)), np.zeros(10)])
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=args.rounds, evaluate_fn=evaluate)
        final["arrays"] = result.arrays.to_numpy_ndarrays()

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return final["arrays"], history


def encrypted_inference(model, calibration, digits):
    """The client/server split through files: keys and encryption on the client, evaluation on the
    server with the evaluation keys only, decryption and the class decision on the client."""
    import hecc.sklearn
    from hecc.clientserver import Client, Server
    start = time.perf_counter()
    fhe = hecc.sklearn.compile(model, calibration)
    compiled = time.perf_counter() - start
    program = fhe.program.with_layout(fhe.program.choose_layout(len(digits)))
    name = program.inputs[0][0]
    with tempfile.TemporaryDirectory() as tmp:
        keys = os.path.join(tmp, "keys")
        client = Client(program, keys)                         # the data owner
        client.keygen()                                        # secret.key stays in keys/ (0600)
        start = time.perf_counter()
        client.encrypt({name: digits}, os.path.join(tmp, "digits.hecc"))
        server = Server(program, os.path.join(keys, "eval.keys"))  # no secret key here
        server.evaluate(os.path.join(tmp, "digits.hecc"), os.path.join(tmp, "scores.hecc"))
        scores = client.decrypt(os.path.join(tmp, "scores.hecc"))[fhe.score_output]
        seconds = time.perf_counter() - start
        sent = os.path.getsize(os.path.join(tmp, "digits.hecc"))
    classes = model.classes_[np.asarray(scores).reshape(len(digits), -1).argmax(1)]
    return classes, {"compile_seconds": compiled, "layout": program.layout,
                     "parameters": {k: program.parameters[k] for k in ("poly_modulus_degree", "coeff_modulus_bits")},
                     "encrypt_evaluate_decrypt_seconds": seconds, "encrypted_input_bytes": sent,
                     "bytes_per_feature_value": sent / digits.size}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="mnist.npz (x_train, y_train, x_test, y_test)")
    p.add_argument("--outdir", default=None, help="where metrics.json goes (default: next to this script)")
    p.add_argument("--clients", type=int, default=10, help="clients, each with a disjoint shard (at least 5)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=5, help="lbfgs iterations per client per round")
    p.add_argument("--test-images", type=int, default=1000, help="test digits sent encrypted")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.clients < 2:
        p.error("--clients must be at least 2")
    outdir = args.outdir or os.path.dirname(os.path.abspath(__file__))
    os.makedirs(outdir, exist_ok=True)
    x_train, y_train, x_test, y_test = load_mnist(args.data)

    start = time.perf_counter()
    (coef, intercept), history = federated_training(args, x_train, y_train, x_test, y_test)
    training_seconds = time.perf_counter() - start
    np.savez(os.path.join(outdir, "model.npz"), coef=coef, intercept=intercept)

    model = new_model(args.local_epochs)
    set_weights(model, [coef, intercept], np.arange(10))
    plain = model.predict(x_test)
    calibration, _ = shard(x_train, y_train, 0, args.clients, args.seed)
    digits = x_test[:args.test_images]
    encrypted, run = encrypted_inference(model, calibration, digits)
    metrics = {
        "clients": args.clients, "rounds": args.rounds, "local_epochs": args.local_epochs, "seed": args.seed,
        "training_seconds": round(training_seconds, 1), "history": history,
        "aggregated_test_accuracy": float((plain == y_test).mean()),
        "test_images_encrypted": args.test_images,
        "encrypted_accuracy": float((encrypted == y_test[:args.test_images]).mean()),
        "encrypted_equal_to_plaintext": int((encrypted == plain[:args.test_images]).sum()),
        **run}
    with open(os.path.join(outdir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
