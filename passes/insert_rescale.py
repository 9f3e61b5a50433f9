"""insert-rescale: places rescales by the waterline rule (lazy, EVA-style).

A ciphertext-ciphertext product (mul, square) doubles the scale; right after it one rescale by a
prime of (scale - waterline) bits brings it back to the waterline 2^scale_bits. Multiplications by
plaintext weights (``ckks.linear``) are never rescaled on their own: their products are summed at
scale 2^(waterline + weight_scale) and that sum is rescaled only as part of the next product's
rescale. So each path has one rescale per multiplicative level, never one per multiply.
In the slots layout a linear map is a sum of ``ckks.mul_plain`` by weight vectors, rotations and
sums. Its result enters the next linear map (a ``mul_plain``, directly or through rotations) at
the waterline, so it is rescaled there; a product takes it unrescaled when one prime then brings
the product back to the waterline (weights at 2^w and the waterline 2^s with s + 2w <= 60: one
prime per linear layer and activation product instead of two, which halves the chain and quarters
the cost of every key switch); decryption takes it as it is.
With ``rescale = "eager"`` (the baseline) every plaintext product inside a linear op is rescaled
too (``rescale_terms``), as a hand-written program that rescales after every multiply would.

SEAL divides by one prime per level, so all rescales leaving a level must divide by the same number
of bits. The prime of a level is the largest excess among its products; a product whose excess is
smaller first multiplies one operand by 1 encoded at 2^(difference) (exact, no level), so it too
lands exactly on the waterline.

Assumes: ckks IR from lower-to-ckks (no rescale yet); ``graph.meta["max_abs"]`` if present.
Guarantees: every mul/square result is rescaled (in steps of at most 60 bits) to the waterline;
single-step rescales from one level all divide by the same prime size; rescale values inherit
max_abs.
Options: scale_bits (26), rescale ("lazy" | "eager").
"""
from __future__ import annotations


from hecc.errors import PassError
from hecc.ir import Graph, Op
from hecc.rewrite import is_slots_layout, retype, retype_op, scale_up

NAME = "insert-rescale"
# slots-layout ops a linear map is made of: they keep the scale of the weighted sum
LINEAR_SLOT_OPS = {"ckks.mul_plain", "ckks.add", "ckks.sub", "ckks.rotate", "ckks.add_plain"}
MAX_PRIME_BITS = 60
PRODUCTS = ("ckks.mul", "ckks.square", "ckks.matmul")  # ciphertext products: rescaled right after
MIN_RESCALE_BITS = 20  # a linear map's result this close to the waterline keeps its scale (no prime that small)


def run(graph: Graph, options: dict | None = None) -> Graph:
    options = dict(options or {})
    waterline = float(options.get("scale_bits", 26))
    mode = options.get("rescale", "lazy")
    if mode not in ("lazy", "eager"):
        raise PassError(f"rescale mode must be lazy or eager, got {mode!r}")
    if mode == "eager":
        for op in graph.ops:
            if op.name == "ckks.linear":
                op.attrs["rescale_terms"] = True
        retype(graph)
    max_abs = graph.meta.setdefault("max_abs", {})
    users = graph.users()
    slots = is_slots_layout(graph)
    new_ops: list[Op] = []
    for op in graph.ops:
        new_ops.append(op)
        retype_op(op)  # operands may have been rescaled above
        if op.name in PRODUCTS:
            value = op.result
            rescaled = users.get(value, [])
        elif slots and op.name in LINEAR_SLOT_OPS:
            value = op.result
            rescaled = _needs_waterline(value, users, waterline)
            if not rescaled or value.type.scale_bits - waterline < MIN_RESCALE_BITS:
                continue  # a few bits above the waterline: the next rescale takes them along
        else:
            continue
        excess = value.type.scale_bits - waterline
        last = value
        while excess > 0:
            bits = int(min(excess, MAX_PRIME_BITS))
            if bits != min(excess, MAX_PRIME_BITS):
                raise PassError(f"scale 2^{value.type.scale_bits} is not a whole number of bits above "
                                f"the waterline 2^{waterline}")
            rescale = Op("ckks.rescale", [last], [last.type.but(level=last.type.level + 1,
                                                               scale_bits=last.type.scale_bits - bits)],
                         {"bits": bits})
            new_ops.append(rescale)
            if last in max_abs:
                max_abs[rescale.result] = max_abs[last]
            last, excess = rescale.result, excess - bits
        for user in rescaled:
            user.operands = [last if v is value else v for v in user.operands]
    graph.ops = new_ops
    retype(graph)
    _one_prime_per_level(graph, max_abs)
    return graph


def _enters_map(user: Op, users: dict) -> bool:
    """Whether ``user`` starts the next linear map on its operand: a product by a weight vector,
    or a rotation (a baby step) whose result, through further rotations, is one."""
    if user.name == "ckks.mul_plain":
        return True
    return user.name == "ckks.rotate" and any(_enters_map(u, users) for u in users.get(user.result, []))


def _needs_waterline(value, users: dict, waterline: float) -> list[Op]:
    """The users of a slots-layout linear map's result that must get it rescaled: the next
    linear maps, products that one prime could not bring back to the waterline, and anything
    else (decryption) when the result is more than a merged weight scale above the waterline
    (it would need a bottom prime past 60 bits)."""
    need = []
    for user in users.get(value, []):
        if user.name in PRODUCTS:
            scale = (2 * value.type.scale_bits if user.name == "ckks.square"
                     else sum(v.type.scale_bits for v in user.operands))
            if scale - waterline > MAX_PRIME_BITS:
                need.append(user)
        elif _enters_map(user, users) or (
                user.name not in LINEAR_SLOT_OPS and value.type.scale_bits - waterline > (MAX_PRIME_BITS - waterline) // 2):
            need.append(user)
    return need


def _one_prime_per_level(graph: Graph, max_abs: dict) -> None:
    """Rescales leaving one level all divide by its widest one's prime: a narrower one first
    multiplies by 1 encoded at 2^(difference), exact and at no level (a product: one operand,
    before the product; a linear map's result: the result itself)."""
    single = [op for op in graph.ops if op.name == "ckks.rescale" and op.operands[0].producer is not None
              and op.operands[0].producer.name != "ckks.rescale"]
    widest: dict[int, int] = {}
    for op in single:
        level = op.operands[0].type.level
        widest[level] = max(widest.get(level, 0), op.attrs["bits"])
    narrow = {id(op): widest[op.operands[0].type.level] - op.attrs["bits"] for op in single
              if op.attrs["bits"] < widest[op.operands[0].type.level]}
    products = {id(op.operands[0].producer): op for op in single
                if id(op) in narrow and op.operands[0].producer.name in PRODUCTS}
    new_ops: list[Op] = []

    def up(x, delta):
        name = graph.unique_constant_name(f"identity{x.type.count}")
        if f"identity{x.type.count}" in graph.constants:
            name = f"identity{x.type.count}"
        op = scale_up(graph, x, int(delta), name)
        new_ops.append(op)
        if x in max_abs:
            max_abs[op.result] = max_abs[x]
        return op.result
    for op in graph.ops:
        if id(op) in products:
            rescale = products[id(op)]
            delta = narrow[id(rescale)]
            x = op.operands[0]
            scaled = up(x, delta)
            other = x if op.name == "ckks.square" else op.operands[1]
            op.name = "ckks.matmul" if op.name == "ckks.matmul" else "ckks.mul"
            op.operands = [scaled, other]
            rescale.attrs["bits"] += int(delta)
        elif id(op) in narrow and op.operands[0].producer.name not in PRODUCTS:
            op.operands = [up(op.operands[0], narrow[id(op)])]
            op.attrs["bits"] += int(narrow[id(op)])
        new_ops.append(op)
    graph.ops = new_ops
    retype(graph)
