"""Models exported by both PyTorch exporters (legacy and dynamo, opsets 13 to 21, symbolic and fixed
batch; see tests/data/torch/make_fixtures.py) compile, and the reference backend equals
onnxruntime on them."""
import glob
import os
import re

import numpy as np
import onnxruntime as ort
import pytest

import hecc
from conftest import assert_close

DATA = os.path.join(os.path.dirname(__file__), "data", "torch")
MODELS = sorted(glob.glob(os.path.join(DATA, "*.onnx")))


def test_fixtures_cover_both_exporters_and_opsets():
    names = {os.path.basename(m) for m in MODELS}
    for kind in ("legacy13_dyn", "legacy17_b1", "dynamo18_dyn", "dynamo21_b1"):
        assert {f"{m}_{kind}.onnx" for m in ("cnn", "mlp_gelu", "mlp_misc")} <= names


@pytest.mark.parametrize("path", MODELS, ids=lambda p: os.path.basename(p)[:-5])
def test_torch_export_matches_onnxruntime(path):
    model_name = re.match(r"(cnn|mlp_gelu|mlp_misc)_", os.path.basename(path)).group(1)
    x = np.load(os.path.join(DATA, f"{model_name}.input.npy"))
    prog = hecc.compile(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    if prog.inputs[0][1][0] == 1 and session.get_inputs()[0].shape[0] == 1:
        expected = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    else:
        expected = session.run(None, {"input": x})[0]
    got = prog.run(x)["output"]
    assert_close(got, expected, 1e-5, os.path.basename(path))
