"""Per-token activation scales for ONNX Runtime's dynamic int8 graph.

    per_token(int8_in, int8_out) -> int   (DynamicQuantizeLinear nodes rewritten)

`quantize_dynamic` quantizes each MatMul's input with DynamicQuantizeLinear:
one scale for the whole tensor, every token of every text of the batch. A
transformer's tokens differ a lot in size (the [CLS] and [SEP] positions carry
far larger hidden states than words), so one scale leaves most tokens only a
few levels. This rewrite gives every token (last axis) its own scale: the
tensor is quantized symmetrically around a fixed zero point of 128 (uint8,
what ONNX Runtime's u8s8 MatMulInteger kernel takes), so the zero point stays
a scalar and only the scale, shaped [..., 1], changes; the Mul that follows
MatMulInteger multiplies by `x_scale * w_scale`, which then broadcasts per
token and output channel. The MatMulInteger itself and the weights are left as
they are. Needs onnx (where the export runs, not in the worker).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def per_token(int8_in: Path, int8_out: Path, half_range: int = 127) -> int:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(int8_in))
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    constants = {
        "pt_eps": np.array(1e-8, dtype=np.float32), "pt_half": np.array(half_range, dtype=np.float32),
        "pt_zpf": np.array(half_range + 1, dtype=np.float32), "pt_0": np.array(0.0, dtype=np.float32),
        "pt_top": np.array(2 * half_range + 1, dtype=np.float32), "pt_zp": np.array(half_range + 1, dtype=np.uint8),
    }
    if opset >= 18:
        constants["pt_axes"] = np.array([-1], dtype=np.int64)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    rewritten, nodes = 0, []
    for node in graph.node:
        # Only where the quantized tensor goes to MatMulInteger and its scale to a Mul (the
        # pattern quantize_dynamic writes for MatMul): there a [..., 1] scale broadcasts right.
        if (node.op_type != "DynamicQuantizeLinear" or readers.get(node.output[0]) != {"MatMulInteger"}
                or readers.get(node.output[1]) != {"Mul"}):
            nodes.append(node)
            continue
        x, (q, scale, zero) = node.input[0], node.output
        p = f"pt{rewritten}_"
        reduce = (helper.make_node("ReduceMax", [p + "abs", "pt_axes"], [p + "max"], keepdims=1) if opset >= 18
                  else helper.make_node("ReduceMax", [p + "abs"], [p + "max"], axes=[-1], keepdims=1))
        nodes += [
            helper.make_node("Abs", [x], [p + "abs"]),
            reduce,
            helper.make_node("Max", [p + "max", "pt_eps"], [p + "maxe"]),
            helper.make_node("Div", [p + "maxe", "pt_half"], [scale]),  # per token: [..., 1]
            helper.make_node("Div", [x, scale], [p + "div"]),
            helper.make_node("Round", [p + "div"], [p + "round"]),
            helper.make_node("Add", [p + "round", "pt_zpf"], [p + "shift"]),
            helper.make_node("Clip", [p + "shift", "pt_0", "pt_top"], [p + "clip"]),
            helper.make_node("Cast", [p + "clip"], [q], to=TensorProto.UINT8),
            helper.make_node("Identity", ["pt_zp"], [zero]),
        ]
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    # The quantizer recorded the old (scalar) shapes of these tensors: drop them, ORT infers its own.
    names = {o for n in nodes for o in n.output}
    kept = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    onnx.save(model, str(int8_out))
    return rewritten
