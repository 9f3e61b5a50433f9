#!/usr/bin/env python3
"""Regenerate the PyTorch-exported ONNX fixtures in this directory.

    python tests/data/torch/make_fixtures.py            # writes next to this file
    python tests/data/torch/make_fixtures.py --out DIR

Builds a few small PyTorch models with fixed random weights (no training) and
exports each of them with both torch.onnx exporters:

    <model>_legacy13_dyn.onnx   TorchScript exporter (dynamo=False), opset 13, dynamic batch
    <model>_legacy17_b1.onnx    TorchScript exporter (dynamo=False), opset 17, batch fixed to 1
    <model>_dynamo18_dyn.onnx   torch.export exporter (dynamo=True), opset 18, dynamic batch
    <model>_dynamo21_b1.onnx    torch.export exporter (dynamo=True), opset 21, batch fixed to 1

plus one input sample per model, `<model>.input.npy` (batch of 3, float32).
The *_b1 files take `input[:1]`.  Expected outputs are not stored: the tests
compute them with onnxruntime.  Each export is checked here with
onnx.checker and against the torch output with onnxruntime.
"""

import argparse
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 3
TOL = 1e-4


class CNN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> AvgPool -> depthwise Conv -> square -> view -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.dw = nn.Conv2d(4, 4, 3, groups=4)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = self.conv1(x)          # (N, 4, 12, 12)
        x = self.bn(x)
        x = torch.relu(x)
        x = self.pool(x)           # (N, 4, 6, 6)
        x = self.dw(x)             # (N, 4, 4, 4)
        x = x * x
        x = x.view(x.size(0), -1)  # (N, 64)
        return self.fc(x)


class MLPGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16, 8),
            nn.GELU(),
            nn.Linear(8, 4),
            nn.Sigmoid(),
            nn.Linear(4, 3),
            nn.Softmax(dim=1),
        )

    def forward(self, x):
        return self.net(x)


class MLPMisc(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 8)
        self.fc4 = nn.Linear(8, 6)
        self.fc5 = nn.Linear(6, 4)
        self.act_leaky = nn.LeakyReLU(0.1)
        self.act_elu = nn.ELU()
        self.act_softplus = nn.Softplus()
        self.act_hardsigmoid = nn.Hardsigmoid()

    def forward(self, x):
        x = torch.tanh(self.fc1(x))
        x = self.act_leaky(self.fc2(x))
        x = self.act_elu(self.fc3(x))
        x = self.act_softplus(self.fc4(x))
        x = self.act_hardsigmoid(self.fc5(x))       # (N, 4)
        x = x + 0.5 * x
        x = F.pad(x, (1, 2), mode="constant", value=0.25)  # (N, 7)
        return F.log_softmax(x, dim=1)


def build_cnn():
    torch.manual_seed(1)
    m = CNN()
    with torch.no_grad():
        m.bn.running_mean.copy_(torch.randn(4) * 0.5)
        m.bn.running_var.copy_(torch.rand(4) * 1.5 + 0.5)
        m.bn.weight.copy_(torch.rand(4) + 0.5)
        m.bn.bias.copy_(torch.randn(4) * 0.2)
    return m.eval(), (1, 12, 12)


def build_mlp_gelu():
    torch.manual_seed(2)
    return MLPGelu().eval(), (16,)


def build_mlp_misc():
    torch.manual_seed(3)
    return MLPMisc().eval(), (10,)


MODELS = {
    "cnn": build_cnn,
    "mlp_gelu": build_mlp_gelu,
    "mlp_misc": build_mlp_misc,
}

INPUT_SEEDS = {"cnn": 101, "mlp_gelu": 102, "mlp_misc": 103}

# name suffix -> (dynamo, opset, dynamic batch)
VARIANTS = {
    "legacy13_dyn": (False, 13, True),
    "legacy17_b1": (False, 17, False),
    "dynamo18_dyn": (True, 18, True),
    "dynamo21_b1": (True, 21, False),
}


def export(model, x, path, dynamo, opset, dynamic):
    kw = dict(input_names=["input"], output_names=["output"], opset_version=opset)
    if dynamo:
        kw["dynamo"] = True
        kw["verbose"] = False
        kw["external_data"] = False
        if dynamic:
            kw["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch")}}
    else:
        kw["dynamo"] = False
        if dynamic:
            kw["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    torch.onnx.export(model, (x,), path, **kw)


def check(model, path, x, dynamic):
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ext = [t.name for t in m.graph.initializer
           if t.data_location == onnx.TensorProto.EXTERNAL]
    assert not ext, f"{path}: external data for {ext}"
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    xs = [x]
    if dynamic:  # also try another batch size
        g = torch.Generator().manual_seed(123)
        xs.append(torch.randn((5,) + tuple(x.shape[1:]), generator=g))
    diffs = []
    for xi in xs:
        with torch.no_grad():
            ref = model(xi).numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: xi.numpy()})[0]
        assert got.shape == ref.shape, (got.shape, ref.shape)
        diffs.append(float(np.abs(got - ref).max()))
    return max(diffs), m


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=here)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)

    failures = []
    for name, build in MODELS.items():
        model, in_shape = build()
        rng = np.random.default_rng(INPUT_SEEDS[name])
        sample = rng.standard_normal((BATCH,) + in_shape).astype(np.float32)
        np.save(os.path.join(args.out, f"{name}.input.npy"), sample)
        x_dyn = torch.from_numpy(sample)
        x_b1 = x_dyn[:1].clone()

        for suffix, (dynamo, opset, dynamic) in VARIANTS.items():
            path = os.path.join(args.out, f"{name}_{suffix}.onnx")
            x = x_dyn if dynamic else x_b1
            try:
                export(model, x, path, dynamo, opset, dynamic)
            except Exception as e:  # report and skip, never work around
                msg = f"{type(e).__name__}: {e}".splitlines()[0]
                print(f"FAILED export {os.path.basename(path)}: {msg}")
                failures.append((path, msg))
                if os.path.exists(path):
                    os.remove(path)
                continue
            diff, m = check(model, path, x, dynamic)
            ops = sorted({n.op_type for n in m.graph.node})
            opsets = {o.domain or "ai.onnx": o.version for o in m.opset_import}
            ins = [(i.name, [d.dim_param or d.dim_value
                             for d in i.type.tensor_type.shape.dim])
                   for i in m.graph.input]
            print(f"{os.path.basename(path)}: {os.path.getsize(path)} B, "
                  f"opsets {opsets}, inputs {ins}, max|ort-torch| {diff:.2e}\n"
                  f"    ops {ops}")
            if diff > TOL:
                failures.append((path, f"max abs diff {diff} > {TOL}"))

    # No external-data side files may be left behind.
    stray = [f for f in glob.glob(os.path.join(args.out, "*"))
             if f.endswith(".data") or f.endswith(".onnx_data")]
    for f in stray:
        print(f"removing stray external data file {f}")
        os.remove(f)

    if failures:
        print("\nFAILURES:")
        for path, msg in failures:
            print(f"  {os.path.basename(path)}: {msg}")
        sys.exit(1)


if __name__ == "__main__":
    main()
