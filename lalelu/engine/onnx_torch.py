"""An ONNX graph as a PyTorch module: the operators MoveNet's network uses, nothing more.

Why not onnx2torch: it needs torchvision, which cannot be installed beside the CPU build of torch that CI
uses, and MoveNet needs only a dozen operators. An operator outside that set is refused by name at load,
never at the first frame. The module runs the nodes in the file's (topological) order; inside a CUDA graph
the Python walk is paid once, at capture.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lalelu.errors import ModelError

# ONNX TensorProto data types this graph can cast to
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 10: torch.float16}
HEAD_NAMES = ("center", "heatmap", "regress", "offset")


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv(node, consts):
    a = _attrs(node)
    pads = list(a.get("pads", [0, 0, 0, 0]))
    stride, dil, group = a.get("strides", [1, 1]), a.get("dilations", [1, 1]), a.get("group", 1)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ModelError(f"Conv {node.name!r} uses auto_pad, which this converter does not support")
    symmetric = pads[0] == pads[2] and pads[1] == pads[3]

    def run(x, w, b=None):
        if symmetric:
            return F.conv2d(x, w, b, stride, (pads[0], pads[1]), dil, group)
        # TensorFlow's SAME padding with stride 2 pads bottom/right only: (left, right, top, bottom)
        return F.conv2d(F.pad(x, (pads[1], pads[3], pads[0], pads[2])), w, b, stride, 0, dil, group)

    return run


def _resize(node, consts):
    a = _attrs(node)
    mode = a.get("mode", b"nearest").decode()
    ctm = a.get("coordinate_transformation_mode", b"half_pixel").decode()
    scales = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if mode != "linear" or ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        raise ModelError(f"Resize {node.name!r}: mode {mode}/{ctm} is not supported by this converter")
    align = ctm == "align_corners"
    if sizes is not None and len(sizes):
        size = [int(s) for s in sizes[2:]]
        return lambda x, *_: F.interpolate(x, size=size, mode="bilinear", align_corners=align)
    if scales is None:
        raise ModelError(f"Resize {node.name!r} has neither constant scales nor sizes")
    factor = [float(s) for s in scales[2:]]

    def run(x, *_):
        return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=align)

    return run


def _clip(node, consts):
    lo = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    hi = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    lo_v = None if lo is None else float(lo)
    hi_v = None if hi is None else float(hi)
    return lambda x, *_: torch.clamp(x, lo_v, hi_v)


def _cast(node, consts):
    to = _attrs(node)["to"]
    if to not in _DTYPES:
        raise ModelError(f"Cast {node.name!r} to ONNX type {to} is not supported by this converter")
    dtype = _DTYPES[to]
    if dtype == torch.float32:
        return _TO_FLOAT  # follows the module's precision: fp16 when the module is half
    return lambda x: x.to(dtype)


def _to_float(x: torch.Tensor) -> torch.Tensor:
    raise AssertionError("replaced by OnnxModule.forward")


_TO_FLOAT = _to_float


def _reshape(node, consts):
    shape = [int(s) for s in consts[node.input[1]]]
    return lambda x, *_: x.reshape(shape)


def _transpose(node, consts):
    perm = list(_attrs(node)["perm"])
    return lambda x: x.permute(perm)


def _concat(node, consts):
    axis = _attrs(node)["axis"]
    return lambda *xs: torch.cat(xs, axis)


def _axes(node, consts, name: str) -> list[int]:
    a = _attrs(node)
    return list(a[name]) if name in a else [int(v) for v in consts[node.input[1]]]


def _squeeze(node, consts):
    axes = _axes(node, consts, "axes")
    return lambda x, *_: x.squeeze(axes)


def _unsqueeze(node, consts):
    axes = sorted(_axes(node, consts, "axes"))

    def run(x, *_):
        for ax in axes:
            x = x.unsqueeze(ax)
        return x

    return run


_BUILDERS: dict[str, Callable[[Any, dict[str, np.ndarray]], Callable[..., torch.Tensor]]] = {
    "Conv": _conv,
    "Resize": _resize,
    "Clip": _clip,
    "Cast": _cast,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Relu": lambda n, c: F.relu,
    "Sigmoid": lambda n, c: torch.sigmoid,
    "Add": lambda n, c: torch.add,
    "Sub": lambda n, c: torch.sub,
    "Mul": lambda n, c: torch.mul,
    "Div": lambda n, c: torch.div,
    "Sqrt": lambda n, c: torch.sqrt,
}


class OnnxModule(torch.nn.Module):
    """Runs `nodes` (ONNX NodeProtos) with the initializers as buffers; returns the tensors named `outputs`."""

    def __init__(self, nodes: list[Any], consts: dict[str, np.ndarray], input_name: str, outputs: list[str]):
        super().__init__()
        unsupported = sorted({n.op_type for n in nodes} - set(_BUILDERS))
        if unsupported:
            raise ModelError(
                f"the ONNX graph uses {', '.join(unsupported)}, which the torch-cuda engine cannot run; "
                "use the litert or tensorrt engine for this model"
            )
        self.input_name, self.outputs = input_name, outputs
        used = {i for n in nodes for i in n.input if i in consts}
        self._slot = {}
        for k, name in enumerate(sorted(used)):
            arr = consts[name]
            self.register_buffer(f"c{k}", torch.from_numpy(np.array(arr, copy=True)), persistent=False)
            self._slot[name] = f"c{k}"
        self._steps = [(_BUILDERS[n.op_type](n, consts), list(n.input), list(n.output)) for n in nodes]
        self.float_dtype = torch.float32

    def half(self) -> OnnxModule:
        self.float_dtype = torch.float16
        return super().half()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for fn, ins, outs in self._steps:
            args = [env[i] if i in env else getattr(self, self._slot[i]) for i in ins if i]
            env[outs[0]] = args[0].to(self.float_dtype) if fn is _TO_FLOAT else fn(*args)
        return [env[o] for o in self.outputs]


def load_onnx(path: Path) -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ModelError("the torch-cuda engine needs onnx: pip install 'lalelu-drums[gpu-torch]'") from exc
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ModelError(
            f"{path} is not an ONNX model ({exc}); make one with `lalelu convert MODEL --to onnx`"
        ) from exc


def _producer_index(graph: Any) -> dict[str, int]:
    return {o: k for k, n in enumerate(graph.node) for o in n.output}


def find_movenet_heads(graph: Any) -> dict[str, str]:
    """The four NCHW head tensors of a MoveNet graph: center and keypoint heatmaps (after their sigmoid),
    keypoint regression and offsets (the convolutions whose outputs the decode gathers from)."""
    heads: dict[str, str] = {}
    for n in graph.node:
        # fused TFLite names list every layer folded in; the first one names the layer itself
        own = n.input[0].split(";")[0] if n.op_type == "Sigmoid" else n.output[0].split(";")[0]
        if n.op_type == "Sigmoid":
            if "center" in own:
                heads["center"] = n.output[0]
            elif "kpt_heatmap" in own:
                heads["heatmap"] = n.output[0]
        elif n.op_type == "Conv":  # the last convolution of each branch is its head
            if "kpt_offset" in own:
                heads["offset"] = n.output[0]
            elif "kpt_regress" in own:
                heads["regress"] = n.output[0]
    missing = [h for h in HEAD_NAMES if h not in heads]
    if missing:
        raise ModelError(
            f"this ONNX graph does not show MoveNet's {', '.join(missing)} head(s): export a MoveNet "
            "single-pose model with `lalelu convert` (tflite or SavedModel from TF Hub)"
        )
    return heads


def decode_constants(graph: Any, consts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The grid and center-weight maps the file's own decode uses (quantized in an int8 model: its y grid
    reads 0, 0.92, 2.03, ...), so that our decode picks the same cells; {} when the file has none."""
    found: dict[str, np.ndarray] = {}
    for n in graph.node:
        for name in n.input:
            arr = consts.get(name)
            if arr is None or arr.ndim != 3 or arr.shape[2] != 1 or arr.dtype != np.float32:
                continue
            plane = arr[:, :, 0]
            if n.op_type == "Mul":
                found["center_weight"] = plane
            elif n.op_type == "Sub" and np.ptp(plane, axis=1).max() == 0:
                found["grid_y"] = plane
            elif n.op_type == "Sub" and np.ptp(plane, axis=0).max() == 0:
                found["grid_x"] = plane
    return found if len(found) == 3 else {}


def movenet_network(
    path: Path,
) -> tuple[OnnxModule, tuple[int, int, int], np.dtype, dict[str, np.ndarray]]:
    """The network part of a MoveNet ONNX file (input -> four heads, decode cut off), its input (H, W, 3),
    input dtype, and the file's decode constants (see `decode_constants`)."""
    from onnx import helper, numpy_helper

    model = load_onnx(path)
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:  # Constant nodes become initializers
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} inputs; MoveNet has one image input")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[3] != 3 or not dims[1] or not dims[2]:
        raise ModelError(f"{path} takes input shape {dims}; expected [1, H, W, 3] with a fixed size")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(inputs[0].type.tensor_type.elem_type))
    heads = find_movenet_heads(g)
    producer = _producer_index(g)
    needed: set[int] = set()
    stack = [producer[heads[h]] for h in HEAD_NAMES]
    while stack:  # walk back from the heads: only the nodes they depend on
        k = stack.pop()
        if k in needed:
            continue
        needed.add(k)
        stack.extend(producer[i] for i in g.node[k].input if i in producer and i not in consts)
    nodes = [g.node[k] for k in sorted(needed) if g.node[k].op_type != "Constant"]
    module = OnnxModule(nodes, consts, inputs[0].name, [heads[h] for h in HEAD_NAMES])
    return module, (dims[1], dims[2], 3), dtype, decode_constants(g, consts)
