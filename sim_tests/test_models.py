"""The four models: compiled programs equal the compiler's integer reference on the golden
model and on the RTL, and the int8 results stay close to the float32 references."""

import json

import numpy as np
import pytest

from isa.asm import assemble
from isa.config import NPUConfig
from runtime.host.allocator import AllocationError, Profile, allocate, estimate, measured
from runtime.apps.cli import main
from runtime.apps.inference import execute, infer
from runtime.host.execute import run_program
from runtime.compiler.graph import Graph, Image
from runtime.compiler.models import MODELS, accuracy, compile_model, load_model
from runtime.compiler.builder import CompileError
from runtime.compiler.onnx_import import OnnxError
from runtime.compiler.quant import lane_multipliers, multiplier, quantize, rq

DEFAULT = NPUConfig()
SMALL = NPUConfig.preset("small")

#: Documented tolerances of the int8 paths against the float32 references (README).
TOLERANCE = {"ncf": 0.05, "resnet": 1.0, "bert": 0.2, "dlrm": 0.05}


@pytest.mark.parametrize("name", MODELS)
def test_golden_equals_reference_and_is_accurate(name):
    model = compile_model(name, DEFAULT)
    outputs, _ = execute(model.graph, model.program)          # race check on
    assert np.array_equal(outputs[name], model.expected)
    metric, value = accuracy(model, outputs[name])
    if metric == "top1_agreement":
        assert value >= TOLERANCE[name]
    else:
        assert value <= TOLERANCE[name]


@pytest.mark.parametrize("name", MODELS)
def test_verilator_bit_exact_and_the_allocators_estimate_matches_the_busy_counters(name):
    model = compile_model(name, SMALL)
    outputs, run = execute(model.graph, model.program, backend="verilator")
    assert np.array_equal(outputs[name], model.expected)
    assert run.makespan > 0
    # The allocator's profile (calibrated engine overheads) is within 10% of what the
    # engines' BUSY counters measure for the MEs and 5% for the VEs (whose pipeline it
    # follows), the engine types it sizes vNPUs by.
    guess, busy = estimate(model.program.words, SMALL), measured(run, SMALL)
    assert abs(guess.me / busy.me - 1) < 0.1 and abs(guess.ve / busy.ve - 1) < 0.05


#: VE µTOps whose timing turns on the pipeline: independent instructions stream back to
#: back, one reading what the last wrote waits for its writes, a loop repeats either.
VE_TIMING = {
    "independent": "".join(f" vmuli {1000 + 4 * i}, 0, 0, 2\n" for i in range(40)),
    "chained": "".join(f" vmuli {1004 + 4 * i}, {1000 + 4 * i}, 0, 2\n" for i in range(40)),
    "long rows": "".join(f" vaddi {1000 + 100 * i}, 0, 3, 100\n" for i in range(6)),
    "loop, fixed source": " loop 150, 1, 4, 0\n vmuli 1000, 0, 0, 2\n",
    "loop, chained": " loop 60, 1, 3, 3\n vaddi 1003, 1000, 1, 3\n",
    "pool and reduce": " vpoolmax 2000, 0, 3, 3, 8\n vrsum 2001, 2000, 1, 1\n"
                       " vsetq 3, 1, 0\n vrq 2002, 0, 64\n vlsum 2100, 2002, 64\n",
}


@pytest.mark.parametrize("case", VE_TIMING)
def test_the_allocators_ve_estimate_follows_the_pipeline(case):
    words = assemble(".ve eop\n" + VE_TIMING[case], SMALL)
    _, run = run_program(SMALL, words, spad_rows=4096, hbm_words=1024, placements=[],
                         reads=[], backend="verilator", n_ve=1)
    guess, busy = estimate(words, SMALL).ve, measured(run, SMALL).ve
    assert abs(guess - busy) <= max(2, 0.02 * busy), (guess, busy)


def test_pysim_bit_exact():
    model = compile_model("ncf", SMALL)
    outputs, run = execute(model.graph, model.program, backend="pysim")
    assert np.array_equal(outputs["ncf"], model.expected) and run.makespan > 0


def test_more_mes_fewer_cycles():
    """The same program on 1, 2 and 4 MEs: same output, fewer cycles with more MEs."""
    model = compile_model("resnet", SMALL)
    cycles = []
    for n_me in (1, 2, 4):
        outputs, run = execute(model.graph, model.program, backend="verilator", n_me=n_me,
                               policy="static")
        assert np.array_equal(outputs["resnet"], model.expected)
        assert all(e["BUSY"] == 0 for e in run.engines[n_me:SMALL.n_me])
        cycles.append(run.makespan)
    assert cycles[0] > cycles[1] > cycles[2]


def test_operators_one_by_one():
    """Each operator alone (odd sizes), golden against its numpy integer reference."""
    rng = np.random.default_rng(1)
    g = Graph(DEFAULT)
    x = g.input("x", rng.integers(-127, 128, (24, 16)), 0.05)
    y = g.input("y", rng.integers(-127, 128, (24, 16)), 0.05)
    gamma, beta = rng.uniform(0.5, 1.5, 16), rng.normal(0, 0.1, 16)
    picture = Image(2, 4, 6)
    img = g.input("img", rng.integers(-127, 128, (2, 4, 6, 8)), 0.1, image=picture)
    results = {
        "add": g.add("add", x, y, relu=True),
        "mul": g.mul("mul", x, y, 0.02),
        "tanh": g.activation("tanh", x, "tanh", 1 / 127),
        "softmax": g.softmax("softmax", x),
        "layernorm": g.layernorm("layernorm", x, gamma, beta, 0.05),
        "transpose": g.transpose("transpose", x),
        "linear": g.linear("linear", x, rng.normal(0, 0.3, (16, 40)), rng.normal(0, 1, 40),
                           0.2, act="gelu", act_scale=0.03),
        "maxpool": g.pool("maxpool", img),
        "avgpool": g.pool("avgpool", img, "avg"),
        "conv": g.conv("conv", img, rng.normal(0, 0.2, (3, 3, 8, 16)), np.zeros(16), 0.3),
        "gap": g.global_avgpool("gap", img, 0.05),
        "embedding": g.embedding("embedding", rng.normal(0, 1, (50, 8)), rng.integers(0, 50, 30)),
    }
    for name, tensor in results.items():
        g.output(name, tensor)
    program = g.build()
    outputs, _ = execute(g, program)
    for name, tensor in results.items():
        assert np.array_equal(outputs[name], tensor.ref), name
    # Spot checks of the references against plain numpy.
    assert np.array_equal(results["transpose"].ref, x.ref.T)
    quads = img.image.from_rows(img.ref).reshape(2, 2, 2, 3, 2, 8)
    assert np.abs(picture.__class__(2, 2, 3).from_rows(results["avgpool"].ref)
                  - quads.mean(axis=(2, 4))).max() <= 0.5
    assert np.array_equal(results["add"].ref, np.maximum(np.clip(x.ref + y.ref, -128, 127), 0))
    # Softmax and layer norm: the float results rounded, within 0.02 LSB of it.
    exact = np.exp(x.ref * 0.05 - (x.ref * 0.05).max(axis=1, keepdims=True))
    exact = 127 * exact / exact.sum(axis=1, keepdims=True)
    assert np.abs(results["softmax"].ref - exact).max() < 0.52
    dev = x.ref - x.ref.mean(axis=1, keepdims=True)
    normal = dev / np.sqrt((dev ** 2).mean(axis=1, keepdims=True))
    exact = (normal * gamma + beta) / 0.05
    assert np.abs(results["layernorm"].ref - np.clip(exact, -128, 127)).max() < 0.52


def test_softmax_and_layer_norm_over_many_rows_alternate_their_scratch():
    """Rows in spans of 256 (one instruction's most), each span's per-row scratch in one of
    two blocks that alternate: 600 rows take three spans; golden (race check on) equals
    the references, which are within 0.52 LSB of float."""
    rng = np.random.default_rng(5)
    g = Graph(DEFAULT)
    x = g.input("x", rng.integers(-127, 128, (600, 24)), 0.07)
    gamma, beta = rng.uniform(0.5, 1.5, 24), rng.normal(0, 0.1, 24)
    results = {"softmax": g.softmax("softmax", x, 1 / 200),
               "layernorm": g.layernorm("layernorm", x, gamma, beta, 0.04, epsilon=1e-3)}
    for name, tensor in results.items():
        g.output(name, tensor)
    outputs, _ = execute(g, g.build())
    for name, tensor in results.items():
        assert np.array_equal(outputs[name], tensor.ref), name
    real = x.ref * 0.07
    exact = np.exp(real - real.max(axis=1, keepdims=True))
    exact = exact / exact.sum(axis=1, keepdims=True) * 200
    assert np.abs(results["softmax"].ref - np.clip(exact, -128, 127)).max() < 0.52
    dev = real - real.mean(axis=1, keepdims=True)
    exact = (dev / np.sqrt((dev ** 2).mean(axis=1, keepdims=True) + 1e-3) * gamma + beta) / 0.04
    assert np.abs(results["layernorm"].ref - np.clip(exact, -128, 127)).max() < 0.52


def test_allocator_follows_the_profile():
    """Same budget: the ME-heavy model gets more MEs, the VE-heavy one more VEs."""
    resnet = estimate(compile_model("resnet", DEFAULT).program.words, DEFAULT)
    bert = estimate(compile_model("bert", DEFAULT).program.words, DEFAULT)
    assert resnet.me > resnet.ve and bert.ve > bert.me
    a, b = allocate(resnet, DEFAULT, budget=5), allocate(bert, DEFAULT, budget=5)
    assert a.n_me > a.n_ve and b.n_ve > b.n_me
    assert a.price <= 5 and b.price <= 5
    # A latency target: the cheapest vNPU that meets it.
    target = allocate(Profile(4000, 1000, 0), DEFAULT, latency_target=1000)
    assert (target.n_me, target.n_ve) == (4, 1)
    # Dearer MEs shift the choice towards VEs.
    cheap = allocate(Profile(3000, 3000, 0), DEFAULT, budget=6)
    dear = allocate(Profile(3000, 3000, 0), DEFAULT, budget=6, price_me=2)
    assert dear.n_me < cheap.n_me


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget=1), "budget 1 per cycle buys no vNPU"),
    (dict(latency_target=10), "latency target 10 cycles is out of reach"),
    (dict(), "exactly one of budget"),
])
def test_allocator_refusals(kwargs, message):
    with pytest.raises(AllocationError, match=message):
        allocate(Profile(1000, 1000, 0), DEFAULT, **kwargs)


def test_compile_errors():
    g = Graph(DEFAULT)
    x = g.input("x", np.zeros((4, 8), int), 1.0)
    with pytest.raises(CompileError, match="weights have 16 rows; the input has 8 columns"):
        g.linear("fc", x, np.zeros((16, 8)), np.zeros(8), 1.0)
    with pytest.raises(CompileError, match="12 columns is not a multiple of the 8 lanes"):
        g.input("bad", np.zeros((4, 12), int), 1.0)
    with pytest.raises(CompileError, match="square arrays as wide as a scratchpad row"):
        Graph(DEFAULT.replace(array_cols=4))
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        compile_model("vgg", DEFAULT)


def test_cli_run(capsys):
    assert main(["run", "dlrm", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] and report["metric"] == "relative_error" and report["accuracy"] < 0.05
    assert main(["run", "resnet", "--budget", "5"]) == 0
    assert "vNPU of 3 ME + 2 VE" in capsys.readouterr().out
    assert main(["run", "dlrm", "--per-channel", "--json"]) == 0
    per_channel = json.loads(capsys.readouterr().out)
    assert per_channel["exact"] and per_channel["program_words"] > report["program_words"]


def test_real_macs_count_the_models_own_products():
    """MACs from the model's shapes, against counts made here from the architectures:
    ResNet-50's published 4.09 G; one BERT-base layer's q, k, v, projection and FFN
    products plus its 12 heads' scores and context; a run reports them and the share of
    the NPU's MAC peak they are."""
    assert load_model("resnet50").macs() == 4_089_184_256
    tokens, width, ff, heads = 128, 768, 3072, 12
    layer = tokens * (4 * width * width + 2 * width * ff) + 2 * heads * tokens * tokens * (width // heads)
    assert load_model("bert-base[layers=2]").macs() == 2 * layer
    report = infer("resnet", DEFAULT, backend="perf")
    assert report.macs == load_model("resnet").macs() > 0
    # Real MACs are a part of what the MEs did: no more than their busy share.
    assert 0 < report.mac_utilization <= report.utilization["me"]
    assert "of the NPU's MAC peak" in report.text()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_listing_assembles_to_the_compiled_words(name):
    """The compiler encodes typed µTOps directly; its listing is made from them and names
    each µTOp, and assembling the listing gives the same words."""
    program = compile_model(name, DEFAULT).program
    assert assemble(program.listing, DEFAULT) == program.words
    assert program.names[0] in program.listing.splitlines()[0]


def test_cli_run_writes_the_listing(tmp_path, capsys):
    listing = tmp_path / "ncf.s"
    assert main(["run", "ncf", "--listing", str(listing)]) == 0
    assert assemble(listing.read_text(), DEFAULT) == compile_model("ncf", DEFAULT).program.words


@pytest.mark.parametrize("argv, message", [
    (["run", "vgg"], "unknown model 'vgg'"),
    (["run", "ncf", "--vnpu", "9,1"], "9 MEs requested; this NPU has 1..4"),
    (["run", "ncf", "--vnpu", "two"], "expected ME,VE"),
    (["run", "ncf", "--vnpu", "1,1", "--budget", "3"], "--vnpu or --budget, not both"),
    (["run", "ncf", "--budget", "0.5"], "buys no vNPU"),
])
def test_cli_run_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("neu10: error: ") and message in err and err.count("\n") == 1


def _loop_conv(pixels, w_q, stride, pads, dilation):
    """Integer convolution by plain loops over output pixels and taps (an independent
    reference for Graph.conv): pixels (b, h, w, cin), w_q (kh, kw, cin, cout)."""
    b, h, w, _ = pixels.shape
    kh, kw, _, cout = w_q.shape
    (sy, sx), (pt, pl, pb, pr), (dy, dx) = stride, pads, dilation
    ho, wo = (h + pt + pb - dy * (kh - 1) - 1) // sy + 1, (w + pl + pr - dx * (kw - 1) - 1) // sx + 1
    out = np.zeros((b, ho, wo, cout), np.result_type(pixels, w_q, np.int64))
    for y in range(ho):
        for x in range(wo):
            for i in range(kh):
                for j in range(kw):
                    Y, X = sy * y + dy * i - pt, sx * x + dx * j - pl
                    if 0 <= Y < h and 0 <= X < w:
                        out[:, y, x] += pixels[:, Y, X] @ w_q[i, j]
    return out


def _loop_pool(pixels, kind, kernel, stride, pads, count_pads):
    b, h, w, c = pixels.shape
    (kh, kw), (sy, sx), (pt, pl, pb, pr) = kernel, stride, pads
    ho, wo = (h + pt + pb - kh) // sy + 1, (w + pl + pr - kw) // sx + 1
    out = np.zeros((b, ho, wo, c), np.int64)
    for y in range(ho):
        for x in range(wo):
            ys = range(max(0, sy * y - pt), min(h, sy * y - pt + kh))
            xs = range(max(0, sx * x - pl), min(w, sx * x - pl + kw))
            window = pixels[:, ys][:, :, xs]
            if kind == "max":
                out[:, y, x] = window.max(axis=(1, 2))
            else:
                count = kh * kw if count_pads else len(ys) * len(xs)
                out[:, y, x] = rq(window.sum(axis=(1, 2)), *multiplier(1 / count))
    return out


#: (image batch, h, w), kernel, stride, pads (top, left, bottom, right), dilation.
CONVS = [((2, 9, 9), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
         ((1, 15, 13), (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),
         ((2, 10, 10), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
         ((2, 8, 8), (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
         ((1, 9, 11), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
         ((1, 11, 7), (5, 3), (3, 1), (0, 0, 0, 0), (1, 1)),
         ((1, 6, 7), (3, 3), (1, 1), (0, 2, 1, 0), (1, 1))]


def _whole_and_by_bands(make, bands):
    """Graph ``make(spad_rows)`` builds, compiled with the scratchpad its whole run needs
    or (``bands``) the largest part of it (3/4, 3/5, 1/2) with which it runs by bands of
    lines through HBM; and its program."""
    g = make(None)
    program = g.build()
    if not bands:
        return g, program
    peak = g.builder.spad_peak
    for fraction in (0.75, 0.6, 0.5):
        g = make(int(peak * fraction))
        program = g.build()
        if any(" store rows " in n for n in program.names):      # a band went to HBM
            return g, program
    raise AssertionError("no scratchpad size made it run by bands")


@pytest.mark.parametrize("bands", [False, True], ids=["whole", "bands"])
@pytest.mark.parametrize("shape, kernel, stride, pads, dilation", CONVS,
                         ids=[f"{k[0]}x{k[1]}-s{s[0]}{s[1]}-p{''.join(map(str, p))}-d{d[0]}"
                              for _, k, s, p, d in CONVS])
def test_convolutions_equal_a_loop_reference_whole_and_by_bands(shape, kernel, stride, pads,
                                                                dilation, bands):
    """Graph.conv of any kernel, stride, padding and dilation, on golden (race check on),
    equals an integer convolution written as plain loops; with a small scratchpad it runs
    by bands of lines through HBM and still does."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(-127, 128, (*shape, 16))
    w = rng.normal(0, 0.1, (*kernel, 16, 24))
    bias = rng.normal(0, 0.5, 24)

    def make(spad_rows):
        g = Graph(DEFAULT, spad_rows=spad_rows)
        x = g.input("x", pixels, 0.05, image=Image(*shape))
        g.end_operator()
        g.y = g.conv("conv", x, w, bias, 0.2, act="relu", stride=stride, pads=pads,
                     dilation=dilation)
        g.end_operator()
        g.output("y", g.y)
        return g

    g, program = _whole_and_by_bands(make, bands)
    outputs, _ = execute(g, program)
    w_scale = np.abs(w).max() / 127
    acc = _loop_conv(pixels, quantize(w, w_scale), stride, pads, dilation) \
        + quantize(bias, 0.05 * w_scale, bits=32)
    expected = np.maximum(rq(acc, *multiplier(0.05 * w_scale / 0.2)), 0)
    assert np.array_equal(g.y.image.from_rows(outputs["y"]), expected)
    assert np.array_equal(outputs["y"], g.y.ref)


POOLS = [("max", (3, 3), (2, 2), (1, 1, 1, 1), False), ("max", (2, 3), (1, 1), (0, 0, 0, 0), False),
         ("avg", (3, 3), (2, 2), (1, 1, 1, 1), False), ("avg", (3, 3), (2, 2), (1, 1, 1, 1), True),
         ("avg", (2, 2), (2, 2), (0, 0, 0, 0), False)]


@pytest.mark.parametrize("bands", [False, True], ids=["whole", "bands"])
@pytest.mark.parametrize("kind, kernel, stride, pads, count_pads", POOLS,
                         ids=[f"{p[0]}{p[1][0]}x{p[1][1]}-s{p[2][0]}-p{p[3][0]}{'-count' * p[4]}"
                              for p in POOLS])
def test_pooling_equals_a_loop_reference_whole_and_by_bands(kind, kernel, stride, pads,
                                                            count_pads, bands):
    """Max pooling never lets padding win (signed inputs); averages divide by the window's
    pixels (or the whole window with count_pads); golden equals a plain-loop reference,
    and so does the global average pool of the same (spilled, when by bands) input."""
    rng = np.random.default_rng(6)
    pixels = rng.integers(-127, 128, (2, 11, 10, 16))

    def make(spad_rows):
        g = Graph(DEFAULT, spad_rows=spad_rows)
        x = g.input("x", pixels, 0.05, image=Image(2, 11, 10))
        g.end_operator()
        g.y = g.pool("pool", x, kind, kernel, stride, pads, count_pads)
        g.end_operator()
        gap = g.global_avgpool("gap", x, 0.01)
        g.end_operator()
        g.output("y", g.y)
        g.output("gap", gap)
        return g

    g, program = _whole_and_by_bands(make, bands)
    outputs, _ = execute(g, program)
    expected = _loop_pool(pixels, kind, kernel, stride, pads, count_pads)
    assert np.array_equal(g.y.image.from_rows(outputs["y"]), expected)
    assert np.array_equal(outputs["gap"], rq(pixels.sum(axis=(1, 2)),
                                             *multiplier(0.05 / 110 / 0.01)))


#: ResNet-50's operators at a size the RTL runs in seconds: the 7x7 stride-2 stem, the 3x3
#: stride-2 max pool with padding, a bottleneck block per stage (stride-2 3x3 and 1x1
#: projections), global average pool.
RESNET50_REDUCED = "resnet50[image=32,width=8,blocks=1111,classes=10]"


@pytest.mark.parametrize("backend", ["golden", "verilator"])
def test_a_reduced_resnet50_is_bit_exact(backend):
    model = compile_model(RESNET50_REDUCED, DEFAULT)
    outputs, _ = execute(model.graph, model.program, backend=backend)
    assert np.array_equal(outputs[RESNET50_REDUCED], model.expected)
    assert accuracy(model, outputs[RESNET50_REDUCED])[1] == 1.0


@pytest.mark.slow
def test_resnet50_at_224_compiles_on_default_with_activations_through_hbm():
    """The full ResNet-50 (224x224, 25.6 M weights) on the default config's 16384-row
    scratchpad: every large activation lives in HBM and runs by bands of lines. (The
    tiler holds some layers' weights while their bands pass: more µTOps, fewer cycles.)"""
    model = compile_model("resnet50", DEFAULT)
    assert len(model.program.words) < 1_300_000
    assert model.graph.builder.spad_peak <= DEFAULT.spad_rows
    assert model.graph.spills > 20


@pytest.mark.slow
@pytest.mark.parametrize("ref", ["resnet50", "bert-base"])
def test_full_size_models_are_bit_exact_on_golden(ref):
    """One inference of ResNet-50 (224x224) and of the 12-layer BERT-base on the default
    config, race check on: the output equals the compiler's integer reference."""
    model = compile_model(ref, DEFAULT)
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)
    metric, value = accuracy(model, outputs[ref])
    assert value == 1.0 if metric == "top1_agreement" else value < 0.2


@pytest.mark.fullsize
@pytest.mark.parametrize("ref", ["resnet50", "bert-base"])
def test_full_size_models_are_bit_exact_on_verilator(ref):
    """The same on the RTL: the pNPU's Verilator model runs one whole inference (tens of
    millions of cycles) and its output equals golden's integers."""
    model = compile_model(ref, DEFAULT)
    outputs, run = execute(model.graph, model.program, backend="verilator")
    assert np.array_equal(outputs[ref], model.expected)
    assert run.makespan > 10_000_000


@pytest.mark.parametrize("ref", ["dlrm-mlperf[batch=16,vocab=64]",
                                 "ncf-mlperf[batch=16,users=100,items=80]",
                                 "bert-base[tokens=16,layers=1]",
                                 "bert-large[tokens=8,layers=1]"])
def test_full_size_shapes_at_reduced_batch_or_depth_are_bit_exact(ref):
    """The MLPerf-shaped DLRM and NCF (every layer at full width) and BERT-base/large
    layers, on golden (race check on)."""
    model = compile_model(ref, DEFAULT)
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)
    assert accuracy(model, outputs[ref])[1] < 0.2


def test_a_bert_base_layer_at_reduced_tokens_is_bit_exact_on_verilator():
    """BERT-base's layer at full width (768, 12 heads of 64, ff 3072) over 16 tokens: two
    million cycles of the RTL, equal to golden's integers."""
    ref = "bert-base[tokens=16,layers=1]"
    model = compile_model(ref, DEFAULT)
    outputs, run = execute(model.graph, model.program, backend="verilator")
    assert np.array_equal(outputs[ref], model.expected) and run.makespan > 1_000_000


@pytest.mark.parametrize("bands", [False, True], ids=["whole", "bands"])
def test_per_channel_weight_scales_requantize_each_column_with_its_own(bands):
    """Graph(per_channel=True): a conv and a linear layer whose output channels span four
    decades of weight range. Golden equals an integer reference built here (per-column
    quantization, `vrqr`'s per-lane multipliers with a shared shift), and the per-channel
    error against float is far below per-tensor quantization's, where small channels lose
    their bits."""
    rng = np.random.default_rng(9)
    pixels = rng.integers(-127, 128, (2, 9, 9, 16))
    ranges = np.logspace(-3, 0, 24)
    w = rng.normal(0, 1, (3, 3, 16, 24)) * ranges
    bias = rng.normal(0, 0.01, 24)
    w2 = rng.normal(0, 1, (24, 16)) * np.logspace(-2, 0, 16)

    def make(spad_rows, per_channel=True):
        g = Graph(DEFAULT, spad_rows=spad_rows, per_channel=per_channel)
        x = g.input("x", pixels, 0.05, image=Image(2, 9, 9))
        g.end_operator()
        g.y = g.conv("conv", x, w, bias, 0.01, stride=(2, 2), pads=(1, 1, 1, 1))
        g.end_operator()
        g.z = g.linear("fc", g.y, w2, np.zeros(16), 0.002)
        g.end_operator()
        g.output("z", g.z)
        return g

    g, program = _whole_and_by_bands(make, bands)
    outputs, _ = execute(g, program)
    scale = np.abs(w).reshape(-1, 24).max(axis=0) / 127
    acc = _loop_conv(pixels, quantize(w, scale), (2, 2), (1, 1, 1, 1), (1, 1)) \
        + quantize(bias, 0.05 * scale, bits=32)
    mults, shift = lane_multipliers(0.05 * scale / 0.01)
    y = rq(acc, mults, shift)
    assert np.array_equal(g.y.image.from_rows(g.y.ref), y)
    assert np.array_equal(outputs["z"], g.z.ref)
    if bands:
        return
    x_float = pixels * 0.05
    y_float = _loop_conv(x_float, w, (2, 2), (1, 1, 1, 1), (1, 1)) + bias
    errors = {}
    for per_channel in (True, False):
        graph = make(None, per_channel)
        graph.build()
        got = graph.y.image.from_rows(graph.y.ref) * 0.01
        errors[per_channel] = np.abs(got - y_float)[..., :6].mean() / np.abs(y_float[..., :6]).mean()
    assert errors[True] < 0.1 < errors[False], errors


@pytest.mark.parametrize("name", MODELS)
def test_per_channel_models_bit_exact_on_verilator(name):
    model = compile_model(name, SMALL, per_channel=True)
    assert any(" vrqr " in line for line in model.program.listing.splitlines())
    assert assemble(model.program.listing, SMALL) == model.program.words
    outputs, _ = execute(model.graph, model.program, backend="verilator")
    assert np.array_equal(outputs[name], model.expected)


def test_accuracy_over_batches(capsys):
    """`neu10 accuracy`: every batch bit-exact; its figures are those of each batch's own
    compile and run (the same inputs as `compile_model(batch=b)`)."""
    assert main(["accuracy", "ncf", "--batches", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    errors = []
    for batch in range(4):
        model = compile_model("ncf", DEFAULT, batch=batch)
        outputs, _ = execute(model.graph, model.program)
        errors.append(accuracy(model, outputs["ncf"])[1])
    assert report["bit_exact"] == report["batches"] == 4
    assert report["relative_error_max"] == pytest.approx(max(errors))
    assert report["relative_error_mean"] == pytest.approx(np.mean(errors))
    assert len(set(errors)) == 4                     # four different input batches
    assert main(["accuracy", "resnet", "--batches", "2"]) == 0
    assert "top-1       1.0000 of 16 output rows" in capsys.readouterr().out


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_channels_of_zero_or_tiny_weights_keep_their_bias(per_channel):
    """A channel whose weights are all zero, or a million times smaller than the others',
    still outputs its bias (0.37 at an output scale of 0.01: 37): its scale is raised until
    the bias fits int32 beside the sums, and an all-zero channel takes the layer's."""
    rng = np.random.default_rng(12)
    w = rng.normal(0, 1, (16, 8))
    w[:, 3] *= 1e-9
    w[:, 5] = 0
    bias = np.zeros(8)
    bias[[3, 5]] = 0.37
    g = Graph(DEFAULT, per_channel=per_channel)
    x = g.input("x", rng.integers(-127, 128, (8, 16)), 0.5)
    g.end_operator()
    y = g.linear("fc", x, w, bias, 0.01)
    g.end_operator()
    g.output("y", y)
    outputs, _ = execute(g, g.build())
    assert np.array_equal(outputs["y"], y.ref)
    assert np.all(outputs["y"][:, [3, 5]] == 37)


def test_add_of_operands_at_other_scales_rounds_once():
    """Graph.add to an output scale of its own: each operand weighted by its scale over the
    output's and the sum rounded once, so within half an LSB (and a 2^-23 weight error) of
    the exact sum; relu after; operand scales too far apart are an error naming them."""
    rng = np.random.default_rng(13)
    a_int, b_int = rng.integers(-127, 128, (2, 200, 16))
    g = Graph(DEFAULT)
    a, b = g.input("a", a_int, 0.05), g.input("b", b_int, 0.03)
    g.end_operator()
    y = g.add("add", a, b, relu=True, out_scale=0.07)
    g.end_operator()
    g.output("y", y)
    outputs, _ = execute(g, g.build())
    assert np.array_equal(outputs["y"], y.ref)
    exact = np.maximum(np.clip((a_int * 0.05 + b_int * 0.03) / 0.07, -128, 127), 0)
    assert np.abs(outputs["y"] - exact).max() <= 0.5 + 1e-5
    far = g.input("far", b_int, 0.05 * 2 ** 24)
    with pytest.raises(CompileError, match="operand scales 0.05 and 838861 are more than "
                                           "2\\^23 apart"):
        g.add("far", a, far, out_scale=0.07)


@pytest.mark.parametrize("ref", ["bert[heads=8]", "bert[heads=16]"], ids=["d4", "d2"])
def test_heads_narrower_than_the_lanes(ref):
    """Heads of 4 and 2 columns on 8 lanes: split onto a tile each and packed back by
    selection products on the MEs (exact), so bit-exact on golden and Verilator and as
    close to float as the toy bert's 4 heads of 8."""
    model = compile_model(ref, SMALL)
    outputs, _ = execute(model.graph, model.program, backend="verilator")
    assert np.array_equal(outputs[ref], model.expected)
    assert accuracy(model, outputs[ref])[1] < TOLERANCE["bert"]
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)


def test_heads_that_straddle_tiles_are_an_error():
    with pytest.raises(OnnxError, match="heads of 3 columns: supported are multiples and "
                                        "divisors of the 8 lanes"):
        compile_model("bert[width=24,heads=8,ff=24]", DEFAULT)


@pytest.mark.parametrize("backend", ["golden", "verilator"])
def test_concat_of_parts_narrower_than_the_lanes_is_bit_exact(backend):
    """ncf's embeddings of 4 columns on 8 lanes: concatenated by whole tiles, then packed by
    a 0/1 placement product on the MEs (the MLPerf NCF's 64 on the tpu's 128 lanes)."""
    model = compile_model("ncf[dim=4]", DEFAULT)
    outputs, _ = execute(model.graph, model.program, backend=backend)
    assert np.array_equal(outputs[model.name], model.expected)
