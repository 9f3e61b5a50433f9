#!/usr/bin/env python3
"""Train a small Vision Transformer on MNIST and export it to ONNX, in two variants:

    input (N, 1, 28, 28) float32, pixels / 255
    7x7 patches -> 16 tokens of 49 pixels, Linear(49, 32), a learned class token -> 17 tokens,
    learned positional embeddings; one encoder layer of width 48, 3 heads of width 16:
        he_friendly: attention weights (Q K^T / 4)^2 / 17 (no softmax), a learned affine map in
                     place of each LayerNorm, MLP 48-96-48 with 0.125 x^2 + 0.5 x + 0.25 (GELU's
                     quadratic fit) in place of GELU
        exact:       softmax attention, LayerNorm, GELU (the textbook block)
        converted:   the exact model (exact.pt, trained first if missing) converted by
                     hecc.torch.he_friendly: each LayerNorm a learned affine map, the softmax
                     polynomial attention, GELU a quadratic, fine-tuned by distillation
    the class token's output, Linear(48, 10) -> logits (N, 10)

Writes model.onnx (he_friendly; exact.onnx and exact.pt with --variant exact, converted.onnx with
--variant converted), input.npy, labels.npy, expected.npy and metrics_<variant>.json next to this
script (ONNX opset 17, legacy exporter, dynamic batch):

    python examples/vit_mnist/train.py --data /path/to/mnist.npz [--variant exact|converted]
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
from mnist_training import N_SAMPLES, accuracy, load_mnist, ort_logits, seed_everything, train  # noqa: E402

PATCH, WIDTH, HEADS, HIDDEN = 7, 48, 3, 96
TOKENS = (28 // PATCH) ** 2 + 1


class Affine(nn.Module):
    """A learned scale and shift per feature: the HE-friendly stand-in for LayerNorm."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x):
        return x * self.weight + self.bias


class QuadGelu(nn.Module):
    def forward(self, x):
        return 0.125 * x * x + 0.5 * x + 0.25


class Attention(nn.Module):
    def __init__(self, exact: bool):
        super().__init__()
        self.exact = exact
        self.q, self.k, self.v = (nn.Linear(WIDTH, WIDTH) for _ in range(3))
        self.attend = nn.Softmax(dim=-1) if exact else None  # a module, so he_friendly can swap it
        self.out = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        n, t, _ = x.shape
        q, k, v = (f(x).reshape(n, t, HEADS, WIDTH // HEADS).transpose(1, 2) for f in (self.q, self.k, self.v))
        scores = q @ k.transpose(-2, -1) / (WIDTH // HEADS) ** 0.5
        weights = self.attend(scores) if self.exact else scores * scores / t
        return self.out((weights @ v).transpose(1, 2).reshape(n, t, WIDTH))


class ViT(nn.Module):
    def __init__(self, exact: bool):
        super().__init__()
        self.embed = nn.Linear(PATCH * PATCH, WIDTH)
        self.cls = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos = nn.Parameter(torch.randn(1, TOKENS, WIDTH) * 0.02)
        norm = (lambda: nn.LayerNorm(WIDTH)) if exact else (lambda: Affine(WIDTH))
        self.norm1, self.norm2 = norm(), norm()
        self.attention = Attention(exact)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.GELU() if exact else QuadGelu(), nn.Linear(HIDDEN, WIDTH))
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x):
        n = x.shape[0]
        side = 28 // PATCH
        patches = x.reshape(n, side, PATCH, side, PATCH).transpose(2, 3).reshape(n, side * side, PATCH * PATCH)
        tokens = torch.cat([self.cls.expand(n, -1, -1), self.embed(patches)], dim=1) + self.pos
        tokens = tokens + self.attention(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(tokens[:, 0])


def export(model, path: str) -> list[str]:
    import onnx
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    return sorted({n.op_type for n in m.graph.node})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="mnist.npz (x_train, y_train, x_test, y_test)")
    p.add_argument("--variant", choices=("he_friendly", "exact", "converted"), default="he_friendly")
    p.add_argument("--friendly-epochs", type=int, default=30, help="he_friendly's fine-tuning (converted)")
    p.add_argument("--friendly-lr", type=float, default=3e-3)
    p.add_argument("--outdir", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    torch.set_num_threads(2)
    seed_everything(args.seed)
    x_train, y_train, x_test, y_test = load_mnist(args.data)
    tensors = [torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test)]
    model = ViT(exact=args.variant != "he_friendly")
    start = time.time()
    weights = os.path.join(args.outdir, "exact.pt")
    if args.variant == "converted" and os.path.exists(weights):
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        train(model, *tensors, args.epochs, 128, args.lr, 0.05, args.seed)
    if args.variant == "exact":
        torch.save(model.state_dict(), weights)
    extra = {}
    if args.variant == "converted":
        from hecc.torch import he_friendly
        model.eval()
        extra["exact_test_accuracy"] = accuracy(model, tensors[2], tensors[3])
        model = he_friendly(model, (tensors[0], tensors[1]), epochs=args.friendly_epochs, lr=args.friendly_lr,
                            seed=args.seed, progress=print)
        extra.update(friendly_epochs=args.friendly_epochs, friendly_lr=args.friendly_lr)
    seconds = time.time() - start
    name = {"he_friendly": "model.onnx", "exact": "exact.onnx", "converted": "converted.onnx"}[args.variant]
    path = os.path.join(args.outdir, name)
    ops = export(model, path)
    logits = ort_logits(path, x_test)
    metrics = {"variant": args.variant, "test_accuracy": float((logits.argmax(1) == y_test).mean()),
               "first_1000_accuracy": float((logits[:1000].argmax(1) == y_test[:1000]).mean()),
               "torch_test_accuracy": accuracy(model, tensors[2], tensors[3]),
               "parameters": sum(p.numel() for p in model.parameters()),
               "epochs": args.epochs, "lr": args.lr, "seed": args.seed, "train_time_s": round(seconds, 1),
               "torch_version": torch.__version__, "onnx_ops": ops, **extra}
    if args.variant == "he_friendly":
        x_s = np.ascontiguousarray(x_test[:N_SAMPLES])
        np.save(os.path.join(args.outdir, "input.npy"), x_s)
        np.save(os.path.join(args.outdir, "labels.npy"), y_test[:N_SAMPLES])
        np.save(os.path.join(args.outdir, "expected.npy"), ort_logits(path, x_s))
    with open(os.path.join(args.outdir, f"metrics_{args.variant}.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
