#!/usr/bin/env python3
"""Train Orion's LeNet-5 (``orion.models.LeNet``, Orion ASPLOS'25) on MNIST and export it to ONNX.

    input (N, 1, 28, 28) float32, pixels / 255
    Conv2d(1, 32, 5, stride 2, padding 2), BatchNorm2d(32), x^2     -> (N, 32, 14, 14)
    Conv2d(32, 64, 5, stride 2, padding 2), BatchNorm2d(64), x^2    -> (N, 64, 7, 7)
    flatten, Linear(3136, 512), BatchNorm1d(512), x^2               -> (N, 512)
    Linear(512, 10)                                                  -> logits (N, 10)

The module and parameter names are Orion's (conv1, bn1, conv2, bn2, fc1, bn3, fc2), so
``benchmarks/orion_lenet.py`` loads these weights into Orion's own model. Writes model.onnx,
input.npy, labels.npy, expected.npy and metrics.json next to this script:

    python examples/lenet5_orion_mnist/train.py --data /path/to/mnist.npz
"""
import os
import sys

import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_training import main  # noqa: E402


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2, stride=2)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2, stride=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(7 * 7 * 64, 512)
        self.bn3 = nn.BatchNorm1d(512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = x * x
        x = self.bn2(self.conv2(x))
        x = x * x
        x = self.bn3(self.fc1(x.flatten(1)))
        x = x * x
        return self.fc2(x)


if __name__ == "__main__":
    main(LeNet, __doc__, __file__, epochs=8, lr=2e-3, weight_decay=0.05, min_accuracy=0.985)
