"""What the MNIST examples' train.py scripts share: loading the data, a seeded training loop,
ONNX export (legacy exporter, opset 13, dynamic batch), and the files every example ships
(model.onnx, input.npy, labels.npy, expected.npy, metrics.json). Needs PyTorch
(``pip install 'hecc[examples]'``)."""
from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

N_SAMPLES = 64


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def load_mnist(path: str):
    """(x_train, y_train, x_test, y_test): images float32 (N, 1, 28, 28) as pixels / 255."""
    with np.load(path) as d:
        x_train = (d["x_train"].astype(np.float32) / 255.0)[:, None]
        x_test = (d["x_test"].astype(np.float32) / 255.0)[:, None]
        return x_train, d["y_train"].astype(np.int64), x_test, d["y_test"].astype(np.int64)


@torch.no_grad()
def accuracy(model, x, y, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def train(model, x_train, y_train, x_test, y_test, epochs: int, batch_size: int, lr: float,
          weight_decay: float, seed: int) -> None:
    """AdamW with a one-cycle schedule and gradient clipping (networks with square activations
    diverge without it)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        start, total = time.time(), 0.0
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(x_train), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x_train):.4f} test accuracy "
              f"{accuracy(model, x_test, y_test):.4f} ({time.time() - start:.1f} s)", flush=True)


def export_onnx(model, path: str) -> list[str]:
    import onnx
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), path, dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["logits"], do_constant_folding=False,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    return [n.op_type for n in m.graph.node]


def ort_logits(path: str, x, batch_size: int = 1000) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["logits"], {"input": x[i:i + batch_size]})[0]
                           for i in range(0, len(x), batch_size)]).astype(np.float32)


def arguments(doc: str, epochs: int, lr: float, weight_decay: float, min_accuracy: float):
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="mnist.npz (x_train, y_train, x_test, y_test)")
    p.add_argument("--outdir", default=None, help="where the files go (default: next to train.py)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--min-accuracy", type=float, default=min_accuracy,
                   help="fail (exit 1) if the ONNX test accuracy is below this")
    return p.parse_args()


def main(model_factory, doc: str, script: str, epochs: int, lr: float = 2e-3,
         weight_decay: float = 0.05, min_accuracy: float = 0.98, extra_files=None) -> None:
    """Train ``model_factory()``, export it and write the example's files next to ``script``
    (or into --outdir). ``extra_files(model, outdir)`` may write more (e.g. weights for a peer)."""
    args = arguments(doc, epochs, lr, weight_decay, min_accuracy)
    outdir = args.outdir or os.path.dirname(os.path.abspath(script))
    os.makedirs(outdir, exist_ok=True)
    torch.set_num_threads(2)
    seed_everything(args.seed)
    x_train, y_train, x_test, y_test = load_mnist(args.data)
    tensors = [torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test)]
    model = model_factory()
    start = time.time()
    train(model, *tensors, args.epochs, args.batch_size, args.lr, args.weight_decay, args.seed)
    train_time = time.time() - start
    model.eval()
    path = os.path.join(outdir, "model.onnx")
    ops = export_onnx(model, path)
    logits = ort_logits(path, x_test)
    test_accuracy = float((logits.argmax(1) == y_test).mean())
    x_s = np.ascontiguousarray(x_test[:N_SAMPLES])
    y_s = y_test[:N_SAMPLES]
    expected = ort_logits(path, x_s)
    np.save(os.path.join(outdir, "input.npy"), x_s)
    np.save(os.path.join(outdir, "labels.npy"), y_s)
    np.save(os.path.join(outdir, "expected.npy"), expected)
    if extra_files is not None:
        extra_files(model, outdir)
    metrics = {"test_accuracy": test_accuracy,
               "first_1000_accuracy": float((logits[:1000].argmax(1) == y_test[:1000]).mean()),
               "sample_accuracy": float((expected.argmax(1) == y_s).mean()),
               "torch_test_accuracy": accuracy(model, tensors[2], tensors[3]),
               "epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
               "weight_decay": args.weight_decay, "train_time_s": round(train_time, 1),
               "torch_version": torch.__version__, "onnx_ops": ops}
    with open(os.path.join(outdir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(json.dumps(metrics, indent=2))
    if test_accuracy < args.min_accuracy:
        raise SystemExit(f"test accuracy {test_accuracy:.4f} < {args.min_accuracy}")
