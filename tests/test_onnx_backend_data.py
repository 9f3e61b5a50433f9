"""Differential test on the ONNX package's own backend test data: every case hecc supports must
equal the stored outputs (computed by PyTorch/onnxruntime) to 1e-5 relative; every other case must
be refused with a typed hecc error, never a crash."""
import glob
import os

import onnx
import pytest
from onnx import numpy_helper

import hecc
from conftest import assert_close

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
CASES = sorted(glob.glob(os.path.join(DATA, "pytorch-converted", "test_*")) +
               glob.glob(os.path.join(DATA, "pytorch-operator", "test_*")))

# Cases hecc must compile and match; everything else in the two folders must be refused cleanly.
SUPPORTED = {
    "test_AvgPool1d", "test_AvgPool1d_stride", "test_AvgPool2d", "test_AvgPool2d_stride", "test_AvgPool3d",
    "test_AvgPool3d_stride", "test_AvgPool3d_stride1_pad0_gpu_input", "test_BatchNorm1d_3d_input_eval",
    "test_BatchNorm2d_eval", "test_BatchNorm2d_momentum_eval", "test_BatchNorm3d_eval",
    "test_BatchNorm3d_momentum_eval", "test_ConstantPad2d", "test_Conv1d", "test_Conv1d_dilated",
    "test_Conv1d_groups", "test_Conv1d_pad1", "test_Conv1d_pad1size1", "test_Conv1d_pad2",
    "test_Conv1d_pad2size1", "test_Conv1d_stride", "test_Conv2d", "test_Conv2d_depthwise",
    "test_Conv2d_depthwise_padded", "test_Conv2d_depthwise_strided",
    "test_Conv2d_depthwise_with_multiplier", "test_Conv2d_dilated", "test_Conv2d_groups",
    "test_Conv2d_groups_thnn", "test_Conv2d_no_bias", "test_Conv2d_padding", "test_Conv2d_strided",
    "test_ELU", "test_LeakyReLU", "test_LeakyReLU_with_negval", "test_Linear", "test_Linear_no_bias",
    "test_LogSoftmax", "test_PReLU_1d", "test_PReLU_1d_multiparam", "test_PReLU_2d",
    "test_PReLU_2d_multiparam", "test_PReLU_3d", "test_PReLU_3d_multiparam", "test_PixelShuffle", "test_ReLU",
    "test_Sigmoid", "test_Softmax", "test_Softmin", "test_Softplus", "test_Tanh", "test_ZeroPad2d",
    "test_log_softmax_dim3", "test_log_softmax_lastdim", "test_softmax_functional_dim3",
    "test_softmax_lastdim",
    "test_operator_add_broadcast", "test_operator_add_size1_broadcast",
    "test_operator_add_size1_right_broadcast", "test_operator_add_size1_singleton_broadcast",
    "test_operator_addconstant", "test_operator_addmm", "test_operator_basic",
    "test_operator_concat2", "test_operator_conv", "test_operator_flatten", "test_operator_index",
    "test_operator_mm",
    "test_operator_params", "test_operator_permute2", "test_operator_reduced_mean",
    "test_operator_reduced_mean_keepdim", "test_operator_reduced_sum",
    "test_operator_reduced_sum_keepdim", "test_operator_symbolic_override_nested", "test_operator_view",
}


def _load_case(case):
    inputs, outputs = [], []
    for dataset in sorted(glob.glob(os.path.join(case, "test_data_set_*"))):
        ins = [numpy_helper.to_array(onnx.load_tensor(f))
               for f in sorted(glob.glob(os.path.join(dataset, "input_*.pb")))]
        outs = [numpy_helper.to_array(onnx.load_tensor(f))
                for f in sorted(glob.glob(os.path.join(dataset, "output_*.pb")))]
        inputs.append(ins)
        outputs.append(outs)
    return inputs, outputs


def test_enough_supported_cases_exist():
    names = {os.path.basename(c) for c in CASES}
    assert len(SUPPORTED & names) >= 30, sorted(SUPPORTED - names)


@pytest.mark.parametrize("case", CASES, ids=os.path.basename)
def test_backend_case(case):
    name = os.path.basename(case)
    model = os.path.join(case, "model.onnx")
    if name not in SUPPORTED:
        with pytest.raises(hecc.UserError):
            prog = hecc.compile(model, layout="batch")
            for ins, _ in zip(*_load_case(case)):
                prog.run(dict(zip([n for n, _ in prog.inputs], ins)))
        return
    prog = hecc.compile(model, layout="batch")
    names = [n for n, _ in prog.inputs]
    for ins, outs in zip(*_load_case(case)):
        got = prog.run(dict(zip(names, ins)))
        assert len(got) == len(outs)
        for (out_name, y), expected in zip(got.items(), outs):
            assert_close(y, expected, 1e-5, f"{name} {out_name}")
