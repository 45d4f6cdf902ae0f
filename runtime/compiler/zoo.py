"""The built-in models: four after the paper's MLPerf workloads at sizes the RTL runs in
seconds, and full-size ones, as ONNX graphs built in code
(weights from a seed, no downloads) with size parameters.

They go through the same importer as a user's ONNX file (onnx_import.py), and
`neu10 export NAME -o NAME.onnx` writes them out:

| model | what it is | sizes (defaults) | metric |
|---|---|---|---|
| ncf | NCF recommender: GMF + MLP towers over user/item embeddings, sigmoid | batch 16, users 64, items 64, dim 8 | relative L2 error |
| resnet | CNN: 3x3 conv stem, a residual block, 2x2 max pool, conv, global average pool, classifier | batch 8, image 8, channels 8, classes 10 | top-1 agreement |
| bert | transformer encoder: multi-head self-attention, residual + layer norm, GELU FFN | tokens 16, width 32, heads 4, layers 1, ff 64 | relative L2 error |
| dlrm | DLRM: bottom MLP on dense features, embedding tables, concatenation, top MLP, sigmoid | batch 16, tables 3, vocab 32, dim 16, dense 16 | relative L2 error |
| resnet50 | ResNet-50 v1.5 (full size): 7x7 stride-2 stem, 3x3 stride-2 max pool, 16 bottleneck blocks, global average pool, classifier | batch 1, image 224, width 64, blocks 3463, classes 1000 | top-1 agreement |
| bert-base, bert-large | BERT-base (768 wide, 12 heads, ff 3072) and BERT-large (1024, 16, 4096) | tokens 128, layers 12 / 24 | relative L2 error |
| dlrm-mlperf | DLRM at MLPerf's MLP shape: 13 dense, 26 tables of 128, bottom 512-256-128, top 1024-1024-512-256-1 (tables of 10000 rows; concatenation interaction) | batch 256, vocab 10000 | relative L2 error |
| ncf-mlperf | NCF at MLPerf's shape: GMF of 64, MLP 256-256-128-64, MovieLens-20M's users and items | batch 256, users 138493, items 26744 | relative L2 error |

bert is written the way exporters emit attention: Reshape + Transpose into heads, MatMul,
Div by sqrt(d), Softmax, MatMul, Transpose + Reshape back.
"""

import inspect

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["MODELS", "FULL_SIZE", "BUILTIN", "SIZES", "build", "check_sizes"]


class _Onnx:
    """A small graph builder: named nodes, initializers, inputs."""

    def __init__(self, name):
        self.name, self.nodes, self.inits, self.inputs, self.count = name, [], [], [], 0

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def input(self, name, shape, elem=TensorProto.FLOAT):
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def op(self, op, inputs, name=None, **attrs):
        self.count += 1
        name = name or f"{op.lower()}{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def gemm(self, name, x, w, b, act=None):
        y = self.op("Gemm", [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)],
                    name=name)
        return self.op(act, [y], name=f"{name}.{act.lower()}") if act else y

    def model(self, output, opset=20):
        graph = helper.make_graph(self.nodes, self.name, self.inputs, [], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="neu10")
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        model.graph.output.extend(v for v in inferred.graph.value_info if v.name == output)
        onnx.checker.check_model(model, full_check=True)
        return model


def _layer(rng, fan_in, fan_out):
    w = rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32)
    return w, rng.normal(0, 0.1, fan_out).astype(np.float32)


def ncf(rng, batch=16, users=64, items=64, dim=8):
    return _ncf("ncf", rng, batch, users, items, dim, dim, [4 * dim, 2 * dim])


def ncf_mlperf(rng, batch=256, users=138493, items=26744):
    """NCF at MLPerf's shape (MovieLens-20M's users and items): GMF of 64 factors, an MLP
    of 256-256-128-64 over two 128-wide embeddings."""
    return _ncf("ncf-mlperf", rng, batch, users, items, 64, 128, [256, 128, 64])


def _ncf(name, rng, batch, users, items, gmf, mlp, widths):
    m = _Onnx(name)
    u = m.input("users", [batch], TensorProto.INT64)
    i = m.input("items", [batch], TensorProto.INT64)
    tables = {name: m.const(name, rng.normal(0, 0.5, (rows, dim)).astype(np.float32))
              for name, rows, dim in (("user_gmf", users, gmf), ("item_gmf", items, gmf),
                                      ("user_mlp", users, mlp), ("item_mlp", items, mlp))}
    gather = lambda table, ids: m.op("Gather", [tables[table], ids], name=f"{table}.lookup")
    gmf_out = m.op("Mul", [gather("user_gmf", u), gather("item_gmf", i)], name="gmf")
    h = m.op("Concat", [gather("user_mlp", u), gather("item_mlp", i)], name="mlp_in", axis=1)
    for n, (fan_in, fan_out) in enumerate(zip([2 * mlp] + widths, widths)):
        h = m.gemm(f"fc{n + 1}", h, *_layer(rng, fan_in, fan_out), act="Relu")
    z = m.op("Concat", [gmf_out, h], name="interaction", axis=1)
    return m.model(m.gemm("out", z, *_layer(rng, gmf + widths[-1], 1), act="Sigmoid"))


def _conv(m, name, x, rng, cin, cout, act=True):
    w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
    y = m.op("Conv", [x, m.const(f"{name}.weight", w),
                      m.const(f"{name}.bias", rng.normal(0, 0.1, cout).astype(np.float32))],
             name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return m.op("Relu", [y], name=f"{name}.relu") if act else y


def resnet(rng, batch=8, image=8, channels=8, classes=10):
    m = _Onnx("resnet")
    x = m.input("image", [batch, channels, image, image])
    stem = _conv(m, "stem", x, rng, channels, channels)
    h = _conv(m, "block1", stem, rng, channels, channels)
    h = _conv(m, "block2", h, rng, channels, channels, act=False)
    h = m.op("Relu", [m.op("Add", [stem, h], name="residual")], name="residual.relu")
    h = m.op("MaxPool", [h], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    h = _conv(m, "conv3", h, rng, channels, 2 * channels)
    h = m.op("Flatten", [m.op("GlobalAveragePool", [h], name="gap")], name="flatten", axis=1)
    return m.model(m.gemm("fc", h, *_layer(rng, 2 * channels, classes)))


def bert(rng, tokens=16, width=32, heads=4, layers=1, ff=None):
    ff = ff or 2 * width
    if width % heads:
        raise ValueError(f"bert: width {width} is not a multiple of heads {heads}")
    dk = width // heads
    m = _Onnx("bert")
    x = m.input("x", [1, tokens, width])

    def linear(name, h, fan_in, fan_out):
        w, b = _layer(rng, fan_in, fan_out)
        y = m.op("MatMul", [h, m.const(f"{name}.weight", w)], name=name)
        return m.op("Add", [y, m.const(f"{name}.bias", b)], name=f"{name}.bias_add")

    def norm(name, h):
        return m.op("LayerNormalization",
                    [h, m.const(f"{name}.scale", rng.uniform(0.5, 1.5, width).astype(np.float32)),
                     m.const(f"{name}.bias", rng.normal(0, 0.1, width).astype(np.float32))],
                    name=name, axis=-1, epsilon=1e-5)

    split = m.const("heads_shape", np.array([1, tokens, heads, dk], np.int64))
    merged = m.const("merged_shape", np.array([1, tokens, width], np.int64))
    root = m.const("sqrt_dk", np.array(np.sqrt(dk), np.float32))
    for layer in range(layers):
        p = f"layer{layer}."
        q, k, v = (m.op("Reshape", [linear(p + n, x, width, width), split], name=p + n + ".heads")
                   for n in ("q", "k", "v"))
        q = m.op("Transpose", [q], name=p + "q.t", perm=[0, 2, 1, 3])
        k = m.op("Transpose", [k], name=p + "k.t", perm=[0, 2, 3, 1])
        v = m.op("Transpose", [v], name=p + "v.t", perm=[0, 2, 1, 3])
        scores = m.op("Div", [m.op("MatMul", [q, k], name=p + "scores"), root],
                      name=p + "scores.scaled")
        probs = m.op("Softmax", [scores], name=p + "softmax", axis=-1)
        context = m.op("MatMul", [probs, v], name=p + "context")
        context = m.op("Transpose", [context], name=p + "context.t", perm=[0, 2, 1, 3])
        context = m.op("Reshape", [context, merged], name=p + "context.merged")
        h = m.op("Add", [x, linear(p + "proj", context, width, width)], name=p + "res1")
        h = norm(p + "ln1", h)
        f = m.op("Gelu", [linear(p + "ff1", h, width, ff)], name=p + "gelu", approximate="tanh")
        x = norm(p + "ln2", m.op("Add", [h, linear(p + "ff2", f, ff, width)], name=p + "res2"))
    return m.model(x)


def dlrm(rng, batch=16, tables=3, vocab=32, dim=16, dense=16):
    return _dlrm("dlrm", rng, batch, tables, vocab, dim, dense, [2 * dim, dim], [32, 16])


def dlrm_mlperf(rng, batch=256, vocab=10000):
    """DLRM at MLPerf's shape: 13 dense features, 26 embedding tables of 128, bottom MLP
    512-256-128, top MLP 1024-1024-512-256-1. Two departures, said here: each table has
    ``vocab`` rows (Criteo's largest have 40 M; 10000 keeps the tables at 33 MB of HBM and
    the float weights this builder draws small), and the interaction is the
    concatenation of the bottom MLP's output and the embeddings (as in our toy dlrm),
    not MLPerf's pairwise dot products."""
    return _dlrm("dlrm-mlperf", rng, batch, 26, vocab, 128, 13, [512, 256, 128],
                 [1024, 1024, 512, 256])


def _dlrm(name, rng, batch, tables, vocab, dim, dense, bottom, top):
    m = _Onnx(name)
    weights = [m.const(f"table{t}", rng.normal(0, 0.5, (vocab, dim)).astype(np.float32))
               for t in range(tables)]
    h = m.input("dense", [batch, dense])
    for n, (fan_in, fan_out) in enumerate(zip([dense] + bottom, bottom)):
        h = m.gemm(f"bot{n + 1}", h, *_layer(rng, fan_in, fan_out), act="Relu")
    parts = [h]
    for t, table in enumerate(weights):
        ids = m.input(f"ids{t}", [batch], TensorProto.INT64)
        parts.append(m.op("Gather", [table, ids], name=f"table{t}.lookup"))
    z = m.op("Concat", parts, name="interaction", axis=1)
    for n, (fan_in, fan_out) in enumerate(zip([dim * (tables + 1)] + top, top)):
        z = m.gemm(f"top{n + 1}", z, *_layer(rng, fan_in, fan_out), act="Relu")
    return m.model(m.gemm("out", z, *_layer(rng, top[-1], 1), act="Sigmoid"))


def bert_base(rng, tokens=128, layers=12):
    """BERT-base: 768 wide, 12 heads of 64, feed-forward 3072, 12 layers."""
    return bert(rng, tokens=tokens, width=768, heads=12, layers=layers, ff=3072)


def bert_large(rng, tokens=128, layers=24):
    """BERT-large: 1024 wide, 16 heads of 64, feed-forward 4096, 24 layers."""
    return bert(rng, tokens=tokens, width=1024, heads=16, layers=layers, ff=4096)


def resnet50(rng, batch=1, image=224, width=64, blocks=3463, classes=1000):
    """ResNet-50 v1.5 as torchvision defines it and exporters emit it in eval mode (batch
    norm folded into each convolution's weights and bias): a 7x7 stride-2 stem, 3x3
    stride-2 max pool, four stages of bottleneck blocks (1x1, 3x3, 1x1 with 4x expansion;
    the stride on the 3x3 and on a 1x1 projection of the shortcut), global average pool,
    classifier. ``width`` is the stem's channels (stages: 1, 2, 4, 8 times it), ``blocks``
    the blocks per stage as digits (3463: ResNet-50; 2222 is a ResNet-26)."""
    depths = [int(d) for d in str(blocks)]
    if len(depths) != 4 or 0 in depths:
        raise ValueError(f"resnet50: blocks {blocks} should be 4 nonzero digits (blocks per "
                         f"stage, 3463 for ResNet-50)")
    m = _Onnx("resnet50")

    def conv(name, x, cin, cout, k, stride=1, act=True):
        w = rng.normal(0, np.sqrt(2 / (k * k * cin)), (cout, cin, k, k)).astype(np.float32)
        y = m.op("Conv", [x, m.const(f"{name}.weight", w),
                          m.const(f"{name}.bias", rng.normal(0, 0.1, cout).astype(np.float32))],
                 name=name, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        return m.op("Relu", [y], name=f"{name}.relu") if act else y

    h = conv("conv1", m.input("image", [batch, 3, image, image]), 3, width, 7, stride=2)
    h = m.op("MaxPool", [h], name="maxpool", kernel_shape=[3, 3], strides=[2, 2],
             pads=[1, 1, 1, 1])
    cin = width
    for stage, depth in enumerate(depths):
        mid = width * 2 ** stage
        for block in range(depth):
            name, stride = f"layer{stage + 1}.{block}", 2 if block == 0 and stage else 1
            y = conv(f"{name}.conv1", h, cin, mid, 1)
            y = conv(f"{name}.conv2", y, mid, mid, 3, stride)
            y = conv(f"{name}.conv3", y, mid, 4 * mid, 1, act=False)
            shortcut = h if block else conv(f"{name}.downsample", h, cin, 4 * mid, 1, stride,
                                            act=False)
            h = m.op("Relu", [m.op("Add", [y, shortcut], name=f"{name}.add")],
                     name=f"{name}.relu")
            cin = 4 * mid
    h = m.op("Flatten", [m.op("GlobalAveragePool", [h], name="avgpool")], name="flatten", axis=1)
    return m.model(m.gemm("fc", h, *_layer(rng, cin, classes)))


#: name -> (builder, accuracy metric): the four models of the serving experiments, at
#: sizes the RTL runs in seconds.
MODELS = {"ncf": (ncf, "relerr"), "resnet": (resnet, "top1"), "bert": (bert, "relerr"),
          "dlrm": (dlrm, "relerr")}

#: Full-size models (published architectures at their real sizes, random weights).
FULL_SIZE = {"resnet50": (resnet50, "top1"), "bert-base": (bert_base, "relerr"),
             "bert-large": (bert_large, "relerr"), "dlrm-mlperf": (dlrm_mlperf, "relerr"),
             "ncf-mlperf": (ncf_mlperf, "relerr")}

#: Every built-in model.
BUILTIN = {**MODELS, **FULL_SIZE}

#: name -> {size parameter: default}
SIZES = {name: {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[1:]}
         for name, (fn, _) in BUILTIN.items()}


def check_sizes(name, sizes):
    """ValueError naming a size ``name`` does not take, or one that is not positive."""
    for key, value in sizes.items():
        if key not in SIZES[name]:
            raise ValueError(f"{name}: unknown size {key!r}; {name} takes "
                             f"{', '.join(SIZES[name])}")
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: size {key}={value!r} must be a positive integer")


def build(name, seed=0, **sizes):
    """The ONNX model ``name`` with weights from ``seed``; ValueError names a bad size."""
    check_sizes(name, sizes)
    return BUILTIN[name][0](np.random.default_rng(seed), **sizes)
