"""Itera-Lite as an ONNX graph of onnxruntime's fused CPU operators, built from the trained weights.

For a model this small, a decode step costs about one kernel launch per graph node, whatever the node
computes; torch.onnx.export of the chunked SSD form gives ~100 nodes per layer. onnxruntime (>= 1.30,
CPU) has contrib operators (domain com.microsoft) made for exactly this architecture, so the graph is
written by hand with onnx.helper, 18 nodes per layer, and serves T = 1 steps and T > 1 prefills alike:

  SkipSimplifiedLayerNormalization  residual add + RMSNorm in one kernel (SimplifiedLayerNormalization,
                                    ONNX domain, for the first norm, which has no residual to add)
  CausalConvWithState               depthwise causal conv over (x, B, C) continued from the carried
                                    state, SiLU fused; state [batch, d_conv-1, conv_dim] (channels_last)
  LinearAttentionGate               g = A * softplus(dt + dt_bias): the log-decay of each head
  LinearAttention (gated)           S = exp(g) S + k v^T, y = q^T S for all T in one op; with q = C and
                                    k = B (one group, shared by the heads) and v = dt * x, it is the
                                    Mamba-2 selective scan; state [batch, n_heads, d_state, head_dim]
  QuickGelu (alpha = 1)             SiLU(z) in one kernel (x * sigmoid(x))
  MoE                               top-k router softmax renormalised over the chosen k, SiLU experts;
                                    every expert is an initializer of the op

The graph runs on onnxruntime >= 1.30 CPU only (other runtimes do not have these operators).
onnx.checker knows no contrib operator, so check() checks the rest and the callers check the function
itself by running the graph in onnxruntime against PyTorch (tools/train/ort_check.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model import IteraLite

MS = "com.microsoft"
OPSET = 17
OPSET_IMPORTS = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)]
IR_VERSION = 8  # what Debian's onnx 1.12 writes and checks; onnxruntime 1.30 reads it
EPS = 1e-5  # RMSNorm epsilon of model.RMSNorm
CONTRIB_OPS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "CausalConvWithState",
               "LinearAttentionGate", "LinearAttention", "QuickGelu", "MoE")


class _Builder:
    """Collects nodes and initializers; node names follow the PyTorch module path (/model/blocks.N/...)."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def weight(self, name: str, value) -> str:
        arr = np.asarray(value.detach().numpy() if hasattr(value, "detach") else value)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, name: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> list[str]:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs


def _numpy(t) -> np.ndarray:
    return t.detach().numpy().astype(np.float32)


def _mixer(g: _Builder, blk, i: int, h: str, conv_in: str, rec_in: str) -> str:
    """Selective SSM of block i on the normalised input h; returns the mixer output's name."""
    m, c = blk.mixer, blk.mixer.c
    w, p = f"model.blocks.{i}.mixer.", f"/model/blocks.{i}/mixer/"
    t = f"blocks.{i}.mixer."
    heads, n, d_inner, conv_dim = c.n_heads, c.d_state, c.d_inner, c.conv_dim
    g.node("MatMul", p + "in_proj", [h, g.weight(w + "in_proj.weight_t", _numpy(m.in_proj.weight).T)], [t + "zxbcdt"])
    split = g.weight(w + "split_zxbcdt", np.array([d_inner, conv_dim, heads], np.int64))
    z, xbc, dt = g.node("Split", p + "split", [t + "zxbcdt", split], [t + "z", t + "xbc", t + "dt"], axis=-1)
    conv = [xbc, g.weight(w + "conv.weight", m.conv.weight), g.weight(w + "conv.bias", m.conv.bias), conv_in]
    conv_out = f"present.{i}.conv_state"
    g.node("CausalConvWithState", p + "conv", conv, [t + "xbc_conv", conv_out], MS, activation="silu", channels_last=1)
    split = g.weight(w + "split_xbc", np.array([d_inner, n, n], np.int64))
    x, bm, cm = g.node("Split", p + "split_xbc", [t + "xbc_conv", split], [t + "x", t + "B", t + "C"], axis=-1)
    a = -np.exp(_numpy(m.A_log))  # A = -exp(A_log) < 0, folded here once
    gate = g.node("LinearAttentionGate", p + "gate", [dt, g.weight(w + "dt_bias", m.dt_bias), g.weight(w + "A", a)],
                  [t + "log_decay"], MS)[0]
    # The input term dt * x B^T goes in as k = B (one group, shared by the heads) and v = dt * x, with
    # dt = g / A spread over each head's head_dim values by one MatMul (1/A folded into its weights).
    spread = np.zeros((heads, d_inner), np.float32)
    for k in range(heads):
        spread[k, k * c.head_dim : (k + 1) * c.head_dim] = 1.0 / a[k]
    g.node("MatMul", p + "dt_spread", [gate, g.weight(w + "dt_spread", spread)], [t + "dt_values"])
    g.node("Mul", p + "v", [x, t + "dt_values"], [t + "v"])
    rec_out = f"present.{i}.recurrent_state"
    g.node("LinearAttention", p + "scan", [cm, bm, t + "v", rec_in, gate], [t + "y", rec_out], MS,
           update_rule="gated", q_num_heads=1, kv_num_heads=heads, scale=1.0)
    g.node("Mul", p + "d_skip", [x, g.weight(w + "D", np.repeat(_numpy(m.D), c.head_dim))], [t + "dx"])
    g.node("Add", p + "y_skip", [t + "y", t + "dx"], [t + "y_d"])
    g.node("QuickGelu", p + "silu_z", [z], [t + "silu_z"], MS, alpha=1.0)
    g.node("Mul", p + "gate_z", [t + "y_d", t + "silu_z"], [t + "y_gated"])
    out = g.weight(w + "out_proj.weight_t", _numpy(m.out_proj.weight).T)
    return g.node("MatMul", p + "out_proj", [t + "y_gated", out], [t + "out"])[0]


def _moe(g: _Builder, blk, i: int, h: str) -> str:
    """MoE feed-forward of block i on the normalised input h (3-D in, 3-D out; router logits 2-D)."""
    f, c = blk.moe, blk.moe.c
    w, p, t = f"model.blocks.{i}.moe.", f"/model/blocks.{i}/moe/", f"blocks.{i}.moe."
    e, d_ff, d = c.n_experts, c.d_ff, c.d_model
    g.node("MatMul", p + "router", [h, g.weight(w + "router.weight_t", _numpy(f.router.weight).T)], [t + "logits"])
    flat = g.weight(w + "router_shape", np.array([-1, e], np.int64))
    g.node("Reshape", p + "router_rows", [t + "logits", flat], [t + "logits_2d"])
    experts = [
        g.weight(w + "fc1", _numpy(f.w1).reshape(d, e, d_ff).transpose(1, 2, 0)),  # [E, d_ff, d_model]
        g.weight(w + "fc1_bias", _numpy(f.b1).reshape(e, d_ff)),
        g.weight(w + "fc2", _numpy(f.w2).reshape(e, d_ff, d).transpose(0, 2, 1)),  # [E, d_model, d_ff]
        g.weight(w + "fc2_bias", _numpy(f.b2)),
    ]
    return g.node("MoE", p + "experts", [h, t + "logits_2d", *experts], [t + "out"], MS,
                  activation_type="silu", k=c.top_k, normalize_routing_weights=1)[0]


def _norm(g: _Builder, name: str, weight, x: str, pending: str | None, out: str) -> tuple[str, str]:
    """RMSNorm of x + pending (the residual add fused in); returns (normalised, new residual stream)."""
    scale = g.weight(name[1:].replace("/", ".") + ".weight", weight)  # /model/norm -> model.norm.weight
    if pending is None:
        g.node("SimplifiedLayerNormalization", name, [x, scale], [out], axis=-1, epsilon=EPS)
        return out, x
    g.node("SkipSimplifiedLayerNormalization", name, [x, pending, scale], [out, "", "", out + ".residual"], MS,
           epsilon=EPS)
    return out, out + ".residual"


def build_graph(model: IteraLite) -> onnx.ModelProto:
    """The step/prefill graph: input_ids [batch, sequence] + state in -> logits + state out (DESIGN.md §3)."""
    c = model.config
    g = _Builder()
    state_dims = {
        "conv_state": ["batch", c.d_conv - 1, c.conv_dim],
        "recurrent_state": ["batch", c.n_heads, c.d_state, c.head_dim],
    }
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", c.vocab_size])]
    for i in range(c.n_layers):
        for kind, dims in state_dims.items():
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, dims))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, dims))

    x = g.node("Gather", "/model/embed", [g.weight("model.embed.weight", model.embed.weight), "input_ids"], ["x.0"])[0]
    pending = None  # the last sub-layer's output, added to x by the next SkipSimplifiedLayerNormalization
    for i, blk in enumerate(model.blocks):
        h, x = _norm(g, f"/model/blocks.{i}/norm1", blk.norm1.weight, x, pending, f"blocks.{i}.norm1")
        mixed = _mixer(g, blk, i, h, f"past_key_values.{i}.conv_state", f"past_key_values.{i}.recurrent_state")
        h, x = _norm(g, f"/model/blocks.{i}/norm2", blk.norm2.weight, x, mixed, f"blocks.{i}.norm2")
        pending = _moe(g, blk, i, h)
    h, _ = _norm(g, "/model/norm", model.norm.weight, x, pending, "norm")
    # The head is tied to the embedding in PyTorch; MatMul needs it transposed, so it is stored twice.
    g.node("MatMul", "/model/head", [h, g.weight("model.head.weight_t", _numpy(model.embed.weight).T)], ["logits"])

    graph = helper.make_graph(g.nodes, "itera-lite", inputs, outputs, g.inits)
    onnx_model = helper.make_model(graph, opset_imports=OPSET_IMPORTS, producer_name="itera tools/train")
    onnx_model.ir_version = IR_VERSION
    return onnx_model


def card_notes(model: IteraLite) -> dict:
    """What the model card says about this graph (itera.json "export")."""
    c = model.config
    return {
        "builder": "tools/train/onnx_graph.py: onnx.helper graph of fused operators, from the trained weights",
        "opset_imports": {"ai.onnx": OPSET, MS: 1},
        "ir_version": IR_VERSION,
        "runtime": f"onnxruntime >= 1.30 CPU only: {', '.join(CONTRIB_OPS)} are onnxruntime contrib operators",
        "state_layout": {
            "conv_state": f"[batch, d_conv-1, conv_dim] = [batch, {c.d_conv - 1}, {c.conv_dim}] (channels last)",
            "recurrent_state": f"[batch, n_heads, d_state, head_dim] = [batch, {c.n_heads}, {c.d_state}, {c.head_dim}]",
        },
    }


def check(onnx_model: onnx.ModelProto) -> None:
    """onnx.checker on everything it knows: the graph's structure, initializers and standard operators.

    It has no schema for onnxruntime's contrib operators; for com.microsoft nodes it skips them, but
    SimplifiedLayerNormalization lives in the ONNX domain, so the check runs on a copy where that op is
    marked com.microsoft (onnxruntime's parity run checks the operators themselves).
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(onnx_model)
    for node in copy.graph.node:
        if node.domain == "" and node.op_type == "SimplifiedLayerNormalization":
            node.domain = MS
    onnx.checker.check_model(copy)
