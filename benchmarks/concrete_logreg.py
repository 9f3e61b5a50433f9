"""Issue 17: one fitted scikit-learn LogisticRegression on 784 MNIST features (the
``examples/sklearn_logreg_mnist`` recipe: 20,000 seeded training images, lbfgs, C=1, 300
iterations), encrypted by hecc (``hecc.sklearn``) and by Concrete ML (``concrete-ml`` 1.9.0 in its
own virtual environment, its Python in ``$HECC_CONCRETE_PYTHON``), in the same run: one sample,
then --samples samples; time per sample, bytes of the encrypted input on disk, evaluation keys,
and the predicted classes against scikit-learn's.

    HECC_CONCRETE_PYTHON=/path/to/concrete-venv/bin/python \\
        python benchmarks/concrete_logreg.py --data ../shared/data/mnist.npz [--samples 1000]
Writes benchmarks/results/concrete_logreg.json. Without the variable, hecc's side alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import warnings

import numpy as np

import hecc
import hecc.sklearn
from latency_mnist import hecc_one_at_a_time, one_core

HERE = os.path.dirname(os.path.abspath(__file__))


def fit(data):
    from sklearn.linear_model import LogisticRegression
    x = data["x_train"].reshape(len(data["x_train"]), -1).astype(np.float32) / 255.0
    idx = np.sort(np.random.default_rng(0).permutation(len(x))[:20000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(solver="lbfgs", C=1.0, max_iter=300).fit(x[idx], data["y_train"][idx])
    return model, x[idx]


def hecc_side(model, calibration, test) -> dict:
    """Compile; one sample through the client/server split (files on disk, as a deployment
    would), then ``test`` in one encrypted ``predict`` (the layout hecc picks for that many)."""
    from hecc.clientserver import Client, Server
    start = time.perf_counter()
    fhe = hecc.sklearn.compile(model, calibration)
    compile_seconds = time.perf_counter() - start
    program = fhe.program
    out = {"compile_seconds": compile_seconds, "layouts": {}}
    name = program.inputs[0][0]
    for runs in (1, len(test)):
        layout = program.choose_layout(runs)
        prog = program.with_layout(layout)
        with tempfile.TemporaryDirectory() as tmp:
            client = Client(prog, os.path.join(tmp, "keys"))
            start = time.perf_counter()
            client.keygen()
            keygen = time.perf_counter() - start
            server = Server(prog, os.path.join(tmp, "keys", "eval.keys"))
            inp, res = os.path.join(tmp, "in.hecc"), os.path.join(tmp, "out.hecc")
            timings = []
            for _ in range(3 if runs == 1 else 1):
                start = time.perf_counter()
                client.encrypt({name: test[:runs]}, inp)
                encrypted = time.perf_counter()
                server.evaluate(inp, res)
                evaluated = time.perf_counter()
                scores = client.decrypt(res)[fhe.score_output]
                timings.append({"encrypt": encrypted - start, "evaluate": evaluated - encrypted,
                                "decrypt": time.perf_counter() - evaluated})
            out["layouts"][str(runs)] = {
                "layout": layout, "parameters": {k: prog.parameters[k] for k in ("poly_modulus_degree",
                                                                                 "coeff_modulus_bits")},
                "keygen_seconds": keygen, "eval_key_bytes": os.path.getsize(os.path.join(tmp, "keys", "eval.keys")),
                "input_bytes": os.path.getsize(inp), "result_bytes": os.path.getsize(res),
                "input_bytes_per_feature_value": os.path.getsize(inp) / (runs * test.shape[1]),
                "seconds": timings, "seconds_per_sample": min(sum(t.values()) for t in timings) / runs,
                "predicted": model.classes_[np.asarray(scores).reshape(runs, -1).argmax(1)].tolist()}
    out["in_memory_one_sample"] = one_at_a_time(program.with_layout(program.choose_layout(1)), test[:20])
    start = time.perf_counter()
    predicted = fhe.predict(test, fhe="execute")
    out["predict_execute"] = {"seconds": time.perf_counter() - start, "predicted": predicted.tolist(),
                              "layout": fhe.last_stats["layout"]}
    start = time.perf_counter()
    predicted = fhe.predict(test[:1], fhe="execute")
    out["predict_execute_one"] = {"seconds": time.perf_counter() - start, "layout": fhe.last_stats["layout"]}
    return out


def one_at_a_time(program, samples) -> dict:
    """Keys once, then each sample encrypted, evaluated and decrypted alone in memory on one core
    (no files): seconds per sample, median over ``samples`` (the first also encodes the weights)."""
    with one_core():
        _, times, _, _ = hecc_one_at_a_time(program, samples, "hecc")
    seconds = [sum(phases) for phases in zip(*times.values())]
    return {"layout": program.layout, "median_seconds": float(np.median(seconds)), "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist.npz"))
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "concrete_logreg.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore", hecc.HeccWarning)
    data = dict(np.load(args.data))
    model, calibration = fit(data)
    test = data["x_test"][:args.samples].reshape(args.samples, -1).astype(np.float32) / 255.0
    labels = data["y_test"][:args.samples]
    expected = model.predict(test)
    results = {"date": time.strftime("%Y-%m-%d"), "samples": args.samples,
               "sklearn_accuracy": float((expected == labels).mean())}
    ours = hecc_side(model, calibration, test)
    for entry in list(ours["layouts"].values()) + [ours["predict_execute"]]:
        got = np.asarray(entry.pop("predicted"))
        entry["classes_equal_to_sklearn"] = int((got == expected[:len(got)]).sum())
    results["hecc"] = ours
    print(json.dumps({"hecc": ours}, default=float), flush=True)
    python = os.environ.get("HECC_CONCRETE_PYTHON")
    if python:
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(os.path.join(tmp, "model.npz"), coef=model.coef_, intercept=model.intercept_,
                     classes=model.classes_)
            np.savez(os.path.join(tmp, "data.npz"), calibration=calibration, test=test)
            out = os.path.join(tmp, "out.json")
            subprocess.run([python, os.path.join(HERE, "peers", "concrete_logreg.py"), os.path.join(tmp, "model.npz"),
                            os.path.join(tmp, "data.npz"), out], check=True)
            with open(out) as f:
                theirs = json.load(f)
        got = np.asarray(theirs.pop("predicted"))
        clear = np.asarray(theirs.pop("clear_quantized_predicted"))
        seconds = theirs.pop("seconds")
        results["concrete_ml"] = {
            **theirs, "seconds_one_sample": seconds[0], "seconds_per_sample": float(np.mean(seconds)),
            "input_bytes": theirs.pop("input_bytes")[0], "output_bytes": theirs.pop("output_bytes")[0],
            "classes_equal_to_sklearn": int((got == expected).sum()),
            "classes_equal_to_its_clear_quantized_model": int((got == clear).sum())}
        results["ratios"] = {
            "one_sample_seconds_hecc_over_concrete": ours["layouts"]["1"]["seconds_per_sample"] / seconds[0],
            f"{args.samples}_samples_seconds_hecc_over_concrete":
                ours["layouts"][str(args.samples)]["seconds_per_sample"] / float(np.mean(seconds)),
            "one_input_bytes_hecc_over_concrete": ours["layouts"]["1"]["input_bytes"] / results["concrete_ml"]["input_bytes"]}
        print(json.dumps({k: results[k] for k in ("concrete_ml", "ratios")}, default=float), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, default=float)
        f.write("\n")


if __name__ == "__main__":
    main()
