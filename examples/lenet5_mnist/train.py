#!/usr/bin/env python3
"""Train the classic LeNet-5 (LeCun et al. 1998, with ReLU and average pooling) on MNIST and
export it to ONNX.

    input (N, 1, 28, 28) float32, pixels / 255
    Conv2d(1, 6, 5, padding 2), ReLU, AvgPool2d(2)       -> (N, 6, 14, 14)
    Conv2d(6, 16, 5), ReLU, AvgPool2d(2)                 -> (N, 16, 5, 5)
    flatten, Linear(400, 120), ReLU, Linear(120, 84), ReLU, Linear(84, 10) -> logits (N, 10)

Writes model.onnx, input.npy, labels.npy, expected.npy and metrics.json next to this script:

    python examples/lenet5_mnist/train.py --data /path/to/mnist.npz
"""
import os
import sys

import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_training import main  # noqa: E402


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


if __name__ == "__main__":
    main(lenet5, __doc__, __file__, epochs=6, lr=2e-3, weight_decay=0.05, min_accuracy=0.985)
