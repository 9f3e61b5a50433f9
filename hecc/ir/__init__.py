"""hecc's typed IR: types, the op table, graphs, text form and verifier."""
from . import ckks_ops, tensor_ops  # noqa: F401  (register the hecc, tensor and ckks dialects)
from .graph import Graph, Op, Value
from .ops import OPS, OpDef
from .parser import parse
from .printer import print_graph, print_op, value_names
from .types import CipherType, PlainType, TensorType
from .verifier import verify

__all__ = ["Graph", "Op", "Value", "OPS", "OpDef", "parse", "print_graph", "print_op", "value_names",
           "CipherType", "PlainType", "TensorType", "verify"]
