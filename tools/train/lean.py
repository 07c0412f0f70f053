"""Post-export graph clean-up: fewer nodes, same function.

torch.onnx.export leaves Constant nodes, computations on weights only (e.g. A = -exp(A_log)) and
repeated shape look-ups (Shape -> Gather) in the graph. For models this small every node costs
per-call overhead in the runtime, so:
1. Constant nodes become initializers; initializers with equal values are merged.
2. Nodes whose inputs are all initializers are evaluated once with numpy (a small op set).
3. Common sub-expressions (same op, inputs and attributes) are merged.
4. Unused initializers are dropped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _unsqueeze(x, axes):
    for a in sorted(int(v) for v in axes):
        x = np.expand_dims(x, a if a >= 0 else a + x.ndim + 1)
    return x


FOLD = {
    "Exp": lambda n, a: np.exp(a[0]),
    "Neg": lambda n, a: -a[0],
    "Sqrt": lambda n, a: np.sqrt(a[0]),
    "Add": lambda n, a: a[0] + a[1],
    "Sub": lambda n, a: a[0] - a[1],
    "Mul": lambda n, a: a[0] * a[1],
    "Div": lambda n, a: (a[0] / a[1]).astype(a[0].dtype),
    "Transpose": lambda n, a: np.transpose(a[0], _attr(n, "perm")),
    "Unsqueeze": lambda n, a: _unsqueeze(a[0], a[1]),
    "Reshape": lambda n, a: a[0].reshape([d if d != 0 else a[0].shape[i] for i, d in enumerate(a[1])]),
    "Identity": lambda n, a: a[0],
}


def lean(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.output) == 1 and n.attribute[0].name == "value":
            inits[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        else:
            nodes.append(n)

    # Fold weight-only computations, in topological order.
    kept = []
    for n in nodes:
        if n.op_type in FOLD and n.input and all(i in inits for i in n.input) and len(n.output) == 1:
            args = [inits[i] for i in n.input]
            out = np.asarray(FOLD[n.op_type](n, args))
            if out.dtype == np.float64:
                out = out.astype(np.float32)
            inits[n.output[0]] = out
        else:
            kept.append(n)

    # Merge equal initializers (small ones only: large weights are never duplicated by the exporter).
    rename: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    graph_outputs = {o.name for o in g.output}
    for name, arr in inits.items():
        if arr.size > 64 or name in graph_outputs:
            continue
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in seen:
            rename[name] = seen[key]
        else:
            seen[key] = name

    # Common sub-expression elimination.
    final = []
    signature: dict[tuple, list[str]] = {}
    for n in kept:
        inputs = [rename.get(i, i) for i in n.input]
        del n.input[:]
        n.input.extend(inputs)
        key = (n.op_type, n.domain, tuple(inputs), tuple(a.SerializeToString() for a in n.attribute))
        if key in signature and not any(o in graph_outputs for o in n.output):
            for old, new in zip(n.output, signature[key]):
                rename[old] = new
            continue
        signature[key] = list(n.output)
        final.append(n)

    used = {i for n in final for i in n.input} | graph_outputs
    del g.node[:]
    g.node.extend(final)
    del g.initializer[:]
    g.initializer.extend(numpy_helper.from_array(np.asarray(a), name) for name, a in inits.items() if name in used)
    onnx.checker.check_model(model)
    return model


def lean_file(path) -> None:
    model = onnx.load(str(path))
    onnx.save(lean(model), str(path))
