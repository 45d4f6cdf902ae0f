"""ONNX import: a model's graph read, checked, folded, quantized (int8, post-training) and
lowered onto the compiler's operators (graph.py).

Steps, each with a one-line :class:`OnnxError` naming what is wrong:

1. :func:`load` reads the file, checks the opset, fixes dynamic input dimensions
   (``input_shapes``), folds every node that depends only on constants (shape
   arithmetic, Constant nodes), rewrites the decomposed patterns exporters emit
   (LayerNormalization as ReduceMean/Sub/Pow/Sqrt/Div, Gelu as its Erf formula), and
   checks that every node left is one the lowering knows.
2. :func:`calibrate` runs the float reference (onnx_reference.py) on calibration inputs;
   each value's scale is its largest magnitude / 127 (symmetric int8, per tensor).
   Values that must share a scale (operands and result of Add, parts of Concat, the two
   sides of a layout-only op; a scalar Mul/Div only retags the scale) are grouped; a group
   takes the largest scale of its members.
3. :func:`lower` walks the nodes and calls the Graph operators, fusing a MatMul/Gemm/Conv
   with the bias Add and activation after it, and Add with a following Relu.

Layouts: a tensor of shape (..., rows, cols) is a matrix (rows = the product of the leading
dimensions; cols padded with zero columns to whole tiles); an (N, C, H, W) tensor is an
image (one row per pixel, channels padded); attention's (1, heads, S, d) tensors are lists
of per-head matrices: views of the merged tensor's tiles when d is a multiple of the lanes
(Reshape/Transpose between them move no data), or, when d divides the lanes, a tile per
head that the MEs fill and empty with selection products.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .builder import CompileError
from .graph import Image, Tensor
from .onnx_reference import OPS as _EVALUABLE, attributes, evaluate, run
from .quant import scale_of

__all__ = ["OnnxError", "OnnxModel", "SUPPORTED_OPS", "OPSETS", "load", "random_inputs",
           "calibrate", "lower", "unquantized_values"]

#: Default-domain opsets the importer accepts.
OPSETS = range(13, 23)

#: Operators the lowering accepts (besides those folded away as constants, and the parts of
#: the LayerNormalization and Gelu patterns).
SUPPORTED_OPS = ("Add", "AveragePool", "Concat", "Conv", "Div", "Flatten", "Gather", "Gelu",
                 "Gemm", "GlobalAveragePool", "Identity", "LayerNormalization", "MatMul",
                 "MaxPool", "Mul", "Relu", "Reshape", "Sigmoid", "Softmax", "Squeeze", "Tanh",
                 "Transpose", "Unsqueeze")

#: Fixed output scales (the integer softmax produces probabilities at 1/127).
_FIXED_SCALES = {"Softmax": 1 / 127}
_ACTS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Gelu": "gelu"}
_LAYOUT = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
           "MaxPool", "AveragePool")


class OnnxError(ValueError):
    """A model the importer cannot take; the message names the node or value."""


@dataclass
class OnnxModel:
    """A loaded model: static shapes, constants folded, patterns rewritten."""
    name: str
    graph: onnx.GraphProto           # as loaded (folded): the float reference runs this
    nodes: list                      # the lowering's nodes (patterns rewritten)
    constants: dict                  # name -> array (initializers and folded values)
    inputs: dict                     # name -> (shape, numpy dtype)
    output: str
    metric: str = "relerr"
    scales: dict | None = None       # calibrated scale per value, once calibrated
    extra: dict = field(default_factory=dict)
    opset: int = OPSETS[-1]

    def reference(self, inputs):
        """The float output and every value, for ``inputs``."""
        values = run(self.graph, inputs, self.constants)
        return np.asarray(values[self.output], np.float32), values

    def macs(self):
        """The multiply-accumulates its Conv, MatMul and Gemm nodes do (the real ones: a
        convolution's taps over its input channels per output value, a product's inner
        dimension per output value), from the shapes ONNX's shape inference gives (large
        constants enter it as typed inputs, without their values)."""
        inferred = onnx.shape_inference.infer_shapes(self.to_proto(values_up_to=4096))
        shapes = {v.name: _dims(v) for v in list(inferred.graph.value_info)
                  + list(inferred.graph.input) + list(inferred.graph.output)}
        shapes.update({name: list(np.shape(value)) for name, value in self.constants.items()})
        total = 0
        for node in self.graph.node:
            if node.op_type not in ("Conv", "MatMul", "Gemm"):
                continue
            out = shapes.get(node.output[0])
            if not out or not all(isinstance(d, int) for d in out):
                raise OnnxError(f"{_node(node)}: its output shape {out} is not known; MACs "
                                f"are counted on static shapes")
            if node.op_type == "Conv":
                w = shapes[node.input[1]]
                inner = int(np.prod(w[1:]))
            elif node.op_type == "Gemm":
                inner = shapes[node.input[0]][0 if attributes(node).get("transA") else 1]
            else:
                inner = shapes[node.input[0]][-1]
            total += int(np.prod(out)) * inner
        return total

    def to_proto(self, values_up_to=None):
        """The folded model as an ONNX ModelProto (what `neu10 import` stores). With
        ``values_up_to``, constants of more elements are graph inputs of their type and
        shape, without their values (enough for shape inference)."""
        kept = {n: v for n, v in self.constants.items()
                if values_up_to is None or np.size(v) <= values_up_to}
        typed = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(
            np.asarray(v).dtype), np.shape(v)) for n, v in self.constants.items() if n not in kept]
        graph = helper.make_graph(
            list(self.graph.node), self.name,
            [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(d), s)
             for n, (s, d) in self.inputs.items()] + typed,
            [helper.make_tensor_value_info(self.output, onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(v, n) for n, v in kept.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])


def _node(node):
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def _error(node, message):
    return OnnxError(f"{_node(node)}: {message}")


def _unsupported(node, what=None):
    detail = f": {what} is not supported" if what else " is not supported"
    return OnnxError(f"{_node(node)}{detail}; supported operators: {', '.join(SUPPORTED_OPS)}")


# --- loading -----------------------------------------------------------------------------------

def _dims(value_info):
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
            (d.dim_param or "?") for d in shape.dim]


def load(source, *, input_shapes=None, name=None):
    """An :class:`OnnxModel` from a path, bytes or ModelProto. ``input_shapes`` (name ->
    shape) fixes dynamic dimensions; with one input, the key may be None."""
    if isinstance(source, onnx.ModelProto):
        proto, name = source, name or source.graph.name or "model"
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise OnnxError(f"{source}: cannot read: {error.strerror}") from None
        try:
            proto = onnx.load_from_string(data)
        except Exception:
            raise OnnxError(f"{source}: not an ONNX model (no ModelProto could be "
                            f"parsed)") from None
        if not proto.graph.node:
            raise OnnxError(f"{source}: not an ONNX model (no graph nodes)")
        name = name or path.stem
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version not in OPSETS:
            raise OnnxError(f"opset {opset.version} is outside the supported range "
                            f"{OPSETS[0]}..{OPSETS[-1]}")
        if opset.domain not in ("", "ai.onnx"):
            raise OnnxError(f"operator domain {opset.domain!r} is not supported (only the "
                            f"default ONNX domain)")
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    graph, qdq_scales, per_channel, weight_scales = _strip_qdq(proto.graph, constants)
    inputs = {}
    given = dict(input_shapes or {})
    real_inputs = [v for v in graph.input if v.name not in constants]
    if None in given and len(real_inputs) == 1:
        given[real_inputs[0].name] = given.pop(None)
    for value in real_inputs:
        dims = _dims(value)
        if value.name in given:
            shape = tuple(int(d) for d in given.pop(value.name))
            if len(shape) != len(dims) or any(isinstance(d, int) and d != s
                                              for d, s in zip(dims, shape)):
                raise OnnxError(f"--input-shape {value.name}={','.join(map(str, shape))} does "
                                f"not match the model's shape {dims}")
        elif all(isinstance(d, int) for d in dims):
            shape = tuple(dims)
        else:
            raise OnnxError(f"input {value.name!r} has dynamic shape {dims}; give "
                            f"--input-shape {value.name}=" + ",".join(
                                str(d) if isinstance(d, int) else "N" for d in dims))
        elem = value.type.tensor_type.elem_type
        inputs[value.name] = (shape, helper.tensor_dtype_to_np_dtype(elem))
    if given:
        raise OnnxError(f"--input-shape names {', '.join(map(str, given))}; the model's inputs "
                        f"are {', '.join(inputs)}")
    if len(graph.output) != 1:
        raise OnnxError(f"the model has {len(graph.output)} outputs; the importer takes "
                        f"models with one")
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise _unsupported(node, f"domain {node.domain!r}")
    nodes = _fold(graph, constants, inputs)
    folded = helper.make_graph(nodes, graph.name, graph.input, graph.output)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                 OPSETS[-1])
    model = OnnxModel(name, folded, _rewrite(nodes, constants, graph.output[0].name),
                      constants, inputs, graph.output[0].name, opset=opset)
    if qdq_scales:
        model.extra.update(qdq_scales=qdq_scales, per_channel=per_channel,
                           weight_scales=weight_scales)
    for node in model.nodes:
        if node.op_type not in SUPPORTED_OPS:
            raise _unsupported(node)
    return model


def _strip_qdq(graph, constants):
    """A pre-quantized (QDQ) model as its float graph and its scales: every QuantizeLinear
    -> DequantizeLinear pair on an activation x is removed (its readers read x) and x's
    scale recorded; DequantizeLinear of constant weights and biases stays, to be folded.
    Returns (the graph, scale per activation, whether any weights have a scale per
    channel, and the (scales, axis) of each constant dequantized from symmetric int8).
    Only symmetric int8 activations (zero point 0) are supported."""
    nodes = list(graph.node)
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        return graph, {}, False, {}
    users = _consumers(nodes)
    graph_outputs = {v.name for v in graph.output}

    def param(node, i):
        name = node.input[i] if len(node.input) > i else ""
        if name and name not in constants:
            raise _error(node, f"input {i} ({name!r}) must be a constant")
        return constants.get(name) if name else None

    scales, rename, drop, per_channel, weights = {}, {}, set(), False, {}
    for node in nodes:
        if node.op_type == "DequantizeLinear" and node.input[0] in constants:
            stored, scale, zero = constants[node.input[0]], param(node, 1), param(node, 2)
            per_channel |= np.size(scale) > 1
            if stored.dtype == np.int8 and (zero is None or not np.any(zero)):
                axis = attributes(node).get("axis", 1) % max(1, stored.ndim)
                weights[node.output[0]] = (np.ravel(scale).astype(np.float64), axis)
        if node.op_type != "QuantizeLinear":
            continue
        x, scale, zero = rename.get(node.input[0], node.input[0]), param(node, 1), param(node, 2)
        if x in constants:
            raise _error(node, "quantizing a constant is not supported (weights come "
                               "quantized, with a DequantizeLinear)")
        if np.size(scale) != 1:
            raise _error(node, f"a scale per channel on activation {x!r}: supported are "
                               f"per-tensor activation scales")
        if zero is None or zero.dtype != np.int8 or np.any(zero != 0):
            kind = "uint8 (the default)" if zero is None else zero.dtype
            raise _error(node, f"activation {x!r} is quantized to {kind} with zero point "
                               f"{0 if zero is None else int(np.ravel(zero)[0])}: supported "
                               f"are symmetric int8 activations (onnxruntime's quantize_static "
                               f"with activation_type=QInt8 and ActivationSymmetric=True)")
        readers = users.get(node.output[0], [])
        if not readers or node.output[0] in graph_outputs:
            raise _error(node, f"its int8 output {node.output[0]!r} is not dequantized: "
                               f"supported are QuantizeLinear -> DequantizeLinear pairs (the "
                               f"QDQ format)")
        step = float(np.ravel(scale)[0])
        if scales.get(x, step) != step:
            raise _error(node, f"activation {x!r} is quantized a second time, with scale "
                               f"{step:g} after {scales[x]:g}: supported is one scale per "
                               f"activation")
        for user in readers:
            if user.op_type != "DequantizeLinear" or \
                    not np.array_equal(np.ravel(param(user, 1)), np.ravel(scale)) or \
                    (param(user, 2) is not None and np.any(param(user, 2) != 0)):
                raise _error(node, f"its output is read by {_node(user)}: supported are "
                                   f"QuantizeLinear -> DequantizeLinear pairs of one scale "
                                   f"(the QDQ format)")
            rename[user.output[0]] = x
            drop.add(id(user))
        drop.add(id(node))
        scales[x] = step
    for node in nodes:
        if node.op_type == "DequantizeLinear" and id(node) not in drop \
                and node.input[0] not in constants:
            raise _error(node, f"dequantizes {node.input[0]!r}, which no QuantizeLinear "
                               f"made: supported are QDQ pairs and quantized constants")
    kept = []
    for node in nodes:
        if id(node) not in drop:
            node = onnx.NodeProto.FromString(node.SerializeToString())
            node.input[:] = [rename.get(n, n) for n in node.input]
            kept.append(node)
    outputs = []
    for value in graph.output:
        value = onnx.ValueInfoProto.FromString(value.SerializeToString())
        value.name = rename.get(value.name, value.name)
        outputs.append(value)
    stripped = helper.make_graph(kept, graph.name, graph.input, outputs,
                                 list(graph.initializer))
    return stripped, scales, per_channel, weights


def _fold(graph, constants, inputs):
    """Evaluate nodes whose inputs are constants (and Shape of a static shape) into
    ``constants``; the nodes left. Shapes come from one run on zero inputs."""
    zeros = {n: np.zeros(s, d) for n, (s, d) in inputs.items()}
    values = dict(constants)
    values.update(zeros)
    kept = []
    for node in graph.node:
        op = node.op_type
        if op != "Constant" and op not in _EVALUABLE:
            raise _unsupported(node)
        args = [values[n] if n else None for n in node.input]
        try:
            with np.errstate(all="ignore"):      # zeros stand for the inputs here
                outs = evaluate(node, args)
        except NotImplementedError as error:
            raise _error(node, str(error)) from None
        except Exception as error:
            raise _error(node, f"cannot be evaluated on inputs of shapes "
                               f"{[getattr(a, 'shape', None) for a in args]}: {error}") from None
        values.update(zip(node.output, outs))
        if op in ("Constant", "Shape") or all(n in constants for n in node.input if n):
            constants.update(zip(node.output, (np.asarray(o) for o in outs)))
        else:
            kept.append(node)
    return kept


def _consumers(nodes):
    users = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _only_user(users, name, ops, output):
    """The one node that reads value ``name``, if it is one of ``ops`` and ``name`` is not
    the graph's ``output`` (which must stay computed); else None."""
    found = users.get(name, [])
    if len(found) == 1 and found[0].op_type in ops and name != output:
        return found[0]
    return None


def _const(constants, name, value, tolerance=1e-4):
    """Is ``name`` a constant equal (everywhere) to ``value``?"""
    c = constants.get(name)
    return c is not None and np.allclose(np.asarray(c, np.float64), value, rtol=tolerance,
                                         atol=0)


def _other(node, name):
    """The other input of a two-input node."""
    a, b = node.input
    return b if a == name else a


def _rewrite(nodes, constants, output):
    """The decomposed LayerNormalization and Erf-Gelu patterns replaced by one node each."""
    users = _consumers(nodes)
    producer = {out: node for node in nodes for out in node.output}

    def only(name, op):
        return _only_user(users, name, (op,), output)

    drop, add = set(), {}
    for node in nodes:
        if node.op_type == "Erf":
            match = _match_gelu(node, producer, only, constants)
        elif node.op_type == "ReduceMean":
            match = _match_layernorm(node, users, only, constants)
        else:
            continue
        if match:
            parts, fused = match
            drop.update(id(p) for p in parts)
            add[id(parts[-1])] = fused
    out = []
    for node in nodes:
        if id(node) in add:
            out.append(add[id(node)])
        elif id(node) not in drop:
            out.append(node)
    return out


def _match_gelu(erf, producer, only, constants):
    """x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5 (either Mul order): Gelu(x)."""
    pre = producer.get(erf.input[0])
    if pre is None or pre.op_type not in ("Div", "Mul"):
        return None
    x = next((n for n in pre.input if n not in constants), None)
    c = _other(pre, x) if x else None
    if c is None or not _const(constants, c, np.sqrt(2) if pre.op_type == "Div" else 1 / np.sqrt(2)):
        return None
    if (pre.op_type == "Div" and pre.input[0] != x) or only(pre.output[0], "Erf") is not erf:
        return None
    plus = only(erf.output[0], "Add")
    if plus is None or not _const(constants, _other(plus, erf.output[0]), 1.0):
        return None
    m1 = only(plus.output[0], "Mul")
    if m1 is None:
        return None
    partner = _other(m1, plus.output[0])
    if partner == x:
        m2 = only(m1.output[0], "Mul")
        if m2 is None or not _const(constants, _other(m2, m1.output[0]), 0.5):
            return None
        parts, y = [pre, erf, plus, m1, m2], m2.output[0]
    else:
        half = producer.get(partner)
        if (half is None or half.op_type != "Mul" or x not in half.input
                or not _const(constants, _other(half, x), 0.5)
                or only(half.output[0], "Mul") is not m1):
            return None
        parts, y = [half, pre, erf, plus, m1], m1.output[0]
    return parts, helper.make_node("Gelu", [x], [y], name=parts[-1].name or y)


def _match_layernorm(mean, users, only, constants):
    """ReduceMean -> Sub -> Pow 2 -> ReduceMean -> + eps -> Sqrt -> Div (-> * gamma -> + beta)
    over the last axis: LayerNormalization."""
    x = mean.input[0]
    sub = only(mean.output[0], "Sub")
    if sub is None or list(sub.input) != [x, mean.output[0]]:
        return None
    uses = users.get(sub.output[0], [])
    sq = next((u for u in uses if u.op_type == "Pow"
               and _const(constants, u.input[1], 2.0)), None)
    div = next((u for u in uses if u.op_type == "Div" and u.input[0] == sub.output[0]), None)
    if sq is None or div is None or len(uses) != 2:
        return None
    var = only(sq.output[0], "ReduceMean")
    eps_add = var and only(var.output[0], "Add")
    root = eps_add and only(eps_add.output[0], "Sqrt")
    if root is None or div.input[1] != root.output[0]:
        return None
    eps = constants.get(_other(eps_add, var.output[0]))
    for reduce in (mean, var):
        axes = attributes(reduce).get("axes")
        if axes is None and len(reduce.input) > 1:
            axes = constants.get(reduce.input[1])
        if axes is None or [int(a) for a in np.ravel(axes)] != [-1] \
                or attributes(reduce).get("keepdims", 1) != 1:
            return None
    if eps is None or np.size(eps) != 1:
        return None
    parts, y, gamma, beta = [mean, sub, sq, var, eps_add, root, div], div.output[0], None, None
    scale = only(y, "Mul")
    if scale is not None and _other(scale, y) in constants:
        gamma, y = _other(scale, y), scale.output[0]
        parts.append(scale)
        shift = only(y, "Add")
        if shift is not None and _other(shift, y) in constants:
            beta, y = _other(shift, y), shift.output[0]
            parts.append(shift)
    inputs = [x] + [n for n in (gamma, beta) if n]
    if beta and not gamma:
        return None
    node = helper.make_node("LayerNormalization", inputs, [y], name=parts[-1].name or y,
                            axis=-1, epsilon=float(np.ravel(eps)[0]))
    return parts, node


# --- inputs and calibration ----------------------------------------------------------------

def random_inputs(model, rng):
    """A seeded batch: floats ~ N(0, 1); integer inputs uniform over the rows of the table
    they index."""
    out = {}
    for name, (shape, dtype) in model.inputs.items():
        if np.issubdtype(dtype, np.integer):
            out[name] = rng.integers(0, _vocabulary(model, name), shape).astype(dtype)
        else:
            out[name] = rng.normal(0, 1, shape).astype(dtype)
    return out


def _vocabulary(model, name):
    sizes = [model.constants[n.input[0]].shape[0] for n in model.nodes
             if n.op_type == "Gather" and n.input[1] == name and n.input[0] in model.constants]
    if not sizes:
        raise OnnxError(f"integer input {name!r} is not the indices of a Gather of a "
                        f"constant table")
    return min(sizes)


def calibrate(model, batches):
    """Scales per value: the largest magnitude over ``batches`` (lists of input dicts) / 127."""
    peaks = {}
    for inputs in batches:
        try:
            _, values = model.reference(inputs)
        except (ValueError, IndexError, TypeError) as error:
            raise OnnxError(f"the float reference fails on the calibration inputs: "
                            f"{error}") from None
        for key, value in values.items():
            if key in model.constants or not np.issubdtype(np.asarray(value).dtype, np.floating):
                continue
            peak = float(np.max(np.abs(value))) if np.size(value) else 0.0
            peaks[key] = max(peaks.get(key, 0.0), peak)
    scales = {key: (peak / 127 if peak > 0 else 1.0) for key, peak in peaks.items()}
    scales.update(model.extra.get("qdq_scales", {}))     # a pre-quantized model's own
    for node in model.nodes:
        if node.op_type in _FIXED_SCALES:
            scales[node.output[0]] = _FIXED_SCALES[node.op_type]
        elif node.op_type == "Gather" and node.input[0] in model.constants:
            scales[node.output[0]] = scale_of(model.constants[node.input[0]])
    return scales


def unquantized_values(model):
    """Values of a pre-quantized (QDQ) model that no QDQ pair gives a scale (their scales
    are calibrated); every computed value for any other model."""
    given = model.extra.get("qdq_scales", {})
    return [out for node in model.nodes if node.op_type not in _FIXED_SCALES
            for out in node.output if out not in given]


class _Scales:
    """Weighted union-find: scale(v) = factor(v) * base(group of v); a group's base is the
    largest calibrated scale / factor among its members."""

    def __init__(self, calibrated):
        self.calibrated = calibrated
        self.parent = {}

    def find(self, v):
        parent, factor = self.parent.get(v, (v, 1.0))
        if parent == v:
            return v, 1.0
        root, f = self.find(parent)
        self.parent[v] = (root, factor * f)
        return root, factor * f

    def join(self, a, b, ratio=1.0):
        """scale(b) = ratio * scale(a) (unless that contradicts an earlier join)."""
        ra, fa = self.find(a)
        rb, fb = self.find(b)
        if ra != rb:
            self.parent[rb] = (ra, fa * ratio / fb)

    def resolve(self):
        base = {}
        for v, s in self.calibrated.items():
            root, f = self.find(v)
            base[root] = max(base.get(root, 0.0), s / f)
        return {v: base[self.find(v)[0]] * self.find(v)[1] for v in self.calibrated}


def _group_scales(model, scales):
    users = _consumers(model.nodes)
    qdq = model.extra.get("qdq_scales", {})
    groups = _Scales(scales)
    retags = []
    for node in model.nodes:
        op, ins = node.op_type, [n for n in node.input if n and n not in model.constants]
        out = node.output[0]
        if op == "Add" and len(ins) == 2:
            relu = _only_user(users, out, ("Relu",), model.output)
            target = relu.output[0] if relu is not None else out
            if all(n in qdq for n in (*ins, target)):
                continue                  # a pre-quantized Add keeps the scales it was given
            groups.join(ins[0], ins[1])
            groups.join(ins[0], target)
        elif op == "Concat" or op in _LAYOUT:
            for name in ins:
                groups.join(name, out)
        elif op in ("Mul", "Div") and len(ins) == 1:
            c = model.constants[_other(node, ins[0])]
            if np.size(c) == 1 and float(np.ravel(c)[0]) > 0:
                c = float(np.ravel(c)[0])
                retags.append((ins[0], out, c if op == "Mul" else 1 / c))
    # A scalar Mul/Div only retags the scale when its result shares it with nothing else;
    # otherwise tying the input's scale to that group could coarsen it a lot, and the
    # result is rescaled instead.
    for a, b, ratio in retags:
        root = groups.find(b)[0]
        if sum(groups.find(v)[0] == root for v in scales) == 1:
            groups.join(a, b, ratio)
    return groups.resolve()


# --- lowering ----------------------------------------------------------------------------------

@dataclass
class _Mat:
    t: Tensor
    shape: tuple        # logical ONNX shape; rows = prod(shape[:axis]), cols = shape[axis]
    cols: int
    #: t holds the transpose of the value (a Transpose whose only user is a MatMul that
    #: reads it as B, which loads t's rows as weight columns: ldw with t).
    transposed: bool = False


@dataclass
class _Img:
    t: Tensor
    shape: tuple        # (N, C, H, W)


@dataclass
class _Heads:
    parts: list         # Tensors, one per head
    shape: tuple        # logical shape
    order: str          # "HS": (..., H, rows, cols); "SH": (..., rows, H, cols)
    transposed: bool = False    # each part holds its head transposed (see _Mat)


@dataclass
class _Ids:
    values: np.ndarray
    name: str


def _tensors(value):
    """The Tensors a lowered value holds."""
    if isinstance(value, (_Mat, _Img)):
        return [value.t]
    return value.parts if isinstance(value, _Heads) else []


def _cols_axis(shape, cols, rows):
    """The axis of a matrix view of ``shape`` with ``cols`` columns and ``rows`` rows."""
    for axis in range(len(shape) - 1, -1, -1):
        if shape[axis] == cols and all(d == 1 for d in shape[axis + 1:]) \
                and int(np.prod(shape[:axis])) == rows:
            return axis
    return None


class _Env(dict):
    """The lowered value of each ONNX value name. Reading one (``[]``, ``get``) makes its
    tensors resident for the node being lowered (Graph.resident: pinned, and loaded back
    from HBM if they were spilled)."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def __getitem__(self, name):
        value = super().__getitem__(name)
        resident = self.graph.resident
        if isinstance(value, (_Mat, _Img)):
            t = resident(value.t)
            if t is not value.t:
                value = replace(value, t=t)
                super().__setitem__(name, value)
        elif isinstance(value, _Heads):
            parts = [resident(t) for t in value.parts]
            if any(a is not b for a, b in zip(parts, value.parts)):
                value = replace(value, parts=parts)
                super().__setitem__(name, value)
        return value

    def get(self, name, default=None):
        return self[name] if name in self else default

    def peek(self, name, default=None):
        """The value as it is: its tensors may be spilled (the caller makes each part
        resident when it uses it)."""
        return super().get(name, default)


class _Lowering:
    def __init__(self, g, model, scales, values, inputs):
        self.g, self.model, self.values = g, model, values
        self.lanes = g.lanes
        self.want = _group_scales(model, scales)
        self.users = _consumers(model.nodes)
        self.env = _Env(g)
        self.done = set()
        for name, (shape, dtype) in model.inputs.items():
            self.env[name] = self._input(name, inputs[name], shape, dtype)

    # helpers ----------------------------------------------------------------------------

    def only_user(self, name, ops):
        return _only_user(self.users, name, ops, self.model.output)

    def scale(self, name):
        if name not in self.want:
            raise OnnxError(f"value {name!r} has no calibrated scale (is it computed?)")
        return self.want[name]

    def fit(self, t, name, what):
        """``t`` at the scale value ``name`` must have (rescaled when they differ)."""
        want = self.scale(name)
        if abs(t.scale / want - 1) < 1e-9:
            return replace(t, scale=want) if t.scale != want else t
        return self.g.rescale(f"{what} rescale", t, want)

    def shape(self, name):
        return tuple(np.shape(self.values[name]))

    def _input(self, name, values, shape, dtype):
        if np.issubdtype(dtype, np.integer):
            return _Ids(np.asarray(values), name)
        s = self.scale(name)
        q = np.clip(np.round(np.asarray(values, np.float64) / s), -127, 127)
        if len(shape) == 4:
            n, c, h, w = shape
            pixels = self._pad_cols(q.transpose(0, 2, 3, 1).reshape(-1, c)).reshape(n, h, w, -1)
            t = self.g.input(name, pixels, s, image=Image(n, h, w))
            return _Img(t, shape)
        if not shape:
            raise OnnxError(f"input {name!r} is a scalar; inputs are matrices or images")
        t = self.g.input(name, self._pad_cols(q.reshape(-1, shape[-1])), s)
        return _Mat(t, shape, shape[-1])

    def _pad_cols(self, a, axis=-1):
        a = np.asarray(a)
        n = a.shape[axis]
        width = -(-n // self.lanes) * self.lanes
        if width == n:
            return a
        pad = [(0, 0)] * a.ndim
        pad[axis] = (0, width - n)
        return np.pad(a, pad)

    def get(self, node, i, kinds, what="input", peek=False):
        """The activation input ``i`` of ``node`` (resident, unless ``peek``: then the
        operator makes it resident itself, or reads it from HBM by row bands)."""
        name = node.input[i]
        if name in self.model.constants:
            raise _error(node, f"{what} {name!r} is a constant; expected an activation")
        value = self.env.peek(name) if peek else self.env[name]
        if not isinstance(value, kinds):
            raise _error(node, f"{what} {name!r} of shape {self.shape(name)} has a layout "
                               f"this operator does not take")
        return value

    def const(self, node, i, what):
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            return None
        if name not in self.model.constants:
            raise _error(node, f"{what} {name!r} must be a constant (an initializer)")
        return np.asarray(self.model.constants[name], np.float32)

    def weight_scale(self, node, i, out_axis):
        """The scale a pre-quantized model stored constant input i with: one, or one per
        output channel (its axis ``out_axis``); None when it has none (the compiler picks
        the weights' own)."""
        given = self.model.extra.get("weight_scales", {}).get(node.input[i])
        if given is None:
            return None
        scale, axis = given
        if scale.size == 1:
            return float(scale[0])
        return scale if axis == out_axis else None

    def padded(self, t):
        return t.tiles * self.lanes

    # driver -----------------------------------------------------------------------------

    def run(self):
        last_use = {name: i for i, node in enumerate(self.model.nodes) for name in node.input}
        last_use[self.model.output] = len(self.model.nodes)
        for i, node in enumerate(self.model.nodes):
            if id(node) not in self.done:
                try:
                    getattr(self, f"op_{node.op_type}")(node)
                except CompileError as error:
                    raise _error(node, str(error)) from None
            # Activations no later node reads give their scratchpad back.
            self.g.end_operator()
            self.g.keep_only([t for name, value in self.env.items()
                              if last_use.get(name, -1) > i for t in _tensors(value)])
        out = self.env[self.model.output]
        if not isinstance(out, _Mat):
            raise OnnxError(f"output {self.model.output!r} of shape "
                            f"{self.shape(self.model.output)} is not a matrix; end the graph "
                            f"with a Flatten, GlobalAveragePool or Gemm")
        return out

    def fused_epilogue(self, node, out_name, axis=-1):
        """Bias Add and activation after a matrix node: (bias or None, act, names). A bias
        is a constant that is 1 everywhere but on ``axis`` (the output columns or channels)."""
        bias, act, last = None, None, out_name
        add = self.only_user(last, ("Add",))
        if add is not None:
            other = _other(add, last)
            c = self.model.constants.get(other)
            rank = len(self.shape(last))
            if c is not None:
                c = np.asarray(c, np.float32)
                padded = (1,) * (rank - c.ndim) + c.shape
                if c.ndim > rank or any(d != 1 for i, d in enumerate(padded) if i != axis % rank):
                    raise _error(add, f"a constant of shape {c.shape} added to "
                                      f"{self.shape(last)}: supported is a bias along axis "
                                      f"{axis % rank}")
                bias, last = c.reshape(-1), add.output[0]
                self.done.add(id(add))
        nxt = self.only_user(last, tuple(_ACTS))
        pre = last
        if nxt is not None:
            act, last = self._function(nxt), nxt.output[0]
            self.done.add(id(nxt))
        return bias, act, pre, last

    @staticmethod
    def _function(node):
        """The table of an activation node (Gelu's ``approximate`` checked)."""
        if node.op_type != "Gelu":
            return _ACTS[node.op_type]
        approximate = attributes(node).get("approximate", "none")
        if approximate not in ("none", b"none", "tanh", b"tanh"):
            raise _error(node, f"approximate={approximate!r}: supported are none and tanh")
        return "gelu" if approximate in ("tanh", b"tanh") else "gelu_erf"

    def _act_scales(self, act, pre, last):
        if act in (None, "relu"):
            return self.scale(last), None
        return self.scale(pre), self.scale(last)

    # matrix operators -------------------------------------------------------------------------

    def op_Gemm(self, node):
        a = attributes(node)
        if a.get("transA", 0):
            raise _error(node, "transA=1 is not supported")
        x = self.get(node, 0, _Mat, peek=True)
        w = self.const(node, 1, "B")
        w_scale = self.weight_scale(node, 1, 0 if a.get("transB", 0) else 1)
        w = w.T if a.get("transB", 0) else w
        w = w * np.float32(a.get("alpha", 1.0))
        w_scale = None if w_scale is None else w_scale * abs(float(a.get("alpha", 1.0)))
        c = self.const(node, 2, "C")
        if c is not None and (c.ndim > 2 or any(d != 1 for d in ((1,) * (2 - c.ndim)
                                                                   + c.shape)[:1])):
            raise _error(node, f"C of shape {c.shape}: supported is a bias over the columns "
                               f"((N,), (1, N) or a scalar)")
        bias = np.zeros(w.shape[1], np.float32) if c is None else np.broadcast_to(
            c.reshape(-1) * np.float32(a.get("beta", 1.0)), (w.shape[1],)).astype(np.float32)
        self._linear(node, x, w, bias, w_scale)

    def op_MatMul(self, node):
        a_name, b_name = node.input
        consts = self.model.constants
        if b_name in consts and a_name not in consts:
            x = self.get(node, 0, _Mat, peek=True)
            w = self.const(node, 1, "B")
            if w.ndim != 2:
                raise _error(node, f"a constant B of shape {w.shape} (expected 2-D)")
            return self._linear(node, x, w, None, self.weight_scale(node, 1, 1))
        x, y = self.env.peek(a_name), self.env.peek(b_name)
        if isinstance(x, _Heads) and isinstance(y, _Heads):      # a head at a time
            return self._heads_matmul(node, x, y)
        x, y = self.env.get(a_name), self.env.get(b_name)
        if isinstance(x, _Mat) and isinstance(y, _Mat) and len(x.shape) == len(y.shape) == 2:
            if x.cols != self.padded(x.t) or y.shape[0] != x.cols:
                raise _error(node, f"{x.shape} @ {y.shape}: K must be a multiple of "
                                   f"{self.lanes}")
            out = node.output[0]
            t = self.g.matmul(node.name or out, x.t, y.t, self.scale(out),
                              transposed=y.transposed)
            self.env[out] = _Mat(t, self.shape(out), y.cols)
            return None
        raise _error(node, f"MatMul of shapes {self.shape(a_name) if a_name in self.values else '?'}"
                           f" and {self.shape(b_name) if b_name in self.values else '?'}: "
                           f"supported are activation @ constant, 2-D activation @ activation "
                           f"and per-head attention products")

    def _linear(self, node, x, w, bias, w_scale=None):
        if w.shape[0] != x.cols:
            raise _error(node, f"weights of {w.shape[0]} rows against {x.cols} input columns")
        extra, act, pre, last = self.fused_epilogue(node, node.output[0])
        # A QDQ model that rounds the product before its bias Add: so do we.
        product = node.output[0]
        product_scale = self.scale(product) if extra is not None and bias is None and \
            product in self.model.extra.get("qdq_scales", {}) else None
        if extra is not None:
            if extra.size != w.shape[1]:
                raise _error(node, f"bias of shape {extra.shape} for {w.shape[1]} outputs")
            bias = (bias if bias is not None else 0) + extra.reshape(-1)
        bias = np.zeros(w.shape[1], np.float32) if bias is None else bias
        w_pad = np.zeros((self.padded(x.t), w.shape[1]), np.float32)
        w_pad[:w.shape[0]] = w
        out_scale, act_scale = self._act_scales(act, pre, last)
        t = self.g.linear(node.name or last, x.t, w_pad, bias, out_scale, act=act,
                          act_scale=act_scale, w_scale=w_scale, product_scale=product_scale)
        shape = self.shape(last)
        self.env[last] = _Mat(t, shape, w.shape[1])

    def op_Conv(self, node):
        a = attributes(node)
        x = self.get(node, 0, _Img, peek=True)
        w = self.const(node, 1, "W")
        b = self.const(node, 2, "B")
        if a.get("group", 1) != 1 or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            raise _error(node, "group and auto_pad are not supported (pads are)")
        if w.ndim != 4:
            raise _error(node, f"weights of shape {list(w.shape)}: supported are 2-D "
                               f"convolutions")
        strides = tuple(a.get("strides", (1, 1)))
        dilations = tuple(a.get("dilations", (1, 1)))
        pads = tuple(a.get("pads", (0,) * 4))
        cin = x.shape[1]
        if w.shape[1] != cin:
            raise _error(node, f"weights for {w.shape[1]} input channels; the input has {cin}")
        kh, kw = w.shape[2:]
        w_k = np.zeros((kh, kw, self.padded(x.t), w.shape[0]), np.float32)
        w_k[:, :, :cin] = w.transpose(2, 3, 1, 0)
        bias = np.zeros(w.shape[0], np.float32) if b is None else b
        extra, act, pre, last = self.fused_epilogue(node, node.output[0], axis=1)
        if extra is not None:
            bias = bias + np.broadcast_to(extra.reshape(-1), bias.shape)
        if act not in (None, "relu"):
            raise _error(node, f"Conv followed by {act}: only Relu fuses into a convolution")
        t = self.g.conv(node.name or last, x.t, w_k, bias, self.scale(last), act=act,
                        stride=strides, pads=pads, dilation=dilations,
                        w_scale=self.weight_scale(node, 1, 0))
        self.env[last] = _Img(t, self.shape(last))

    def _heads_matmul(self, node, x, y):
        self._check_heads(node, x, y)
        chain = self._attention_chain(node)
        if chain is not None:
            return self._attention(node, x, y, *chain)
        out = node.output[0]
        width = self._product_tiles(y)
        target = self._merge_target(out, x.parts[0].rows, width * len(x.parts))
        parts = []
        for h, (a, b) in enumerate(zip(x.parts, y.parts)):
            a, b = self._head_parts(a, b)
            parts.append(self.g.matmul(f"{node.name or out}.{h}", a, b, self.scale(out),
                                       out=self._head_view(target, h, width),
                                       transposed=y.transposed))
            self._give_back((x.parts[h], y.parts[h]), (a, b))
        self.env[out] = _Heads(parts, self.shape(out), "HS")

    def _head_parts(self, *parts):
        """One head's parts resident (loaded back alone where they were spilled)."""
        return [self.g.resident(t) for t in parts]

    def _give_back(self, originals, parts):
        """After a head: the ``parts`` :meth:`_head_parts` loaded back for ``originals``
        give their rows back."""
        for old, new in zip(originals, parts):
            if new is not old:
                self.g.release(new)

    def _check_heads(self, node, x, y):
        if x.order != "HS" or y.order != "HS" or len(x.parts) != len(y.parts):
            raise _error(node, "per-head MatMul needs (…, heads, rows, cols) operands with "
                               "equal heads")
        for h, (a, b) in enumerate(zip(x.parts, y.parts)):
            self._check_head(node, h, a, b, y.transposed)

    def _check_head(self, node, h, a, b, transposed=False):
        if transposed:      # b holds the head's B^T: K is its columns
            if a.tiles != b.tiles or b.rows % self.lanes:
                raise _error(node, f"head {h}: {self.padded(a)} columns against "
                                   f"{self.padded(b)} rows of {b.rows} columns (a multiple "
                                   f"of {self.lanes})")
        elif self.padded(a) != b.rows:
            raise _error(node, f"head {h}: {self.padded(a)} columns against {b.rows} rows")

    def _product_tiles(self, y):
        """Column tiles of a per-head product with B = ``y``."""
        return -(-y.parts[0].rows // self.lanes) if y.transposed else y.parts[0].tiles

    def _merge_target(self, out, rows, tiles, in_hbm=False):
        """The merged tensor per-head results are written into when a Transpose + Reshape
        merge the heads of ``out`` (no copy; ``in_hbm``: a tensor born in HBM), else None."""
        merge = self.only_user(out, ("Transpose",))
        merge = merge and self.only_user(merge.output[0], ("Reshape",))
        if merge is None:
            return None
        if in_hbm:
            return self.g.born_spilled(out, rows, tiles)
        return self.g.buffer(out, rows, tiles, self.scale(out))

    @staticmethod
    def _head_view(target, h, tiles):
        return target.view(h * tiles, tiles) if target is not None else None

    def _attention_chain(self, node):
        """Scores -> (scalar Mul/Div)* -> Softmax -> MatMul with per-head values computed
        already: (retag nodes, softmax node, context node), or None."""
        retags, last = [], node.output[0]
        while True:
            nxt = self.only_user(last, ("Mul", "Div"))
            if nxt is None or self._scalar_factor(nxt) is None:
                break
            retags.append(nxt)
            last = nxt.output[0]
        softmax = self.only_user(last, ("Softmax",))
        context = softmax and self.only_user(softmax.output[0], ("MatMul",))
        if context is None or context.input[0] != softmax.output[0] \
                or not isinstance(self.env.peek(context.input[1]), _Heads):
            return None
        return retags, softmax, context

    def _attention(self, node, q, k, retags, softmax, context):
        """Attention one head at a time: scores, softmax and context of head h, then its
        scores and probabilities give their scratchpad back (one head's are live at once,
        not every head's)."""
        v = self.env.peek(context.input[1])
        if v.order != "HS" or len(v.parts) != len(q.parts):
            raise _error(context, "per-head MatMul needs (…, heads, rows, cols) operands with "
                                  "equal heads")
        out = context.output[0]
        # When q, k and v do not fit beside the context and one head's scores and
        # probabilities (twice: the next head's may be allocated before this one's rest),
        # they go to HBM and each head's parts come back for that head alone.
        # When the context does not fit either, and is merged (written in place), it is
        # born in HBM: each head's context is stored there and gives its rows back. When
        # one head's scores do not fit either, each head runs by bands of query rows
        # (softmax is row-local), each band's context stored to HBM.
        rows, width, heads = q.parts[0].rows, self._product_tiles(v), len(q.parts)
        scores = self._product_tiles(k)
        per_head = 4 * rows * scores
        streamed = self.g.stream(q.parts + k.parts + v.parts, per_head + rows * width * heads)
        one_head = sum(p.rows * p.tiles for p in (q.parts[0], k.parts[0], v.parts[0]))
        in_hbm = streamed and not self.g.fits(per_head + rows * width * (heads + 1) + one_head)
        banded = in_hbm and not self.g.fits(per_head + rows * width + one_head)
        target = self._merge_target(out, rows, width * heads, in_hbm)
        if target is None:              # not merged: each head's context is a tensor
            in_hbm = banded = False
        label = context.name or out
        parts = []
        for h, originals in enumerate(zip(q.parts, k.parts, v.parts)):
            if banded:
                b, c = self._head_parts(*originals[1:])
                band = self.g.band_rows(f"{label}.{h}", rows, [originals[0].tiles, scores, 3,
                                                               scores, 2, width, 3])
                for r0 in range(0, rows, band):
                    a = self.g.load_band(originals[0], r0, min(band, rows - r0))
                    part = self._head_attention(node, h, a, b, c, k, v, retags, softmax,
                                                context, f" rows {r0}")
                    self.g.release(a)
                    self.g.store_rows(target, part, r0, h * width, f"{label}.{h} store rows {r0}")
                    self.g.release(part)
                self._give_back(originals[1:], (b, c))
                parts.append(self._head_view(target, h, width))
                continue
            a, b, c = self._head_parts(*originals)
            part = self._head_attention(node, h, a, b, c, k, v, retags, softmax, context, "",
                                        out=None if in_hbm else self._head_view(target, h, width))
            if in_hbm:
                self.g.store_rows(target, part, 0, h * width, f"{label}.{h} store")
                self.g.release(part)
                part = self._head_view(target, h, width)
            parts.append(part)
            self._give_back(originals, (a, b, c))
        self.done.update(id(n) for n in (*retags, softmax, context))
        self.env[out] = _Heads(parts, self.shape(out), "HS")

    def _head_attention(self, node, h, a, b, c, k, v, retags, softmax, context, suffix,
                        out=None):
        """Head h's context for queries ``a``, keys ``b`` and values ``c`` (the parts of
        ``k`` and ``v``): its scores and probabilities give their rows back."""
        heads = len(k.parts)
        s = self.g.matmul(f"{node.name or node.output[0]}.{h}{suffix}", a, b,
                          self.scale(node.output[0]), transposed=k.transposed)
        scaled = s
        for retag in retags:
            scaled = self._retag(retag, scaled)
        p = self._softmax_part(softmax, scaled, h, heads)
        self.g.release(s)
        self._check_head(context, h, p, c, v.transposed)
        name = context.name or context.output[0]
        part = self.g.matmul(f"{name}.{h}{suffix}", p, c, self.scale(context.output[0]),
                             out=out, transposed=v.transposed)
        self.g.release(p)
        return part

    # vector operators ---------------------------------------------------------------------------

    def op_Add(self, node):
        consts = [n for n in node.input if n in self.model.constants]
        if consts:
            raise _error(node, f"adding the constant {consts[0]!r} is supported only as the "
                               f"bias of the MatMul, Gemm or Conv right before it")
        a, b = (self.get(node, i, (_Mat, _Img), peek=True) for i in range(2))
        self._same_shapes(node, a, b)
        relu = self.only_user(node.output[0], ("Relu",))
        last = relu.output[0] if relu is not None else node.output[0]
        if relu is not None:
            self.done.add(id(relu))
        name = node.name or last

        def add(ta, tb):
            return self.g.add(name, ta, tb, relu=relu is not None, out_scale=self.scale(last))
        t = self.g.rowwise(name, add, [a.t, b.t], a.t.tiles)
        self.env[last] = replace(a, t=t, shape=self.shape(last))

    def _same_shapes(self, node, a, b):
        shapes = [self.shape(n) for n in node.input] + [self.shape(node.output[0])]
        if type(a) is not type(b) or len(set(shapes)) != 1 or a.t.ref.shape != b.t.ref.shape:
            raise _error(node, f"operands of shapes {shapes[0]} and {shapes[1]}: supported are "
                               f"equal shapes (no broadcasting)")

    def op_Mul(self, node):
        self._scalar_or_elementwise(node, divide=False)

    def op_Div(self, node):
        self._scalar_or_elementwise(node, divide=True)

    def _scalar_factor(self, node):
        """The factor a Mul or Div by a positive scalar constant multiplies the scale by,
        or None."""
        consts = [i for i, n in enumerate(node.input) if n in self.model.constants]
        if len(consts) != 1:
            return None
        c = np.ravel(self.model.constants[node.input[consts[0]]])
        divide = node.op_type == "Div"
        if c.size != 1 or float(c[0]) <= 0 or (divide and consts[0] != 1):
            return None
        return 1 / float(c[0]) if divide else float(c[0])

    def _retag(self, node, t):
        """``t`` through a scalar Mul/Div: the same integers at another scale."""
        out = node.output[0]
        return self.fit(replace(t, scale=t.scale * self._scalar_factor(node)), out,
                        node.name or out)

    def _scalar_or_elementwise(self, node, divide):
        out = node.output[0]
        if any(n in self.model.constants for n in node.input):
            if self._scalar_factor(node) is None:
                raise _error(node, "a constant operand is supported only as a positive scalar "
                                   "(a change of scale)")
            x = self.env[next(n for n in node.input if n not in self.model.constants)]
            if isinstance(x, _Heads):
                self.env[out] = _Heads([self._retag(node, t) for t in x.parts], self.shape(out),
                                       x.order)
            else:
                self.env[out] = replace(x, t=self._retag(node, x.t), shape=self.shape(out))
            return
        if divide:
            raise _error(node, "division of two activations is not supported")
        a, b = (self.get(node, i, (_Mat, _Img)) for i in range(2))
        self._same_shapes(node, a, b)
        t = self.g.mul(node.name or out, a.t, b.t, self.scale(out))
        self.env[out] = replace(a, t=t, shape=self.shape(out))

    def _table(self, node):
        out = node.output[0]
        x = self.get(node, 0, (_Mat, _Img))
        function = self._function(node)
        if isinstance(x, _Img) and function == "sigmoid":
            raise _error(node, "Sigmoid of an image would turn its zero border (the padding "
                               "of the next convolution or pool) into 0.5; supported on "
                               "matrices")
        t = self.g.activation(node.name or out, x.t, function, self.scale(out))
        self.env[out] = replace(x, t=t)

    op_Relu = op_Sigmoid = op_Tanh = op_Gelu = _table

    def op_Softmax(self, node):
        out = node.output[0]
        x = self.env[node.input[0]]
        if isinstance(x, _Mat) and _cols_axis(x.shape, x.cols, x.t.rows) != \
                len(self.shape(node.input[0])) - 1:
            raise _error(node, f"softmax over the last axis of {x.shape}, which is not the "
                               f"matrix's columns")
        parts = x.parts if isinstance(x, _Heads) and x.order == "HS" else (
            [x.t] if isinstance(x, _Mat) else None)
        if parts is None:
            raise _error(node, "softmax needs a matrix or per-head matrices")
        results = [self._softmax_part(node, t, h, len(parts)) for h, t in enumerate(parts)]
        self.env[out] = (_Heads(results, self.shape(out), "HS") if isinstance(x, _Heads)
                         else replace(x, t=results[0]))

    def _softmax_part(self, node, t, h, heads):
        """Softmax of one matrix (head ``h`` of ``heads``) over its columns."""
        axis = attributes(node).get("axis", -1)
        out = node.output[0]
        rank = len(self.shape(node.input[0]))
        if axis not in (-1, rank - 1):
            raise _error(node, f"axis {axis}: softmax is over the last axis")
        cols = self.shape(out)[-1]
        if cols != self.padded(t):
            raise _error(node, f"softmax over {cols} columns: it must be a multiple of "
                               f"{self.lanes} (padding would take part)")
        name = node.name or out
        return self.g.softmax(f"{name}.{h}" if heads > 1 else name, t, self.scale(out))

    def op_LayerNormalization(self, node):
        a = attributes(node)
        out = node.output[0]
        x = self.get(node, 0, _Mat, peek=True)
        if a.get("axis", -1) not in (-1, len(x.shape) - 1) or \
                _cols_axis(x.shape, x.cols, x.t.rows) != len(x.shape) - 1:
            raise _error(node, f"axis {a.get('axis')}: layer normalization is over the last axis")
        if x.cols != self.padded(x.t):
            raise _error(node, f"{x.cols} columns: a multiple of {self.lanes} is needed "
                               f"(padding would take part)")
        gamma = self.const(node, 1, "scale")
        beta = self.const(node, 2, "B")
        for c, what in ((gamma, "scale"), (beta, "B")):
            if c is not None and c.size not in (1, x.cols):
                raise _error(node, f"{what} of shape {c.shape}: expected ({x.cols},)")
        gamma = np.ones(x.cols, np.float32) if gamma is None else np.broadcast_to(
            gamma.reshape(-1), (x.cols,))
        beta = np.zeros(x.cols, np.float32) if beta is None else np.broadcast_to(
            beta.reshape(-1), (x.cols,))
        name = node.name or out
        epsilon = float(a.get("epsilon", 1e-5))
        t = self.g.rowwise(name, lambda t: self.g.layernorm(name, t, gamma, beta, self.scale(out),
                                                           epsilon),
                           [x.t], x.t.tiles, scratch=max(2 * x.t.tiles, 8))
        self.env[out] = replace(x, t=t)

    def _pool(self, node, kind):
        a = attributes(node)
        x = self.get(node, 0, _Img, peek=True)
        if a.get("ceil_mode", 0) or set(a.get("dilations", (1,))) != {1} \
                or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            raise _error(node, "ceil_mode, auto_pad and dilations are not supported (pads are)")
        kernel = tuple(a["kernel_shape"])
        out = node.output[0]
        t = self.g.pool(node.name or out, x.t, kind, kernel, tuple(a.get("strides", (1, 1))),
                        tuple(a.get("pads", (0,) * 4)), bool(a.get("count_include_pad", 0)))
        self.env[out] = _Img(self.fit(t, out, node.name or out), self.shape(out))

    def op_MaxPool(self, node):
        if len(node.output) > 1 and node.output[1]:
            raise _error(node, "the Indices output is not supported")
        self._pool(node, "max")

    def op_AveragePool(self, node):
        self._pool(node, "avg")

    def op_GlobalAveragePool(self, node):
        out = node.output[0]
        x = self.get(node, 0, _Img, peek=True)
        t = self.g.global_avgpool(node.name or out, x.t, self.scale(out))
        self.env[out] = _Mat(t, self.shape(out), x.shape[1])

    def op_Gather(self, node):
        table = self.const(node, 0, "data")
        if attributes(node).get("axis", 0) != 0 or table.ndim != 2:
            raise _error(node, "supported is an embedding lookup: axis 0 of a 2-D table")
        ids = self.get(node, 1, _Ids, "indices")
        out = node.output[0]
        t = self.g.embedding(node.name or out, self._pad_cols(table), ids.values.reshape(-1),
                             scale=self.scale(out))
        self.env[out] = _Mat(t, self.shape(out), table.shape[1])

    def op_Concat(self, node):
        out = node.output[0]
        shape = self.shape(out)
        axis = attributes(node)["axis"] % len(shape)
        parts = [self.get(node, i, _Mat, peek=True) for i in range(len(node.input))]
        if any(_cols_axis(p.shape, p.cols, p.t.rows) != axis for p in parts):
            raise _error(node, f"axis {axis} of {shape}: concatenation is along the columns "
                               f"of matrices")
        name = node.name or out

        def concat(*ts):
            return self.g.concat(name, [self.fit(t, out, f"{name}.{i}") for i, t in enumerate(ts)])
        t = self.g.rowwise(name, concat, [p.t for p in parts], sum(p.t.tiles for p in parts))
        cols = sum(p.cols for p in parts)
        if any(p.cols != self.padded(p.t) for p in parts[:-1]):
            # Parts narrower than their tiles: side by side by whole tiles, then their
            # columns packed together by the MEs (a 0/1 placement matrix, exact).
            lanes = self.lanes
            place = np.zeros((t.tiles * lanes, -(-cols // lanes) * lanes), np.float32)
            row = column = 0
            for p in parts:
                place[row + np.arange(p.cols), column + np.arange(p.cols)] = 1
                row += p.t.tiles * lanes
                column += p.cols
            t = self.g.linear(f"{name}.pack", self.g.resident(t), place,
                              np.zeros(place.shape[1], np.float32), t.scale)
        self.env[out] = _Mat(t, shape, cols)

    # layout -------------------------------------------------------------------------------------

    def _relabel(self, node):
        """Reshape, Flatten, Squeeze, Unsqueeze, Identity: a new shape for the same data
        (where it lies: a spilled value stays in HBM until an operator reads it)."""
        out = node.output[0]
        shape = self.shape(out)
        x = self.env.peek(node.input[0])
        if isinstance(x, _Mat):
            if _cols_axis(shape, x.cols, x.t.rows) is not None:
                self.env[out] = replace(x, shape=shape)
                return
            heads = shape[-2:]
            if (len(shape) >= 3 and all(d == 1 for d in shape[:-3]) and shape[-3] == x.t.rows
                    and heads[0] * heads[1] == x.cols and x.cols == self.padded(x.t)):
                if heads[1] % self.lanes == 0:
                    tiles = heads[1] // self.lanes
                    parts = [x.t.view(h * tiles, tiles) for h in range(heads[0])]
                elif self.lanes % heads[1] == 0:
                    parts = self._split_narrow(node, x.t, heads[1])
                else:
                    raise _error(node, f"heads of {heads[1]} columns: supported are multiples "
                                       f"and divisors of the {self.lanes} lanes")
                self.env[out] = _Heads(parts, shape, "SH")
                return
        elif isinstance(x, _Heads) and x.order == "SH" and len(shape) >= 2 \
                and shape[-1] == len(x.parts) * self.padded(x.parts[0]):
            self.env[out] = _Mat(self._merge(node, x.parts), shape, shape[-1])
            return
        elif isinstance(x, _Heads) and x.order == "SH" and len(shape) >= 2 \
                and x.shape[-1] < self.lanes and shape[-1] == len(x.parts) * x.shape[-1] \
                and all(p.tiles == 1 for p in x.parts):
            self.env[out] = _Mat(self._merge_narrow(node, x.parts, x.shape[-1]), shape,
                                 shape[-1])
            return
        elif isinstance(x, _Img) and x.shape[2:] == (1, 1) and len(shape) == 2:
            raise _error(node, "a 1x1 image; use GlobalAveragePool before Flatten")
        raise _error(node, f"{self.shape(node.input[0])} -> {shape} is not layout-only here "
                           f"(supported: matrix views, splitting columns into heads of "
                           f"multiples or divisors of {self.lanes}, merging them back)")

    op_Reshape = op_Flatten = op_Squeeze = op_Unsqueeze = op_Identity = _relabel

    def _split_narrow(self, node, t, width):
        """Heads of ``width`` columns, several to a tile: each moved to columns 0..width-1
        of a tile of its own (the rest zero) by the MEs, a product with a 0/1 selection
        matrix over the one tile it lies in, requantized to its own scale (exact)."""
        lanes, name = self.lanes, node.name or node.output[0]
        t = self.g.resident(t)
        parts = []
        for h in range(t.tiles * lanes // width):
            tile, offset = divmod(h * width, lanes)
            select = np.zeros((lanes, lanes), np.float32)
            select[offset + np.arange(width), np.arange(width)] = 1
            parts.append(self.g.linear(f"{name}.head{h}", t.view(tile, 1), select,
                                       np.zeros(lanes, np.float32), t.scale))
        return parts

    def _merge_narrow(self, node, parts, width):
        """Heads of ``width`` columns (one tile each, columns 0..width-1) packed back into
        tiles of lanes / width heads each, by the MEs (selection matrices placing each
        head's columns), then the tiles side by side."""
        lanes, name = self.lanes, node.name or node.output[0]
        per_tile = lanes // width
        unpacked = self.g.resident(self._merge(node, parts))
        tiles = []
        for tile in range(-(-len(parts) // per_tile)):
            count = min(per_tile, len(parts) - tile * per_tile)
            place = np.zeros((count * lanes, lanes), np.float32)
            for i in range(count):
                place[i * lanes + np.arange(width), i * width + np.arange(width)] = 1
            tiles.append(self.g.linear(f"{name}.tile{tile}", unpacked.view(tile * per_tile, count),
                                       place, np.zeros(lanes, np.float32), unpacked.scale))
        return tiles[0] if len(tiles) == 1 else self.g.concat(f"{name}.merge", tiles)

    def _merge(self, node, parts):
        first = parts[0]
        if all(p.region.start == first.region.start + i * first.rows * first.tiles
               and p.rows == first.rows and p.scale == first.scale and p.home == first.home
               for i, p in enumerate(parts)):
            total = first.tiles * len(parts)
            return Tensor(replace(first.region, size=first.rows * total), first.rows, total,
                          first.scale, np.concatenate([p.ref for p in parts], axis=1),
                          home=first.home)
        return self.g.concat(node.name or node.output[0], [self.g.resident(p) for p in parts])

    def op_Transpose(self, node):
        out = node.output[0]
        x = self.env.peek(node.input[0])
        rank = len(self.shape(node.input[0]))
        perm = list(attributes(node).get("perm", range(rank)[::-1]))
        lead = rank - 3
        name = node.name or out
        # Read only as a MatMul's B: kept as it is, the MatMul loads its rows as weight
        # columns (no transpose is computed).
        user = self.only_user(out, ("MatMul",))
        lazy = user is not None and list(user.input).index(out) == 1
        if isinstance(x, _Mat) and rank >= 2 and perm[:-2] == list(range(rank - 2)) \
                and perm[-2:] == [rank - 1, rank - 2] and int(np.prod(self.shape(node.input[0])[:-2])) == 1:
            # (K, the columns, whole tiles: padding columns need not be zero, e.g. after a
            # lookup table, and would take part in the product.)
            if x.cols != self.padded(x.t):
                raise _error(node, f"transposing {x.cols} columns needs a multiple of "
                                   f"{self.lanes}")
            if lazy:
                self.env[out] = _Mat(x.t, self.shape(out), self.shape(out)[-1], transposed=True)
                return
            t = self.g.transpose(name, self.g.resident(x.t))
            self.env[out] = _Mat(t, self.shape(out), self.shape(out)[-1])
            return
        if isinstance(x, _Heads) and lead >= 0 and perm[:lead] == list(range(lead)):
            tail = [p - lead for p in perm[lead:]]
            swap = [1, 0, 2]
            if tail == swap:
                order = "SH" if x.order == "HS" else "HS"
                self.env[out] = _Heads(x.parts, self.shape(out), order)
                return
            if (x.order == "SH" and tail == [1, 2, 0]) or (x.order == "HS" and tail == [0, 2, 1]):
                if lazy:
                    self.env[out] = _Heads(x.parts, self.shape(out), "HS", transposed=True)
                    return
                parts = [self.g.transpose(f"{name}.{h}", self.g.resident(t))
                         for h, t in enumerate(x.parts)]
                self.env[out] = _Heads(parts, self.shape(out), "HS")
                return
        raise _error(node, f"perm {perm} of shape {self.shape(node.input[0])}: supported are "
                           f"swapping the last two axes of a matrix and the head moves of "
                           f"attention")


def lower(g, model, scales, inputs, values):
    """Lower ``model`` onto Graph ``g`` for ``inputs`` (the float run's ``values`` give every
    shape); returns the output: ``.t`` its Tensor (rows x padded columns), ``.cols`` the
    model's columns."""
    return _Lowering(g, model, scales, values, inputs).run()

