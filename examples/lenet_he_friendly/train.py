#!/usr/bin/env python3
"""A standard LeNet-5 (ReLU, max pooling), which hecc refuses, made HE-friendly and block-pruned
with ``hecc.torch``, then exported for ``hecc compile``.

    input (N, 1, 28, 28) float32, pixels / 255
    Conv2d(1, 6, 5, padding 2), ReLU, MaxPool2d(2)       -> (N, 6, 14, 14)
    Conv2d(6, 16, 5), ReLU, MaxPool2d(2)                 -> (N, 16, 5, 5)
    flatten, Linear(400, 120), ReLU, Linear(120, 84), ReLU, Linear(84, 10) -> logits (N, 10)

Four stages, each saved as a PyTorch state dict in --outdir and skipped when its file is there
(delete it to redo the stage):

1. ``original.pt``: the network above trained on MNIST's 60,000 training images.
2. ``friendly.pt``: ``hecc.torch.he_friendly(original, train, degree=2)``: every ReLU becomes a
   trainable a*((x-c)/s)^2+b, every MaxPool an AvgPool, fine-tuned by distillation.
3. ``sparse.pt``: ``hecc.torch.block_prune(friendly, "slots", ...)``: weights pruned in the blocks
   of the compiled slots program (first to an operation count, then to a sparsity).
4. ``pruned.pt``: ``block_prune`` again, to --final-ops products plus rotations of the program
   compiled with ``objective="operations"`` (every product and rotation counted alike), distilled
   from the original network, with longer fine-tuning.

Writes original.onnx (for comparison: hecc refuses it), friendly.onnx, pruned.onnx, input.npy
(the first 64 test images), labels.npy, expected_friendly.npy, expected_pruned.npy (onnxruntime
logits on input.npy) pruning.json (what
``block_prune`` measured, round by round) and metrics.json:

    python examples/lenet_he_friendly/train.py --data /path/to/mnist.npz
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_training import (N_SAMPLES, accuracy, export_onnx, load_mnist, ort_logits,  # noqa: E402
                            seed_everything, train)


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def nonzero_parameters(model) -> int:
    return int(sum((p != 0).sum().item() for p in model.parameters()))


def stage(path, make, load):
    """The stage's model: loaded from ``path`` when it is there, else made and saved."""
    if os.path.exists(path):
        print(f"{os.path.basename(path)}: loaded (delete it to redo this stage)", flush=True)
        return load(torch.load(path, weights_only=True)), None
    start = time.time()
    model = make()
    seconds = round(time.time() - start, 1)
    torch.save(model.state_dict(), path)
    return model, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="mnist.npz (x_train, y_train, x_test, y_test)")
    p.add_argument("--outdir", default=None, help="where the files go (default: next to train.py)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of the original network")
    p.add_argument("--degree", type=int, default=2, help="degree of the polynomial activations")
    p.add_argument("--friendly-epochs", type=int, default=3)
    p.add_argument("--ops", type=int, default=160,
                   help="first pruning target: products plus rotations of the slots program")
    p.add_argument("--sparsity", type=float, default=0.92, help="second pruning target: weight sparsity")
    p.add_argument("--final-ops", type=int, default=72,
                   help="last pruning target: products plus rotations under objective='operations' "
                        "(72: 90%% fewer than the HE-friendly model's 722)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    outdir = args.outdir or os.path.dirname(os.path.abspath(__file__))
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(2)
    seed_everything(args.seed)
    from hecc.torch import block_prune, he_friendly

    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in load_mnist(args.data))
    train_data, test_data = (x_train, y_train), (x_test, y_test)
    log = (lambda message: print(message, flush=True))
    seconds = {}

    def load_into(model):
        def load(state):
            model.load_state_dict(state)
            return model.eval()
        return load

    def make_original():
        model = lenet5()
        train(model, x_train, y_train, x_test, y_test, args.epochs, 64, 2e-3, 0.05, args.seed)
        return model.eval()

    original, seconds["train"] = stage(os.path.join(outdir, "original.pt"), make_original, load_into(lenet5()))

    def friendly_shell():  # the converted architecture, its polynomials fitted, no fine-tuning
        return he_friendly(original, (x_train[:512], y_train[:512]), degree=args.degree, epochs=0)

    friendly, seconds["he_friendly"] = stage(
        os.path.join(outdir, "friendly.pt"),
        lambda: he_friendly(original, train_data, degree=args.degree, epochs=args.friendly_epochs,
                            progress=log),
        load_into(friendly_shell()))

    def make_sparse():
        first = block_prune(friendly, "slots", args.ops, train_data, eval_data=test_data, progress=log)
        second = block_prune(first, "slots", args.sparsity, train_data, eval_data=test_data, progress=log)
        with open(os.path.join(outdir, "pruning.json"), "w") as f:
            json.dump({"first": first.hecc_pruning, "second": second.hecc_pruning}, f, indent=2, default=float)
            f.write("\n")
        return second

    sparse, seconds["block_prune"] = stage(os.path.join(outdir, "sparse.pt"), make_sparse,
                                           load_into(friendly_shell()))

    def make_pruned():
        third = block_prune(sparse, "slots", args.final_ops, train_data, eval_data=test_data,
                            objective="operations", teacher=original, rounds=10, epochs=2, final_epochs=8,
                            progress=log)
        path = os.path.join(outdir, "pruning.json")
        rounds = {}
        if os.path.exists(path):  # steps 1 and 2, unless sparse.pt came from elsewhere
            with open(path) as f:
                rounds = json.load(f)
        rounds["third"] = third.hecc_pruning
        with open(path, "w") as f:
            json.dump(rounds, f, indent=2, default=float)
            f.write("\n")
        return third

    pruned, seconds["block_prune_operations"] = stage(os.path.join(outdir, "pruned.pt"), make_pruned,
                                                      load_into(friendly_shell()))

    x_s, y_s = x_test[:N_SAMPLES].numpy(), y_test[:N_SAMPLES].numpy()
    np.save(os.path.join(outdir, "input.npy"), np.ascontiguousarray(x_s))
    np.save(os.path.join(outdir, "labels.npy"), y_s)
    previous = os.path.join(outdir, "metrics.json")
    if os.path.exists(previous):  # a stage loaded from its file keeps the time it took when made
        with open(previous) as f:
            before = json.load(f).get("stage_seconds", {})
        seconds = {k: before.get(k) if v is None else v for k, v in seconds.items()}
    metrics = {"seed": args.seed, "epochs": args.epochs, "degree": args.degree,
               "friendly_epochs": args.friendly_epochs, "ops_target": args.ops, "sparsity_target": args.sparsity,
               "final_ops_target": args.final_ops, "stage_seconds": seconds, "torch_version": torch.__version__}
    for name, model in (("original", original), ("friendly", friendly), ("sparse", sparse), ("pruned", pruned)):
        # the intermediate model's ONNX is not kept (the example ships the three it compiles)
        path = os.path.join(outdir, f"{name}.onnx" if name != "sparse" else ".sparse.onnx")
        export_onnx(model, path)
        logits = ort_logits(path, x_test.numpy())
        if name in ("friendly", "pruned"):
            np.save(os.path.join(outdir, f"expected_{name}.npy"), ort_logits(path, x_s))
        metrics[name] = {"test_accuracy": float((logits.argmax(1) == y_test.numpy()).mean()),
                         "first_1000_accuracy": float((logits[:1000].argmax(1) == y_test.numpy()[:1000]).mean()),
                         "torch_test_accuracy": accuracy(model, x_test, y_test),
                         "nonzero_parameters": nonzero_parameters(model)}
        if name == "sparse":
            os.remove(path)
    with open(os.path.join(outdir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
