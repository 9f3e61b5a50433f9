"""Pictures of a program: the IR graph as SVG (nodes labelled with op, level and scale) and the
level and scale of every ciphertext along the program as a PNG plot."""
from __future__ import annotations

import html

import networkx as nx

from .ir import CipherType, Graph

BOX_W, BOX_H, GAP_X, GAP_Y = 210, 46, 40, 26
COLORS = {"hecc": "#e8e8e8", "tensor": "#dbe9f6", "ckks": "#fde9c9"}


def _label(op) -> tuple[str, str]:
    name = op.name.split(".", 1)[1]
    if op.name == "tensor.constant":
        return name, op.attrs["name"]
    if op.name == "ckks.params":
        return name, f"N={op.attrs['poly_modulus_degree']} {op.attrs['coeff_modulus_bits']}"
    t = op.results[0].type if op.results else op.operands[0].type
    if isinstance(t, CipherType):
        size = ", size 3" if t.size == 3 else ""
        return name, f"{'x'.join(map(str, t.shape)) or 'scalar'}  level {t.level}  2^{t.scale_bits:g}{size}"
    detail = op.attrs.get("kind") or op.attrs.get("name") or "x".join(map(str, getattr(t, "shape", ())))
    return name, str(detail)


def graph_svg(graph: Graph, include_constants: bool = False) -> str:
    """The data-flow graph, one column per topological generation."""
    ops = [op for op in graph.ops if include_constants or op.name != "tensor.constant"]
    g = nx.DiGraph()
    index = {id(op): i for i, op in enumerate(ops)}
    g.add_nodes_from(range(len(ops)))
    for op in ops:
        for v in op.operands:
            if v.producer is not None and id(v.producer) in index:
                g.add_edge(index[id(v.producer)], index[id(op)])
    position = {}
    generations = list(nx.topological_generations(g))
    for x, generation in enumerate(generations):
        for y, node in enumerate(sorted(generation)):
            position[node] = (20 + x * (BOX_W + GAP_X), 20 + y * (BOX_H + GAP_Y))
    width = 40 + len(generations) * (BOX_W + GAP_X)
    height = 40 + max(len(gen) for gen in generations) * (BOX_H + GAP_Y)
    out = ["<!-- drawn by hecc -->", f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>']
    for a, b in g.edges:
        (x1, y1), (x2, y2) = position[a], position[b]
        out.append(f'<line x1="{x1 + BOX_W}" y1="{y1 + BOX_H / 2}" x2="{x2}" y2="{y2 + BOX_H / 2}" '
                   'stroke="#777" stroke-width="1.2"/>')
    for node, op in enumerate(ops):
        x, y = position[node]
        title, detail = _label(op)
        fill = COLORS.get(op.name.split(".")[0], "white")
        out.append(f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" stroke="#333"/>')
        out.append(f'<text x="{x + 8}" y="{y + 18}" font-weight="bold">{html.escape(title)}</text>')
        out.append(f'<text x="{x + 8}" y="{y + 36}">{html.escape(detail[:32])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def levels_png(graph: Graph, out, title: str = "") -> None:
    """Level and scale (log2) of each ciphertext value, in program order, as PNG into ``out`` (a
    path or a binary file), marked as drawn by hecc."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points = [(i, op.name.split(".")[1], v.type) for i, op in enumerate(graph.ops) for v in op.results
              if isinstance(v.type, CipherType)]
    if not points:
        raise ValueError("the program has no ciphertexts to plot")
    xs = [p[0] for p in points]
    fig, left = plt.subplots(figsize=(10, 4.5), dpi=110)
    left.step(xs, [p[2].level for p in points], where="post", color="#1f77b4", label="level (primes dropped)")
    left.set_xlabel("op index in the program")
    left.set_ylabel("level", color="#1f77b4")
    left.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    right = left.twinx()
    right.plot(xs, [p[2].scale_bits for p in points], "o-", color="#d62728", markersize=3, label="scale (log2)")
    right.set_ylabel("scale bits (log2 of the CKKS scale)", color="#d62728")
    for x, name, _ in points:
        if name in ("rescale", "relinearize"):
            left.axvline(x, color="#bbb", linewidth=0.5, zorder=0)
    left.set_title(title or "level and scale along the program (grey: rescale / relinearize)")
    fig.tight_layout()
    fig.savefig(out, format="png", metadata={"Software": "hecc"})
    plt.close(fig)
