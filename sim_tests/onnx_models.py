"""ONNX test models built in code with onnx.helper (no downloads): one per supported
operator, and three whole models written the way exporters emit them."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A graph under construction: initializers from a seeded generator."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.count = [], [], [], 0

    def input(self, name, shape, elem=TensorProto.FLOAT):
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def const(self, value, dtype=np.float32):
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def weight(self, *shape, std=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        return self.const(self.rng.normal(0, std or np.sqrt(2 / fan_in), shape))

    def op(self, op, inputs, **attrs):
        self.count += 1
        out = f"{op.lower()}{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def linear(self, x, k, n, act=None):
        y = self.op("Add", [self.op("MatMul", [x, self.weight(k, n)]),
                            self.const(self.rng.normal(0, 0.1, n))])
        return self.op(act, [y]) if act else y

    def conv(self, x, cin, cout, k=3, stride=1, act="Relu"):
        y = self.op("Conv", [x, self.weight(cout, cin, k, k), self.const(self.rng.normal(0, 0.1, cout))],
                    kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride])
        return self.op(act, [y]) if act else y

    def model(self, output, opset=17, dims=None):
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, dims)
        graph = helper.make_graph(self.nodes, "test", self.inputs, [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model


def mlp(seed=0):
    """Gemm (PyTorch's Linear: transB=1) + Relu, x3, then a 10-way classifier."""
    n = Net(seed)
    h = n.input("x", [16, 24])
    for k, out in ((24, 64), (64, 32)):
        h = n.op("Relu", [n.op("Gemm", [h, n.weight(out, k, std=np.sqrt(2 / k)),
                                        n.const(n.rng.normal(0, 0.1, out))], transB=1)])
    h = n.op("Gemm", [h, n.weight(32, 10), n.const(n.rng.normal(0, 0.1, 10))])
    return n.model(h, dims=[16, 10])


def cnn(seed=0):
    """Conv stem, a residual block, a stride-2 3x3 conv, a 1x1 conv, average pool, global
    average pool, classifier (NCHW, 3 input channels)."""
    n = Net(seed)
    x = n.input("image", [4, 3, 8, 8])
    stem = n.conv(x, 3, 8)
    h = n.conv(stem, 8, 8)
    h = n.conv(h, 8, 8, act=None)
    h = n.op("Relu", [n.op("Add", [stem, h])])
    h = n.conv(h, 8, 16, stride=2)
    h = n.conv(h, 16, 16, k=1)
    h = n.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = n.op("Flatten", [n.op("GlobalAveragePool", [h])], axis=1)
    return n.model(n.op("Gemm", [h, n.weight(16, 10), n.const(n.rng.normal(0, 0.1, 10))]),
                   dims=[4, 10])


def encoder(seed=0, tokens=16, width=32, heads=2, opset=17):
    """A transformer encoder block as PyTorch exports it before opset 17's LayerNorm:
    Reshape/Transpose into heads, MatMul, Div by sqrt(d), Softmax, MatMul, Transpose/
    Reshape back, residual Add, LayerNorm as ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add, GELU as
    its Erf formula."""
    n = Net(seed)
    dk = width // heads
    x = n.input("x", [1, tokens, width])
    split = n.const([1, tokens, heads, dk], np.int64)
    merged = n.const([1, tokens, width], np.int64)

    def heads_of(h, perm):
        return n.op("Transpose", [n.op("Reshape", [h, split])], perm=perm)

    def layernorm(h):
        axes = {"axes": [-1]} if opset < 18 else {}
        extra = [] if opset < 18 else [n.const([-1], np.int64)]
        mean = n.op("ReduceMean", [h] + extra, **axes)
        d = n.op("Sub", [h, mean])
        var = n.op("ReduceMean", [n.op("Pow", [d, n.const(2.0)])] + extra, **axes)
        y = n.op("Div", [d, n.op("Sqrt", [n.op("Add", [var, n.const(1e-5)])])])
        y = n.op("Mul", [y, n.const(n.rng.uniform(0.5, 1.5, width))])
        return n.op("Add", [y, n.const(n.rng.normal(0, 0.1, width))])

    q = heads_of(n.linear(x, width, width), [0, 2, 1, 3])
    k = heads_of(n.linear(x, width, width), [0, 2, 3, 1])
    v = heads_of(n.linear(x, width, width), [0, 2, 1, 3])
    scores = n.op("Div", [n.op("MatMul", [q, k]), n.const(np.sqrt(dk))])
    context = n.op("MatMul", [n.op("Softmax", [scores], axis=-1), v])
    context = n.op("Reshape", [n.op("Transpose", [context], perm=[0, 2, 1, 3]), merged])
    h = layernorm(n.op("Add", [x, n.linear(context, width, width)]))
    f = n.linear(h, width, 2 * width)
    f = n.op("Mul", [n.op("Mul", [f, n.op("Add", [n.op("Erf", [n.op("Div", [f, n.const(np.sqrt(2))])]),
                                                    n.const(1.0)])]), n.const(0.5)])
    out = layernorm(n.op("Add", [h, n.linear(f, 2 * width, width)]))
    return n.model(out, opset=opset, dims=[1, tokens, width])


def single_op(op):
    """A model around one operator (what it is tested with comes before or after it)."""
    n = Net(7)
    if op in IMAGE_OPS:
        x = n.input("image", IMAGE_OPS[op][0])
        h = n.op(IMAGE_OPS[op][1], [x] + ([n.weight(*IMAGE_OPS[op][2])] if IMAGE_OPS[op][2]
                                          else []), **IMAGE_OPS[op][3])
        return n.model(n.op("Flatten", [n.op("GlobalAveragePool", [h])], axis=1))
    if op in ("Conv", "Conv-stride2", "Conv-1x1", "Conv-1x1-stride2", "MaxPool", "AveragePool",
              "GlobalAveragePool"):
        x = n.input("image", [2, 8, 6, 6] if "stride2" not in op else [2, 8, 8, 8])
        if op.startswith("Conv"):
            k = 1 if "1x1" in op else 3
            h = n.conv(x, 8, 8, k=k, stride=2 if "stride2" in op else 1, act=None)
        elif op == "GlobalAveragePool":
            h = x
        else:
            h = n.op(op, [x], kernel_shape=[2, 2], strides=[2, 2])
        return n.model(n.op("Flatten", [n.op("GlobalAveragePool", [h])], axis=1))
    if op == "Gather":
        ids = n.input("ids", [16], TensorProto.INT64)
        return n.model(n.op("Gather", [n.const(n.rng.normal(0, 1, (40, 16))), ids]))
    x = n.input("x", [16, 16])
    two = lambda: n.op("MatMul", [x, n.weight(16, 16)])
    body = {
        "Gemm": lambda: n.op("Gemm", [x, n.weight(8, 16), n.const(n.rng.normal(0, 0.1, 8))],
                             transB=1, alpha=0.5, beta=2.0),
        "MatMul": lambda: n.op("MatMul", [x, n.weight(16, 24)]),
        "MatMul-activations": lambda: n.op("MatMul", [x, n.op("Transpose", [two()], perm=[1, 0])]),
        # B^T of 13 rows: loaded as weight columns (ldw t), the last tile 5 columns wide.
        "MatMul-transposed-13": lambda: n.op("MatMul", [x, n.op("Transpose", [n.op(
            "MatMul", [n.input("z", [13, 16]), n.weight(16, 16)])], perm=[1, 0])]),
        "Relu": lambda: n.op("Relu", [x]),
        "Sigmoid": lambda: n.op("Sigmoid", [x]),
        "Tanh": lambda: n.op("Tanh", [x]),
        "Gelu": lambda: n.op("Gelu", [x]),
        "Gelu-erf-pattern": lambda: n.op("Mul", [n.op("Mul", [x, n.const(0.5)]), n.op(
            "Add", [n.op("Erf", [n.op("Mul", [x, n.const(1 / np.sqrt(2))])]), n.const(1.0)])]),
        "Add": lambda: n.op("Add", [x, two()]),
        "Mul": lambda: n.op("Mul", [x, two()]),
        "Div-scalar": lambda: n.op("Add", [n.op("Div", [x, n.const(4.0)]), two()]),
        "Softmax": lambda: n.op("Softmax", [x], axis=-1),
        "LayerNormalization": lambda: n.op("LayerNormalization", [
            x, n.const(n.rng.uniform(0.5, 1.5, 16)), n.const(n.rng.normal(0, 0.1, 16))],
            axis=-1),
        "Flatten": lambda: n.op("Flatten", [n.op("Reshape", [x, n.const([16, 1, 16], np.int64)])],
                                axis=1),
        "Reshape": lambda: n.op("Reshape", [x, n.const([1, 16, 16], np.int64)]),
        "Transpose": lambda: n.op("Transpose", [x], perm=[1, 0]),
        "Concat": lambda: n.op("Concat", [x, two()], axis=1),
    }
    return n.model(body[op](), opset=20 if op == "Gelu" else 17)


#: Image operators at sizes and settings of common vision nets: (input shape, op, weight
#: shape or None, attributes). Inputs are signed, so padding must never win a MaxPool.
IMAGE_OPS = {
    "Conv-7x7-stride2-pad3": ([1, 3, 15, 15], "Conv", (8, 3, 7, 7),
                              dict(kernel_shape=[7, 7], strides=[2, 2], pads=[3, 3, 3, 3])),
    "Conv-3x3-dilation2": ([2, 8, 9, 9], "Conv", (8, 8, 3, 3),
                           dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])),
    "Conv-5x3-valid-stride3x1": ([1, 8, 11, 7], "Conv", (16, 8, 5, 3),
                                 dict(kernel_shape=[5, 3], strides=[3, 1])),
    "Conv-3x3-asymmetric-pads": ([1, 8, 6, 7], "Conv", (8, 8, 3, 3),
                                 dict(kernel_shape=[3, 3], pads=[0, 2, 1, 0])),
    "MaxPool-3x3-stride2-pad1": ([2, 8, 9, 9], "MaxPool", None,
                                 dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "MaxPool-2x3-stride1": ([1, 8, 5, 6], "MaxPool", None, dict(kernel_shape=[2, 3])),
    "AveragePool-3x3-stride2-pad1": ([2, 8, 9, 9], "AveragePool", None,
                                     dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "AveragePool-count-pads": ([1, 8, 7, 7], "AveragePool", None,
                               dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                    count_include_pad=1)),
    "GlobalAveragePool-20x20": ([2, 8, 20, 20], "Relu", None, {}),
}

SINGLE_OPS = tuple(IMAGE_OPS) + ("Gemm", "MatMul", "MatMul-activations", "MatMul-transposed-13", "Conv", "Conv-stride2", "Conv-1x1",
              "Conv-1x1-stride2", "Relu", "Sigmoid", "Tanh", "Gelu", "Gelu-erf-pattern", "Add",
              "Mul", "Div-scalar", "Softmax", "LayerNormalization", "MaxPool", "AveragePool",
              "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Concat", "Gather")
