"""SmoothQuant for ONNX Runtime's dynamic int8: move activation outliers into the weights.

    smooth(fp32_in, fp32_out, feeds, alpha) -> int   (MatMuls smoothed)

Dynamic int8 quantizes each MatMul's input with one scale per tensor, so a few
hidden channels with large values (transformers have them) leave the others
only a few levels. SmoothQuant (Xiao et al., 2022) divides input channel j by
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) and multiplies row j of the weight
by it: the product is unchanged in exact arithmetic, and both factors are then
easier to quantize. Here the division is an explicit Mul before the MatMul
(shared by the MatMuls that read the same tensor, e.g. Q, K and V), so the
residual path that also reads a LayerNorm's output is untouched.

`feeds` are calibration inputs (dicts of numpy arrays) run through the fp32
graph to find max|X_j|; use texts other than those any agreement test checks.
Needs onnx, onnxruntime and numpy (where the export runs, not in the worker).
"""
from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def smooth(fp32_in: Path, fp32_out: Path, feeds: list[dict], alpha: float = 0.5) -> int:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32_in))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    readers: dict[str, list] = defaultdict(list)  # activation -> MatMuls that multiply it by a constant weight
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and node.input[0] not in weights:
            if numpy_helper.to_array(weights[node.input[1]]).ndim == 2:
                readers[node.input[0]].append(node)
    if not readers:
        onnx.save(model, str(fp32_out))
        return 0
    act_max = _activation_max(model, list(readers), feeds)
    for k, (name, nodes) in enumerate(readers.items()):
        mats = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        w_max = np.max(np.stack([np.abs(m).max(axis=1) for m in mats]), axis=0)
        scale = (np.maximum(act_max[name], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)).astype(np.float32)
        scale = np.clip(scale, 1e-2, 1e2)
        inv = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"smooth_inv_{k}")
        graph.initializer.append(inv)
        smoothed = f"{name}_smoothed_{k}"
        graph.node.append(helper.make_node("Mul", [name, inv.name], [smoothed], name=f"SmoothMul_{k}"))
        for node, mat in zip(nodes, mats):
            weights[node.input[1]].CopyFrom(numpy_helper.from_array((mat * scale[:, None]).astype(np.float32),
                                                                    node.input[1]))
            node.input[0] = smoothed
    _topological_sort(graph)
    onnx.save(model, str(fp32_out))
    return sum(len(n) for n in readers.values())


def _activation_max(model, names: list[str], feeds: list[dict]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of the named tensors (last axis) over the calibration feeds."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        found: dict[str, np.ndarray] = {}
        for feed in feeds:
            mask = feed.get("attention_mask")
            for name, value in zip(names, session.run(names, feed)):
                rows = value.reshape(-1, value.shape[-1])
                if mask is not None and value.ndim == 3 and value.shape[:2] == mask.shape:
                    rows = rows[mask.reshape(-1) > 0]  # padding tokens are never served
                peak = np.abs(rows).max(axis=0)
                found[name] = np.maximum(found[name], peak) if name in found else peak
    return found


def _topological_sort(graph) -> None:
    """Reorder nodes so every input is made before it is read (the Muls were appended last)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("the graph has a cycle or an input nobody makes")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
