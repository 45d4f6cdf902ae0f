"""The float32 reference of an ONNX graph: a numpy interpreter of the operators the importer
accepts (and of the shape arithmetic exporters emit around them, for constant folding).

It follows the ONNX operator definitions (NCHW images, numpy broadcasting) and is checked
against onnxruntime in sim_tests/test_onnx.py. :func:`run` returns every value the graph
computes, by name: the importer calibrates its int8 scales on them.
"""

import numpy as np
from onnx import helper, numpy_helper

from .quant import ACTIVATIONS, erf

__all__ = ["OPS", "run", "attributes"]


def attributes(node):
    """A node's attributes as a dict of Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _f32(x):
    return np.asarray(x, np.float32)


def _gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    a = a.T if transA else a
    b = b.T if transB else b
    y = alpha * (a @ b) if alpha != 1.0 else a @ b
    if c is not None:
        y = y + (beta * c if beta != 1.0 else c)
    return _f32(y)


def _pads(pads, spatial):
    pads = list(pads or [0] * 2 * spatial)
    return [(pads[i], pads[i + spatial]) for i in range(spatial)]


def _conv(x, w, b=None, *, strides=(1, 1), pads=None, dilations=(1, 1), group=1,
          kernel_shape=None, auto_pad="NOTSET"):
    if group != 1 or auto_pad not in ("NOTSET", b"NOTSET"):
        raise NotImplementedError("group and auto_pad are not supported")
    (pt, pb), (pl, pr) = _pads(pads, 2)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    kh, kw = w.shape[2:]
    sh, sw = strides
    dh, dw = dilations
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow), np.float32)
    for dy in range(kh):
        for dx in range(kw):
            y0, x0 = dh * dy, dw * dx
            patch = xp[:, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, dy, dx], optimize=True)
    if b is not None:
        out += b[None, :, None, None]
    return out


def _pool(x, reduce, *, kernel_shape, strides=None, pads=None, ceil_mode=0,
          count_include_pad=0, dilations=None, storage_order=0, auto_pad="NOTSET"):
    if ceil_mode or auto_pad not in ("NOTSET", b"NOTSET") or (dilations and set(dilations) != {1}):
        raise NotImplementedError("ceil_mode, auto_pad and dilations are not supported")
    kh, kw = kernel_shape
    sh, sw = strides or (1, 1)
    (pt, pb), (pl, pr) = _pads(pads, 2)
    fill = -np.inf if reduce == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    windows = np.stack([xp[:, :, dy:dy + sh * (oh - 1) + 1:sh, dx:dx + sw * (ow - 1) + 1:sw]
                        for dy in range(kh) for dx in range(kw)])
    if reduce == "max":
        return windows.max(axis=0)
    if count_include_pad or not any(pads or ()):
        return _f32(windows.sum(axis=0) / (kh * kw))
    ones = np.pad(np.ones(x.shape[2:], np.float32), ((pt, pb), (pl, pr)))
    counts = np.stack([ones[dy:dy + sh * (oh - 1) + 1:sh, dx:dx + sw * (ow - 1) + 1:sw]
                       for dy in range(kh) for dx in range(kw)]).sum(axis=0)
    return _f32(windows.sum(axis=0) / counts)


def _softmax(x, *, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _layernorm(x, scale, bias=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    y = d / np.sqrt((d * d).mean(axis=axes, keepdims=True) + np.float32(epsilon))
    y = y * scale
    return y + bias if bias is not None else y


def _gelu(x, *, approximate="none"):
    return _f32(ACTIVATIONS["gelu" if approximate in ("tanh", b"tanh") else "gelu_erf"](x))


def _reshape(x, shape, *, allowzero=0):
    shape = [int(s) for s in shape]
    if not allowzero:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _axes(inputs, attrs):
    """Axes from the second input (opset >= 13/18) or the attribute."""
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in inputs[1]]
    return list(attrs.get("axes", []))


def _reduce_mean(x, *rest, keepdims=1, axes=None, noop_with_empty_axes=0):
    axes = _axes((x,) + rest, {"axes": axes or []})
    if not axes and noop_with_empty_axes:
        return x
    return _f32(x.mean(axis=tuple(axes) if axes else None, keepdims=bool(keepdims)))


def _split(x, split=None, *, axis=0, num_outputs=None):
    if split is None:
        return tuple(np.split(x, num_outputs, axis=axis))
    return tuple(np.split(x, np.cumsum([int(s) for s in split])[:-1], axis=axis))


def _slice(x, starts, ends, axes=None, steps=None):
    index = [slice(None)] * x.ndim
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return x[tuple(index)]


def _dequantize(x, scale, zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    """(x - zero_point) * scale, per tensor or per slice along ``axis`` (a 1-D scale)."""
    if block_size:
        raise NotImplementedError("blocked quantization (block_size) is not supported")
    scale = np.asarray(scale, np.float32)
    zero = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point)
    if scale.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return _f32((x.astype(np.float64) - zero.astype(np.float64)) * scale)


#: op type -> function(*inputs, **attributes) -> output (or tuple of outputs).
OPS = {
    "Identity": lambda x: x,
    "Gemm": _gemm,
    "MatMul": lambda a, b: _f32(np.matmul(a, b)),
    "Conv": _conv,
    "Relu": lambda x: np.maximum(x, 0).astype(x.dtype),
    "Sigmoid": lambda x: _f32(ACTIVATIONS["sigmoid"](x)),
    "Tanh": lambda x: _f32(ACTIVATIONS["tanh"](x)),
    "Gelu": _gelu,
    "Erf": lambda x: erf(x).astype(x.dtype),
    "Add": lambda a, b: np.add(a, b),
    "Sub": lambda a, b: np.subtract(a, b),
    "Mul": lambda a, b: np.multiply(a, b),
    "Div": lambda a, b: (np.floor_divide(a, b) if np.issubdtype(np.result_type(a, b), np.integer)
                         else np.divide(a, b)),
    "Pow": lambda a, b: np.power(a, b).astype(a.dtype),
    "Sqrt": np.sqrt,
    "ReduceMean": _reduce_mean,
    "Softmax": _softmax,
    "LayerNormalization": _layernorm,
    "MaxPool": lambda x, **a: _pool(x, "max", **a),
    "AveragePool": lambda x, **a: _pool(x, "avg", **a),
    "GlobalAveragePool": lambda x: x.mean(axis=(2, 3), keepdims=True),
    "Flatten": lambda x, *, axis=1: x.reshape(int(np.prod(x.shape[:axis])), -1),
    "Reshape": _reshape,
    "Transpose": lambda x, *, perm=None: np.transpose(x, perm),
    "Concat": lambda *xs, axis: np.concatenate(xs, axis=axis),
    "Gather": lambda data, idx, *, axis=0: np.take(data, np.asarray(idx, np.int64), axis=axis),
    "Unsqueeze": lambda x, axes=None, **a: np.expand_dims(x, tuple(_axes((x, axes), a))),
    "Squeeze": lambda x, axes=None, **a: (np.squeeze(x, tuple(_axes((x, axes), a)))
                                          if axes is not None or a.get("axes") else np.squeeze(x)),
    "Shape": lambda x, *, start=0, end=None: np.array(x.shape[start:end], np.int64),
    "Cast": lambda x, *, to, saturate=1, round_mode=None: x.astype(helper.tensor_dtype_to_np_dtype(to)),
    "Split": _split,
    "Slice": _slice,
    "DequantizeLinear": _dequantize,     # of constants (QDQ weights and biases), folded
    "Constant": None,               # folded when the model is loaded
}


def constant_value(node):
    """The value of a Constant node."""
    attrs = {a.name: a for a in node.attribute}
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"].t)
    for key, cast in (("value_float", np.float32), ("value_floats", np.float32),
                      ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(helper.get_attribute_value(attrs[key]), cast)
    raise NotImplementedError(f"Constant {node.name!r}: only tensor, float and int values")


def evaluate(node, inputs):
    """One node's outputs (a tuple)."""
    if node.op_type == "Constant":
        return (constant_value(node),)
    out = OPS[node.op_type](*inputs, **attributes(node))
    return out if isinstance(out, tuple) else (out,)


def run(graph, inputs, constants):
    """Execute ``graph`` (onnx GraphProto) on ``inputs`` (name -> array); ``constants`` are
    its initializers (name -> array). Returns every value by name."""
    values = dict(constants)
    values.update({name: np.asarray(v) for name, v in inputs.items()})
    for node in graph.node:
        args = [values[name] if name else None for name in node.input]
        for name, value in zip(node.output, evaluate(node, args)):
            values[name] = value
    return values
