"""The IR text form: round trip, parse errors with positions, verifier messages, types."""
import glob
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hecc.errors import ParseError, VerifyError
from hecc.ir import CipherType, PlainType, TensorType, parse, print_graph, verify

HERE = os.path.dirname(__file__)
GOLDEN = sorted(glob.glob(os.path.join(HERE, "**", "*.hir"), recursive=True))


def test_there_are_golden_files():
    assert len(GOLDEN) >= 10


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: os.path.relpath(p, HERE))
def test_golden_round_trip(path):
    with open(path) as f:
        text = f.read()
    assert print_graph(parse(text)) == text


def test_types_print_and_parse():
    text = ('%0, %1 = "ckks.test"() {} : () -> (cipher<level=3, scale=2^25.5, slots=4096, size=3>, '
            'plain<2x3, level=0, scale=2^40, slots=8>)\n'
            '%2 = "tensor.test"() {f = -1e-05, i = -3, l = [1, "a", [true, false]], n = nan, s = "q\\"\\n"} '
            ': () -> tensor<secret, i64>\n')
    g = parse(text)
    assert print_graph(g) == text
    assert g.ops[0].results[0].type == CipherType((), 3, 25.5, 4096, 3)
    assert g.ops[0].results[1].type == PlainType((2, 3), 0, 40.0, 8)
    assert g.ops[1].result.type == TensorType((), True, "i64")
    assert g.ops[1].attrs["s"] == 'q"\n'


@pytest.mark.parametrize("text, line, column, message", [
    ('%0 = "hecc.input"() {name = "x"} : () -> tensor<1x4, secret>\n%1 = "tensor.neg"(%7) {} : '
     '(tensor<1x4, secret>) -> tensor<1x4, secret>\n', 2, 19, "%7 is used before it is defined"),
    ('%0 = "hecc.input"() {name = } : () -> tensor<1x4, secret>\n', 1, 29, "unexpected }"),
    ('%0 = "hecc.input"() {} : () -> tensor<1x4, hidden>\n', 1, 44, "unexpected"),
    ('%0 = "hecc.input"() {} : () -> tensor<1x4, secret>\n%0 = "hecc.input"() {} : () -> '
     'tensor<1x4, secret>\n', 2, 1, "%0 is defined twice"),
    ('%0 = "hecc.input"() {} : () -> tensor<1x4, secret>\n"hecc.output"(%0) {} : '
     '(tensor<1x5, secret>) -> ()\n', 2, 15, "%0 has type tensor<1x4, secret>"),
    ('%0 = "hecc.input"() {} : () -> tensor<1x4, secret>\n"hecc.output"(%0', 2, 17, "end of text"),
])
def test_parse_errors_have_line_and_column(text, line, column, message):
    with pytest.raises(ParseError) as info:
        parse(text, source="t.hir")
    assert (info.value.line, info.value.column) == (line, column)
    assert message in str(info.value)
    assert str(info.value).startswith(f"t.hir:{line}:{column}: ")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_random_text_only_raises_parse_error(text):
    try:
        parse(text)
    except ParseError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 400), st.text(min_size=1, max_size=3))
def test_corrupted_golden_text_only_raises_parse_error(position, insert):
    with open(GOLDEN[0]) as f:
        text = f.read()
    position = min(position, len(text))
    try:
        parse(text[:position] + insert + text[position:])
    except ParseError:
        pass


X = '%0 = "hecc.input"() {name = "x"} : () -> tensor<1x4, secret>\n'


@pytest.mark.parametrize("body, message", [
    ('%1 = "tensor.nope"(%0) {} : (tensor<1x4, secret>) -> tensor<1x4, secret>\n', "unknown op 'tensor.nope'"),
    ('%1 = "tensor.neg"(%0) {} : (tensor<1x4, secret>) -> tensor<1x5, secret>\n',
     "result type(s) tensor<1x5, secret> do not match the inferred tensor<1x4, secret>"),
    ('%1 = "tensor.neg"(%0, %0) {} : (tensor<1x4, secret>, tensor<1x4, secret>) -> tensor<1x4, secret>\n',
     "tensor.neg takes 1 operand(s), got 2"),
    ('%1 = "tensor.pow"(%0) {} : (tensor<1x4, secret>) -> tensor<1x4, secret>\n', "needs attribute 'exponent'"),
    ('%1 = "tensor.pow"(%0) {exponent = 2.5} : (tensor<1x4, secret>) -> tensor<1x4, secret>\n',
     "attribute exponent of tensor.pow must be of kind int"),
    ('%1 = "tensor.activation"(%0) {kind = "swish"} : (tensor<1x4, secret>) -> tensor<1x4, secret>\n',
     "attribute kind of tensor.activation must be one of"),
    ('%1 = "tensor.reshape"(%0) {shape = [1, 5]} : (tensor<1x4, secret>) -> tensor<1x5, secret>\n',
     "cannot reshape (1, 4) (4 elements) to (1, 5)"),
    ('%1 = "tensor.constant"() {name = "w"} : () -> tensor<4, public>\n', "constant 'w' has no stored value"),
    ('%1 = "tensor.softmax"(%0) {axis = 1} : (tensor<1x4, secret>) -> tensor<1x4, secret>\n'
     '%2 = "tensor.neg"(%1) {} : (tensor<1x4, secret>) -> tensor<1x4, secret>\n', "uses the result of a client-side op"),
])
def test_verifier_names_the_broken_op(body, message):
    with pytest.raises(VerifyError) as info:
        verify(parse(X + body))
    assert message in str(info.value)
    assert "op #" in str(info.value)


def test_verifier_checks_constant_shapes():
    g = parse(X + '%1 = "tensor.constant"() {name = "w"} : () -> tensor<4, public>\n')
    g.constants["w"] = np.zeros(5)
    with pytest.raises(VerifyError, match=r"constant 'w' has shape \(5,\), declared \(4,\)"):
        verify(g)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), max_size=3).map(tuple), min_size=1, max_size=3))
def test_broadcast_shape_is_numpys(shapes):
    from hecc.ir.tensor_ops import broadcast_shape
    try:
        expected = np.broadcast_shapes(*shapes)
    except ValueError:
        with pytest.raises(ValueError):
            broadcast_shape(shapes)
        return
    assert broadcast_shape(shapes) == expected
