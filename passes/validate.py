"""validate: checks a finished ckks program against its parameters (a checking pass: it changes
nothing).

Checks: one ``ckks.params`` op, first; every ciphertext's level within the chain and its slots
N/2; products, linear layers and decryption get relinearized (size 2) operands; every rescale divides by the prime of its level; every value x scale inside the modulus left
at its level (from calibrated ranges, when known); linear-layer constants present with the right
shapes; in the slots layout, plaintext vectors present with a period that divides the slots and
every rotation step among the Galois keys (``galois_steps``) when they are set; the batch layout
never rotates.

Assumes: ckks IR after select-parameters.
Guarantees: returns the graph unchanged, or raises ParameterError naming the op at fault.
"""
from __future__ import annotations

from hecc.errors import ParameterError
from hecc.ir import CipherType, Graph, print_op, value_names
from hecc.params import data_primes, modulus_bits_at, needed_bits

NAME = "validate"
NEEDS_SIZE_2 = {"ckks.linear", "ckks.mul", "ckks.matmul", "ckks.square", "ckks.decrypt", "ckks.rescale", "ckks.rotate",
                "ckks.mul_plain", "ckks.add_plain", "ckks.extract"}


def run(graph: Graph, options: dict | None = None) -> Graph:
    params = [op for op in graph.ops if op.name == "ckks.params"]
    if len(params) != 1 or graph.ops[0] is not params[0]:
        raise ParameterError("a ckks program needs exactly one ckks.params op, first "
                             "(run select-parameters)")
    n = params[0].attrs["poly_modulus_degree"]
    per_ct = params[0].attrs.get("inputs_per_ciphertext", 1)
    if not isinstance(per_ct, int) or per_ct < 1 or (n // 2) % per_ct:
        raise ParameterError(f"inputs_per_ciphertext {per_ct!r} must be a positive divisor of the {n // 2} slots")
    width = n // 2 // per_ct  # the slots of one input's layout
    chain = params[0].attrs["coeff_modulus_bits"]
    depth = len(data_primes(chain)) - 1
    max_abs = graph.meta.get("max_abs", {})
    names = value_names(graph.ops)  # an op is printed only to name it in an error
    for op in graph.ops:
        def fail(why):
            raise ParameterError(f"{why}\n  {print_op(op, names)}")
        for v in op.results:
            t = v.type
            if not isinstance(t, CipherType):
                continue
            if t.level > depth:
                fail(f"level {t.level} is below the last of the {depth + 1} levels of the chain {chain}")
            if t.slots != n // 2:
                fail(f"slots {t.slots} do not match N/2 = {n // 2}")
            if v in max_abs:
                need = needed_bits(t.scale_bits, max_abs[v])
                have = modulus_bits_at(chain, t.level)
                if need > have:
                    fail(f"overflow: values up to {max_abs[v]:.3g} at scale 2^{t.scale_bits} need "
                         f"{need:.1f} bits, but level {t.level} has a {have}-bit modulus")
        if op.name in NEEDS_SIZE_2 and any(v.type.size != 2 for v in op.operands):
            fail(f"{op.name} needs relinearized (size 2) operands (run insert-relinearize)")
        if op.name in ("ckks.add", "ckks.sub", "ckks.mul", "ckks.matmul", "ckks.concat"):
            kinds = [v.type for v in op.operands]
            if len({t.level for t in kinds}) > 1:
                fail(f"operands at levels {sorted({t.level for t in kinds})} (run align-levels)")
            if op.name not in ("ckks.mul", "ckks.matmul") and len({(t.scale_bits, t.size) for t in kinds}) > 1:
                fail(f"operands with scales {[t.scale_bits for t in kinds]} and sizes "
                     f"{[t.size for t in kinds]} (run align-levels and insert-relinearize)")
        if op.name == "ckks.relinearize" and op.operands[0].type.size != 3:
            fail("relinearize takes a size-3 ciphertext")
        if op.name == "ckks.rescale":
            level = op.operands[0].type.level
            prime = chain[-2 - level]
            if op.attrs["bits"] != prime:
                fail(f"rescale by {op.attrs['bits']} bits at level {level}, but that level's prime "
                     f"has {prime} bits")
        if op.name == "ckks.rotate":
            if params[0].attrs.get("layout") != "slots":
                fail("the batch layout has no rotations")
            steps = params[0].attrs.get("galois_steps", [])
            if steps and op.attrs["step"] not in steps:
                fail(f"rotation by {op.attrs['step']} has no Galois key (keys: {steps})")
        if op.name in ("ckks.mul_plain", "ckks.add_plain"):
            table = graph.constants.get(op.attrs["plain"])
            count = op.operands[0].type.count
            if (table is None or table.ndim != 2 or table.shape[1] == 0 or width % table.shape[1]
                    or (table.shape[0] != 1 and op.attrs.get("row", 0) + count > table.shape[0])):
                fail(f"plaintext {op.attrs['plain']!r} must be a stored array with rows "
                     f"{op.attrs.get('row', 0)}..{op.attrs.get('row', 0) + count - 1} (or one row) whose "
                     f"length divides {width}")
        for attr in ("layout", "checks_interval"):
            name = op.attrs.get(attr) if op.name in ("ckks.decrypt", "ckks.add_plain") else None
            if name:
                slots = op.operands[0].type.count * width
                table = graph.constants.get(name)
                if (table is None or table.ndim != 1 or table.dtype.kind not in "iu"
                        or (table.size and (table.min() < 0 or table.max() >= slots))
                        or (attr == "layout" and table.size != op.result.type.size)):
                    fail(f"{attr} {name!r} must be a stored array of slot numbers below {slots}"
                         + (f", one per element ({op.result.type.size})" if attr == "layout" else ""))
        if op.name == "ckks.linear":
            matrix = graph.constants.get(op.attrs["matrix"])
            rows, cols = op.result.type.count, op.operands[0].type.count
            if op.attrs.get("index"):
                index = graph.constants.get(op.attrs["index"])
                if (matrix is None or index is None or matrix.ndim != 1 or index.shape != (2, matrix.size)
                        or index.dtype.kind not in "iu" or (index.size and (index.min() < 0 or index[0].max() >= rows
                                                                            or index[1].max() >= cols))):
                    fail(f"sparse matrix {op.attrs['matrix']!r} needs a vector of weights and an index "
                         f"{op.attrs['index']!r} of their rows (below {rows}) and columns (below {cols})")
            elif matrix is None or (matrix.shape != (rows, cols) and not (rows == cols and matrix.shape == (rows,))):
                fail(f"matrix {op.attrs['matrix']!r} must be a stored {rows}x{cols} array (or, for a "
                     f"diagonal map, {rows} values)")
            bias = op.attrs.get("bias", "")
            if bias and (bias not in graph.constants or graph.constants[bias].shape != (rows,)):
                fail(f"bias {bias!r} must be a stored array of {rows} values")
    return graph
