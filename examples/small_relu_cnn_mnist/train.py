#!/usr/bin/env python3
"""Train the small ReLU CNN of issue 13 on MNIST and export it to ONNX: an ordinary network
that should compile for encryption with ``--calibration`` and nothing else.

    input (N, 1, 28, 28) float32, pixels / 255
    Conv2d(1, 4, 5, stride 3), ReLU           -> (N, 4, 8, 8)
    flatten, Linear(256, 32), ReLU, Linear(32, 10) -> logits (N, 10)

Writes model.onnx, input.npy, labels.npy, expected.npy and metrics.json next to this script:

    python examples/small_relu_cnn_mnist/train.py --data /path/to/mnist.npz
"""
import os
import sys

import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_training import main  # noqa: E402


def small_relu_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))


if __name__ == "__main__":
    main(small_relu_cnn, __doc__, __file__, epochs=4, lr=2e-3, weight_decay=0.05, min_accuracy=0.95)
