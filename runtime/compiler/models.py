"""Four small models after the paper's MLPerf workloads, each with a float32 reference and
an int8 program for the NPU.

Weights come from a seed (no downloads). Post-training quantization: the float model runs
once on a *calibration* batch (another seed) and every activation's int8 scale is its
largest magnitude there; the program is then compiled for the *evaluation* batch. The
int8 result is compared with the float reference on the evaluation batch:

| model | what it is | accuracy metric (tolerance, see sim_tests/test_models.py) |
|---|---|---|
| ncf  | NCF recommender: GMF + MLP towers over user/item embeddings, sigmoid | relative L2 error |
| resnet | CNN: 3x3 conv stem, a residual block, 2x2 max pool, conv, global average pool, classifier | top-1 agreement |
| bert | transformer encoder layer: 4-head self-attention, residual + layer norm, GELU FFN | relative L2 error |
| dlrm | DLRM: bottom MLP on dense features, 3 embedding tables, concatenation, top MLP, sigmoid | relative L2 error |
"""

import time
from dataclasses import dataclass

import numpy as np

from .graph import Graph, Image
from .builder import Program
from .quant import ACTIVATIONS, scale_of

__all__ = ["MODELS", "CompiledModel", "compile_model", "accuracy"]


@dataclass
class CompiledModel:
    name: str
    graph: Graph
    program: Program
    float_ref: np.ndarray         # float32 reference output (real values)
    metric: str                   # "top1" or "relerr"
    columns: int                  # meaningful output columns (the rest is padding)
    compile_seconds: float

    @property
    def expected(self):
        """The exact integers the NPU must produce (rows x padded columns); the graph's
        output carries the model's name."""
        return self.graph.outputs[self.name][1].ref

    @property
    def scale(self):
        return self.graph.outputs[self.name][1].scale


def accuracy(model, out_int):
    """(metric name, value): top-1 agreement or relative L2 error of the int8 output."""
    real = np.asarray(out_int, np.float64)[:, :model.columns] * model.scale
    ref = model.float_ref[:, :model.columns].astype(np.float64)
    if model.metric == "top1":
        return "top1_agreement", float(np.mean(real.argmax(axis=1) == ref.argmax(axis=1)))
    return "relative_error", float(np.linalg.norm(real - ref) / max(np.linalg.norm(ref), 1e-12))


def _layer(rng, fan_in, fan_out):
    w = rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)).astype(np.float32)
    return w, rng.normal(0, 0.1, fan_out).astype(np.float32)


def _relu(x):
    return np.maximum(x, 0)


def _pad_cols(w, b, cols):
    """Zero columns so an output is a whole number of tiles."""
    w2 = np.zeros((w.shape[0], cols), np.float32)
    w2[:, :w.shape[1]] = w
    b2 = np.zeros(cols, np.float32)
    b2[:b.shape[0]] = b
    return w2, b2


# --- NCF ------------------------------------------------------------------------------------

def _ncf_params(rng):
    p = {name: rng.normal(0, 0.5, (64, 8)).astype(np.float32)
         for name in ("user_gmf", "item_gmf", "user_mlp", "item_mlp")}
    p["fc1"], p["fc2"] = _layer(rng, 16, 32), _layer(rng, 32, 16)
    p["out"] = _pad_cols(*_layer(rng, 24, 1), 8)
    return p


def _ncf_inputs(rng, batch=16):
    return {"users": rng.integers(0, 64, batch), "items": rng.integers(0, 64, batch)}


def _ncf_float(p, x, rec):
    u, i = x["users"], x["items"]
    rec["gmf"] = p["user_gmf"][u] * p["item_gmf"][i]
    h = np.concatenate([p["user_mlp"][u], p["item_mlp"][i]], axis=1)
    rec["fc1"] = _relu(h @ p["fc1"][0] + p["fc1"][1])
    rec["fc2"] = _relu(rec["fc1"] @ p["fc2"][0] + p["fc2"][1])
    rec["logit"] = np.concatenate([rec["gmf"], rec["fc2"]], axis=1) @ p["out"][0] + p["out"][1]
    return ACTIVATIONS["sigmoid"](rec["logit"])


def _ncf_graph(g, p, x, s):
    ug = g.embedding("user_gmf", p["user_gmf"], x["users"])
    ig = g.embedding("item_gmf", p["item_gmf"], x["items"])
    # The MLP tower's tables share a scale, so their rows concatenate as they are.
    shared = max(scale_of(p["user_mlp"]), scale_of(p["item_mlp"]))
    um = g.embedding("user_mlp", p["user_mlp"], x["users"], scale=shared)
    im = g.embedding("item_mlp", p["item_mlp"], x["items"], scale=shared)
    joint = max(s["gmf"], s["fc2"])
    gmf = g.mul("gmf", ug, ig, joint)
    h = g.concat("mlp_in", [um, im])
    h = g.linear("fc1", h, *p["fc1"], s["fc1"], act="relu")
    h = g.linear("fc2", h, *p["fc2"], joint, act="relu")
    z = g.concat("interaction", [gmf, h])
    return g.linear("out", z, *p["out"], s["logit"], act="sigmoid", act_scale=1 / 127)


# --- ResNet-like CNN ------------------------------------------------------------------------

def _conv_params(rng, cin, cout):
    w = rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout)).astype(np.float32)
    return w, rng.normal(0, 0.1, cout).astype(np.float32)


def _resnet_params(rng):
    return {"stem": _conv_params(rng, 8, 8), "block1": _conv_params(rng, 8, 8),
            "block2": _conv_params(rng, 8, 8), "conv3": _conv_params(rng, 8, 16),
            "fc": _pad_cols(*_layer(rng, 16, 10), 16)}


def _resnet_inputs(rng, batch=8):
    return {"image": rng.normal(0, 1, (batch, 8, 8, 8)).astype(np.float32)}


def _conv_float(x, wb):
    w, b = wb
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (w.shape[3],), np.float32)
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy:dy + h, dx:dx + wd] @ w[dy, dx]
    return out + b


def _resnet_float(p, x, rec):
    rec["stem"] = _relu(_conv_float(x["image"], p["stem"]))
    rec["block1"] = _relu(_conv_float(rec["stem"], p["block1"]))
    rec["block2"] = _conv_float(rec["block1"], p["block2"])
    rec["residual"] = _relu(rec["stem"] + rec["block2"])
    b, h, w, c = rec["residual"].shape
    pooled = rec["residual"].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    rec["conv3"] = _relu(_conv_float(pooled, p["conv3"]))
    rec["gap"] = rec["conv3"].mean(axis=(1, 2))
    rec["fc"] = rec["gap"] @ p["fc"][0] + p["fc"][1]
    return rec["fc"]


def _resnet_graph(g, p, x, s):
    image = x["image"]
    layout = Image(image.shape[0], image.shape[1], image.shape[2])
    scale = s["input image"]
    inp = g.input("image", np.clip(np.round(image / scale), -127, 127), scale, image=layout)
    # The skip and the block's output share a scale so the residual add is exact.
    skip = max(s["stem"], s["block2"], s["residual"])
    stem = g.conv("stem", inp, *p["stem"], skip, act="relu")
    h = g.conv("block1", stem, *p["block1"], s["block1"], act="relu")
    h = g.conv("block2", h, *p["block2"], skip)
    h = g.add("residual", stem, h, relu=True)
    h = g.pool("pool", h)
    h = g.conv("conv3", h, *p["conv3"], s["conv3"], act="relu")
    h = g.global_avgpool("gap", h, s["gap"])
    return g.linear("fc", h, *p["fc"], s["fc"])


# --- BERT-like encoder layer ----------------------------------------------------------------

_HEADS, _DK = 4, 8


def _bert_params(rng, d=32, ff=64):
    p = {name: _layer(rng, d, d) for name in ("wq", "wk", "wv", "wo")}
    p["wq"] = (p["wq"][0] / np.sqrt(_DK), p["wq"][1] / np.sqrt(_DK))   # 1/sqrt(dk) folded in
    p["ff1"], p["ff2"] = _layer(rng, d, ff), _layer(rng, ff, d)
    for name in ("ln1", "ln2"):
        p[name] = (rng.uniform(0.5, 1.5, d).astype(np.float32),
                   rng.normal(0, 0.1, d).astype(np.float32))
    return p


def _bert_inputs(rng, seq=16, d=32):
    return {"x": rng.normal(0, 1, (seq, d)).astype(np.float32)}


def _layernorm_float(x, gb):
    mean = x.mean(axis=1, keepdims=True)
    std = np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True))
    return (x - mean) / std * gb[0] + gb[1]


def _bert_float(p, x, rec):
    x = x["x"]
    for name in ("q", "k", "v"):
        rec[name] = x @ p["w" + name][0] + p["w" + name][1]
    heads = []
    for h in range(_HEADS):
        cols = slice(h * _DK, (h + 1) * _DK)
        scores = rec["q"][:, cols] @ rec["k"][:, cols].T
        rec[f"scores{h}"] = scores
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        heads.append((e / e.sum(axis=1, keepdims=True)) @ rec["v"][:, cols])
    rec["attn"] = np.concatenate(heads, axis=1)
    rec["proj"] = rec["attn"] @ p["wo"][0] + p["wo"][1]
    rec["res1"] = x + rec["proj"]
    rec["ln1"] = _layernorm_float(rec["res1"], p["ln1"])
    rec["ff1"] = rec["ln1"] @ p["ff1"][0] + p["ff1"][1]
    rec["gelu"] = ACTIVATIONS["gelu"](rec["ff1"])
    rec["ff2"] = rec["gelu"] @ p["ff2"][0] + p["ff2"][1]
    rec["res2"] = rec["ln1"] + rec["ff2"]
    rec["ln2"] = _layernorm_float(rec["res2"], p["ln2"])
    return rec["ln2"]


def _bert_graph(g, p, x, s):
    # Residual adds saturate in int8: both operands carry the scale of their sum.
    r1 = max(s["res1"], s["input x"])
    inp = g.input("x", np.clip(np.round(x["x"] / r1), -127, 127), r1)
    q = g.linear("q", inp, *p["wq"], s["q"])
    k = g.linear("k", inp, *p["wk"], s["k"])
    v = g.linear("v", inp, *p["wv"], s["v"])
    attn = g.buffer("attn", inp.rows, inp.tiles, s["attn"])
    for h in range(_HEADS):
        kt = g.transpose(f"k{h}^T", k.view(h, 1))
        scores = g.matmul(f"scores{h}", q.view(h, 1), kt, s[f"scores{h}"])
        probs = g.softmax(f"softmax{h}", scores)
        g.matmul(f"context{h}", probs, v.view(h, 1), s["attn"], out=attn.view(h, 1))
    proj = g.linear("proj", attn, *p["wo"], r1)
    h1 = g.add("res1", inp, proj)
    r2 = max(s["res2"], s["ln1"])
    ln1 = g.layernorm("ln1", h1, *p["ln1"], r2)
    f = g.linear("ff1", ln1, *p["ff1"], s["ff1"], act="gelu", act_scale=s["gelu"])
    f = g.linear("ff2", f, *p["ff2"], r2)
    h2 = g.add("res2", ln1, f)
    return g.layernorm("ln2", h2, *p["ln2"], s["ln2"])


# --- DLRM-like ------------------------------------------------------------------------------

def _dlrm_params(rng):
    p = {f"table{t}": rng.normal(0, 0.5, (32, 16)).astype(np.float32) for t in range(3)}
    p["bot1"], p["bot2"] = _layer(rng, 16, 32), _layer(rng, 32, 16)
    p["top1"], p["top2"] = _layer(rng, 64, 32), _layer(rng, 32, 16)
    p["out"] = _pad_cols(*_layer(rng, 16, 1), 8)
    return p


def _dlrm_inputs(rng, batch=16):
    x = {"dense": rng.normal(0, 1, (batch, 16)).astype(np.float32)}
    for t in range(3):
        x[f"ids{t}"] = rng.integers(0, 32, batch)
    return x


def _dlrm_float(p, x, rec):
    rec["bot1"] = _relu(x["dense"] @ p["bot1"][0] + p["bot1"][1])
    rec["bot2"] = _relu(rec["bot1"] @ p["bot2"][0] + p["bot2"][1])
    z = np.concatenate([rec["bot2"]] + [p[f"table{t}"][x[f"ids{t}"]] for t in range(3)], axis=1)
    rec["top1"] = _relu(z @ p["top1"][0] + p["top1"][1])
    rec["top2"] = _relu(rec["top1"] @ p["top2"][0] + p["top2"][1])
    rec["logit"] = rec["top2"] @ p["out"][0] + p["out"][1]
    return ACTIVATIONS["sigmoid"](rec["logit"])


def _dlrm_graph(g, p, x, s):
    # Embeddings and the bottom MLP's output share one scale: they are concatenated.
    shared = max([s["bot2"]] + [scale_of(p[f"table{t}"]) for t in range(3)])
    dense_scale = s["input dense"]
    h = g.input("dense", np.clip(np.round(x["dense"] / dense_scale), -127, 127), dense_scale)
    h = g.linear("bot1", h, *p["bot1"], s["bot1"], act="relu")
    h = g.linear("bot2", h, *p["bot2"], shared, act="relu")
    tables = [g.embedding(f"table{t}", p[f"table{t}"], x[f"ids{t}"], scale=shared)
              for t in range(3)]
    z = g.concat("interaction", [h] + tables)
    z = g.linear("top1", z, *p["top1"], s["top1"], act="relu")
    z = g.linear("top2", z, *p["top2"], s["top2"], act="relu")
    return g.linear("out", z, *p["out"], s["logit"], act="sigmoid", act_scale=1 / 127)


MODELS = {
    "ncf": (_ncf_params, _ncf_inputs, _ncf_float, _ncf_graph, "relerr", 1),
    "resnet": (_resnet_params, _resnet_inputs, _resnet_float, _resnet_graph, "top1", 10),
    "bert": (_bert_params, _bert_inputs, _bert_float, _bert_graph, "relerr", 32),
    "dlrm": (_dlrm_params, _dlrm_inputs, _dlrm_float, _dlrm_graph, "relerr", 1),
}


def compile_model(name, config, *, seed=0, batch=0, spad_rows=None, hbm_words=None):
    """Weights from ``seed``, scales calibrated on batch ``seed+1``, compiled for input
    batch ``seed+2+batch`` (the program does not depend on the input: ``batch`` changes
    only the HBM image and the expected output); raises ValueError for an unknown model."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    params_fn, inputs_fn, float_fn, graph_fn, metric, columns = MODELS[name]
    params = params_fn(np.random.default_rng(seed))
    calibration = {}
    calibration_inputs = inputs_fn(np.random.default_rng(seed + 1))
    float_fn(params, calibration_inputs, calibration)
    # Inputs are quantized with calibrated scales too: the program (whose requantization
    # constants follow from the scales) is then the same for every input.
    calibration.update({f"input {key}": value for key, value in calibration_inputs.items()})
    scales = {key: scale_of(value) for key, value in calibration.items()}
    inputs = inputs_fn(np.random.default_rng(seed + 2 + batch))
    reference = float_fn(params, inputs, {}).astype(np.float32)
    start = time.perf_counter()
    graph = Graph(config, spad_rows=spad_rows, hbm_words=hbm_words)
    out = graph_fn(graph, params, inputs, scales)
    graph.output(name, out)
    program = graph.build()
    seconds = time.perf_counter() - start
    return CompiledModel(name, graph, program, reference, metric, columns, seconds)
