"""The model compiler at larger sizes: bodies of any length split across µTOps with their
engine state replayed, activations that give their scratchpad back after their last use,
and attention one head at a time; every result still bit-exact on the golden model."""

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.encoding import Engine, instr
from runtime.apps.inference import execute
from runtime.compiler.builder import CompileError, split_body
from runtime.compiler import graph as graph_module
from runtime.compiler.graph import Graph, Image
from runtime.compiler.models import MODELS, compile_model

DEFAULT = NPUConfig()


def _text(body):
    return [f"{i.op.mnemonic} {sorted(i.args.items())}" for i in body]


def test_split_body_replays_the_engine_state_each_piece_needs():
    body = [instr("vldlut", 0), instr("vsetq", 3, 2, 0), instr("vld", 1, 5),
            instr("vadd", 10, 11, 12, 4), instr("vld", 1, 6), instr("vlut", 10, 10, 4),
            instr("vsetq", 7, 1, 0), instr("vrq", 10, 10, 4), instr("vmulr", 10, 10, 1, 4)]
    pieces = split_body(body, 6, "t")
    assert all(len(p) <= 6 for p in pieces)
    # Each piece after the first opens with the latest value of every state set before it,
    # in the order it was last set; the work instructions appear once, in order.
    assert _text(pieces[0]) == _text(body[:6])
    assert _text(pieces[1]) == _text([body[0], body[4], body[6], body[7], body[8]])
    assert split_body(body, 9, "t") == [body]
    work = [i for p in pieces for i in p if i.op.mnemonic not in ("vldlut", "vsetq", "vld")]
    assert _text(work) == _text([body[3], body[5], body[7], body[8]])


def test_split_body_keeps_a_loop_with_its_body_and_replays_dma_shape():
    body = [instr("dcfg", 4, 16, 1)] + [instr("dload", r, 100 + r, 1) for r in range(3)]
    body += [instr("dbase", 7), instr("dgather", 0, 9, 2)]
    pieces = split_body(body, 3, "dma")
    assert [p[0].op.mnemonic for p in pieces[1:]] == ["dcfg"] * (len(pieces) - 1)
    assert "dbase" in [i.op.mnemonic for i in pieces[-1]]
    ve = [instr("vaddi", 0, 0, 1, 1), instr("loop", 4, 2, 1, 1), instr("vaddi", 1, 1, 1, 1),
          instr("vmuli", 1, 1, 2, 1)]
    pieces = split_body(ve, 3, "loop")
    assert [len(p) for p in pieces] == [1, 3]
    with pytest.raises(CompileError, match=r"loop: 3 instructions must share one µTOp "
                                           r"\(0 setting engine state, then a loop\); max_body is 2"):
        split_body(ve, 2, "loop")


def test_split_body_keeps_an_mmloop_with_its_pair_and_replays_its_last_weights():
    """A piece that starts after an mmloop opens with the weights of its last iteration;
    the pieces run on golden to the same rows as the whole body."""
    from isa.golden import ContextSpec, GoldenNPU, Segment
    from isa.encoding import UTop, encode_program
    config = NPUConfig(array_rows=4, array_cols=4, ve_lanes=4, spad_rows=128)
    body = [instr("ldw", 0, 4), instr("mm", 100, 40, 2), instr("mmloop", 3, 4, 2),
            instr("ldw", 8, 4), instr("mm", 104, 40, 2), instr("mm", 108, 50, 3)]
    pieces = split_body(body, 3, "me")
    assert [[i.op.mnemonic for i in p] for p in pieces] == [
        ["ldw", "mm"], ["mmloop", "ldw", "mm"], ["ldw", "mm"]]
    assert pieces[2][0].args["src"] == 8 + 2 * 4          # iteration 2's weights
    rng = np.random.default_rng(3)
    init = rng.integers(-128, 128, (128, 4))
    results = []
    for bodies in ([body], pieces):
        golden = GoldenNPU(config)
        golden.spad[:] = init
        words = encode_program([UTop(Engine.ME, b, eop=i == len(bodies) - 1)
                                for i, b in enumerate(bodies)])
        [outcome] = golden.run([ContextSpec(words, Segment(0, 128), Segment(0, 1024))])
        assert outcome.fault == 0
        results.append(golden.spad[100:111].copy())
    assert np.array_equal(results[0], results[1])


@pytest.mark.parametrize("name", MODELS)
def test_models_on_the_shortest_utops_stay_bit_exact(name):
    """max_body as small as the model allows (4; 6 for bert, whose layer norm holds a
    table, two registers and a requantization at once): many VE and DMA bodies are split,
    and each piece must set again the table, requantization and registers it uses. The
    golden model (race check on) gives the same integers as the reference."""
    config = DEFAULT.replace(max_body=6 if name == "bert" else 4)
    model = compile_model(name, config)
    assert sum("#" in n for n in model.program.names) >= 10        # split µTOps
    assert max(len(u.body) for u in model.program.utops) <= config.max_body
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[name], model.expected)


def test_scratchpad_peak_does_not_grow_with_depth():
    """Freed regions rest for dep_window µTOps before reuse, so the first layers still
    take fresh rows (best fit settles within a few tens of layers: 24 on bert's shape);
    from then on every layer reuses what the earlier ones gave back."""
    peaks = [compile_model(f"bert[tokens=32,layers={n}]", DEFAULT).graph.builder.spad_peak
             for n in (1, 24, 48)]
    assert peaks[1] == peaks[2] < 1.2 * peaks[0]


def test_long_rows_and_more_heads_than_the_scratchpad_holds_at_once():
    """bert[tokens=128] on default: softmax rows of 128 columns (16 tiles, over 100 vector
    instructions per row block: more than max_body) and four heads whose scores and
    probabilities together exceed the scratchpad; attention runs one head at a time: the
    peak stays below two heads' scores and probabilities (and the softmax's five scratch
    rows per row)."""
    ref, heads, tokens = "bert[tokens=128]", 4, 128
    per_head = 2 * tokens * (tokens // DEFAULT.ve_lanes)
    assert heads * per_head >= DEFAULT.spad_rows
    model = compile_model(ref, DEFAULT)
    assert model.graph.builder.spad_peak < 2 * per_head + 5 * tokens
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)


@pytest.mark.parametrize("ref", ["resnet[batch=1,image=32]", "ncf[batch=1024]"])
def test_reductions_and_gathers_longer_than_one_instruction(ref):
    """GlobalAveragePool over 18 x 18 = 324 padded pixels (one `vrsum` sums at most 256
    rows) and 1024 embedding lookups per table (one `dgather` moves at most 256 rows)."""
    model = compile_model(ref, DEFAULT)
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)


def test_freed_rows_rest_for_the_dependency_window_unless_nothing_else_fits():
    from isa.encoding import Engine
    from runtime.compiler.builder import ProgramBuilder
    b = ProgramBuilder(DEFAULT, spad_rows=100)
    first = b.alloc(40, "a")
    b.free(first)
    second = b.alloc(40, "b")                 # rests: taken from fresh rows
    assert second.start == 40
    third = b.alloc(40, "c")                  # nothing else fits: the resting rows
    assert third.start == 0
    b.free(second)
    for i in range(DEFAULT.dep_window):
        b.utop(Engine.VE, [instr("vaddi", 0, 0, 1, 1)], name=f"u{i}")
    assert b.alloc(10, "d").start == 40       # matured: first fit again
    with pytest.raises(ValueError, match="not allocated"):
        b.free(second)


def test_split_body_refuses_what_a_replay_would_change():
    work = [instr("vaddi", 0, 0, 1, 1)] * 6
    with pytest.raises(CompileError, match="vsetvl cannot be split"):
        split_body([instr("vsetvl", 2), instr("vld", 1, 5)] + work, 4, "t")
    looped = [instr("loop", 2, 2, 1, 1), instr("vld", 1, 5), instr("vaddi", 0, 0, 1, 1)]
    with pytest.raises(CompileError, match="loop that sets engine state"):
        split_body(looped + work, 4, "t")


def test_a_scratchpad_barely_large_enough_reuses_rows_early_and_stays_bit_exact():
    """560 rows: less than the resting allocator's peak with room to spare (840), so freed
    rows are taken before they rest dep_window µTOps; the golden model's race check holds
    the dependencies the builder derives for that early reuse."""
    roomy = compile_model("bert", DEFAULT).graph.builder.spad_peak
    model = compile_model("bert", DEFAULT, spad_rows=560)
    assert model.graph.builder.spad_peak <= 560 < roomy
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs["bert"], model.expected)


@pytest.mark.parametrize("name, rows", [("bert", 500), ("resnet", 3000)])
def test_activations_spill_to_hbm_and_come_back_bit_exact(name, rows, monkeypatch):
    """A scratchpad too small for the activations that live across operators (bert's
    residual input during attention, resnet's stem output during its block): the least
    recently used one is stored to HBM (int8, packed: one byte per value) and loaded back
    by the operator that reads it next; golden (race check on) gives the reference's
    integers."""
    model = compile_model(name, DEFAULT, spad_rows=rows)
    graph = model.graph
    assert graph.spills >= 1 and graph.reloads >= 1
    assert graph.builder.spad_peak <= rows
    assert sum(n.startswith("spill ") for n in model.program.names) >= 1
    assert sum(n.startswith(("reload ", "load rows ")) for n in model.program.names) >= 1
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[name], model.expected)

    def refuse(self, home):
        raise CompileError(f"activation {home} would be spilled")
    monkeypatch.setattr(Graph, "_spill", refuse)            # without spilling: no room
    with pytest.raises(ValueError, match="would be spilled"):
        compile_model(name, DEFAULT, spad_rows=rows)


def test_spills_of_int8_activations_are_packed():
    """bert's activations are int8: each spilled row costs lanes / 4 HBM words."""
    graph = compile_model("bert", DEFAULT, spad_rows=500).graph
    spilled_rows = sum(graph._spilled[h][0].size for h in graph._spilled)
    assert graph.spill_bytes == spilled_rows * DEFAULT.ve_lanes


def test_attention_streams_heads_through_hbm_when_q_k_v_do_not_fit():
    """bert 128 tokens x 256, 4 heads: q, k and v (4096 rows each) and the context do not
    fit beside a head's scores in 16384 rows, so q, k and v go to HBM and each head's
    parts come back for that head alone; bit-exact (golden, race check on)."""
    ref = "bert[tokens=128,width=256,heads=4,ff=512]"
    model = compile_model(ref, DEFAULT)
    graph, heads = model.graph, 4
    assert graph.reloads >= 3 * heads
    assert graph.builder.spad_peak <= DEFAULT.spad_rows
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)


def test_a_merged_context_that_does_not_fit_is_born_in_hbm():
    """On 3072 rows, bert 64 tokens x 64, 2 heads: the merged context does not fit beside
    one head's work, so each head's context is stored to HBM as it is made, the heads'
    Transpose + Reshape leave it there and the output projection loads it back;
    bit-exact (golden, race check on)."""
    ref = "bert[tokens=64,width=64,heads=2,ff=128]"
    config = DEFAULT.replace(spad_rows=3072)
    model = compile_model(ref, config)
    names = model.program.names
    stores = [i for i, n in enumerate(names)
              if n.startswith("layer0.context.") and " store." in n]
    assert len(stores) >= 2
    assert any(n.startswith(("reload", "load rows")) for n in names[stores[-1]:])
    assert model.graph.builder.spad_peak <= config.spad_rows
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)


def test_attention_runs_by_bands_of_queries_when_a_head_s_scores_do_not_fit():
    """bert 256 tokens: one head's scores are 8192 rows and its probabilities as many, so
    each head runs by bands of query rows (scores, softmax, context), each band's context
    stored to HBM; bit-exact (golden, race check on)."""
    _bit_exact_with("bert[tokens=256]", "layer0.scores.0 rows ", "layer0.context.1 store rows ")


def test_a_linear_too_large_for_the_scratchpad_runs_by_row_bands_through_hbm():
    """bert 128 tokens x 256, ff 1024: ff1's output alone (16384 rows) is the whole
    scratchpad, so ff1 runs by bands of rows, each band's output stored to HBM, and ff2
    reads its input from HBM by the same bands; bit-exact (golden, race check on)."""
    _bit_exact_with("bert[tokens=128,width=256,heads=4,ff=1024]", "layer0.ff1 store rows ",
                    "load rows ")


def _bit_exact_with(ref, *prefixes):
    """``ref`` on default has a µTOp named after each of ``prefixes``, stays within the
    scratchpad and is bit-exact on golden (race check on)."""
    model = compile_model(ref, DEFAULT)
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in model.program.names), prefix
    assert model.graph.builder.spad_peak <= DEFAULT.spad_rows
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)


def test_residual_adds_and_layer_norms_run_by_row_bands_too():
    """bert 128 tokens x 384, 6 heads, ff 768: the residual stream (6144 rows) and its
    sum do not fit beside each other, so the residual Adds and layer norms run by bands of
    rows through HBM, as the linear layers do; bit-exact (golden, race check on)."""
    ref = "bert[tokens=128,width=384,heads=6,ff=768]"
    model = compile_model(ref, DEFAULT)
    banded = {n.split(" store rows")[0] for n in model.program.names if " store rows " in n}
    assert {"layer0.res1", "layer0.ln1", "layer0.res2", "layer0.ln2"} <= banded
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)


@pytest.mark.slow
@pytest.mark.parametrize("ref", ["bert[tokens=128,width=256,heads=4,ff=1024]", "bert[tokens=256]"])
def test_row_bands_run_on_verilator(ref):
    """Linear layers by row bands, and attention by bands of queries."""
    model = compile_model(ref, DEFAULT)
    outputs, _ = execute(model.graph, model.program, backend="verilator")
    assert np.array_equal(outputs[ref], model.expected)


def test_small_attention_is_not_streamed():
    """Where everything fits, nothing goes to HBM (streaming costs DMA traffic)."""
    for ref in ("bert", "bert[tokens=128]", "bert[tokens=64,layers=2]"):
        assert compile_model(ref, DEFAULT).graph.spills == 0, ref


def test_spilled_activations_run_on_verilator():
    """The spills' DMA traffic on the RTL: bit-exact, and slower than with room to spare."""
    tight = compile_model("bert", DEFAULT, spad_rows=500)
    roomy = compile_model("bert", DEFAULT)
    outputs, run = execute(tight.graph, tight.program, backend="verilator")
    assert np.array_equal(outputs["bert"], tight.expected)
    _, roomy_run = execute(roomy.graph, roomy.program, backend="verilator")
    assert run.makespan > roomy_run.makespan


@pytest.mark.slow
def test_bert_base_compiles_on_tpu():
    """BERT-base (12 layers of 768 wide, 128 tokens, ff 3072, 12 heads of 64: two heads to
    each 128-lane tile, split and merged by the MEs) on tpu: its 1.8 M weight words per
    layer fit the 8 GiB HBM, and its activations the scratchpad with a few spills."""
    model = compile_model("bert-base", NPUConfig.preset("tpu"))
    assert len(model.program.words) < 100_000
    assert model.graph.builder.hbm_top > 12 * 1_700_000
    assert len({n.split(" ")[0] for n in model.program.names if ".head" in n}) == 12 * 3 * 12


@pytest.mark.parametrize("spad_rows, ring", [(1400, 3), (900, 3), (700, 2), (450, 1)])
def test_a_ring_of_weight_panels_that_does_not_fit_makes_do_with_fewer(spad_rows, ring,
                                                                       monkeypatch):
    """A linear layer whose three streaming panel buffers (257 rows each, K = 256) do not
    fit beside its input: the ring shrinks to two or one buffer (it used to be a compile
    error naming the weight panel; at 900 rows, three fit once the input is spilled), and
    the result stays bit-exact."""
    rings = []
    allocate = graph_module._Panels.allocate

    def recording(panels, count, held):
        allocate(panels, count, held)
        rings.append(len(panels.bufs))
    monkeypatch.setattr(graph_module._Panels, "allocate", recording)
    rng = np.random.default_rng(3)
    g = Graph(DEFAULT, spad_rows=spad_rows)
    x = g.input("x", rng.integers(-127, 128, (16, 256)), 0.05)
    g.end_operator()
    y = g.linear("fc", x, rng.normal(0, 0.05, (256, 24)), np.zeros(24), 0.05)
    g.end_operator()
    g.output("y", y)
    outputs, _ = execute(g, g.build())
    assert rings[0] == ring
    assert np.array_equal(outputs["y"], y.ref)
    assert g.builder.spad_peak <= spad_rows


def test_an_input_matrix_as_large_as_the_scratchpad_stays_in_hbm():
    """An input that would take every free row (bert-large's 128 x 1024 on default is the
    whole 16384-row scratchpad) stays in HBM and its reader runs by row bands; it used to
    be loaded, leaving no row for the weights."""
    rng = np.random.default_rng(5)
    g = Graph(DEFAULT, spad_rows=512)
    x = g.input("x", rng.integers(-127, 128, (64, 64)), 0.05)       # 8 tiles x 64 rows
    g.end_operator()
    y = g.linear("fc", x, rng.normal(0, 0.05, (64, 16)), np.zeros(16), 0.05)
    g.end_operator()
    g.output("y", y)
    program = g.build()
    assert not any(n.startswith("load x") for n in program.names)
    outputs, _ = execute(g, program)
    assert np.array_equal(outputs["y"], y.ref) and g.builder.spad_peak <= 512


@pytest.mark.slow
def test_bert_large_compiles_on_tpu():
    """BERT-large (24 layers of 1024, ff 4096): ff2's 4097-row weight panels do not fit
    three to a ring beside its input on tpu's 16384 rows; the ring makes do with fewer."""
    model = compile_model("bert-large", NPUConfig.preset("tpu"))
    assert model.graph.builder.spad_peak <= 16384 and len(model.program.words) < 200_000


def test_convolution_and_pooling_of_large_images_run_by_bands_of_lines():
    """8 images of 32x32 (9248 padded pixels per channel tile, 8 tiles after the stem): the
    convolutions and the residual add run by bands of image lines through HBM (each band
    loads its input lines with the halo its taps reach), bit-exact on golden (race check
    on)."""
    ref = "resnet[batch=8,image=32]"
    model = compile_model(ref, DEFAULT)
    assert model.graph.builder.spad_peak <= DEFAULT.spad_rows
    assert any(n.startswith("stem store rows") for n in model.program.names)
    assert any(n.startswith("residual store rows") for n in model.program.names)
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)


def test_a_scratchpad_too_small_says_what_lifts_the_limit():
    with pytest.raises(ValueError, match=r"stem: not even one row \(or line\) of 50 scratchpad "
                                         r"rows fits \(a larger `spad_rows` lifts the limit\)"):
        compile_model("resnet", DEFAULT, spad_rows=100)


def test_an_input_image_larger_than_the_scratchpad_stays_in_hbm_and_is_read_by_bands():
    """A 2 x 40 x 40 image of 16 channels (3528 rows per tile) on a 2000-row scratchpad:
    the host writes it to HBM tile after tile, the stride-2 stem gathers its phase images
    from there by DMA (an HBM stride of two pixels), band by band; golden equals the
    compiler's reference, which test_models checks against a plain-loop convolution."""
    rng = np.random.default_rng(2)
    g = Graph(DEFAULT, spad_rows=2000)
    x = g.input("x", rng.integers(-127, 128, (2, 40, 40, 16)), 0.05, image=Image(2, 40, 40))
    assert x.home in g._spilled and x.rows * x.tiles > 2000
    g.end_operator()
    y = g.conv("stem", x, rng.normal(0, 0.1, (7, 7, 16, 8)), np.zeros(8), 0.2, act="relu",
               stride=(2, 2), pads=(3, 3, 3, 3))
    g.end_operator()
    g.output("y", y)
    program = g.build()
    assert any(n.startswith("stem phases") and u.engine == Engine.DMA
               for u, n in zip(program.utops, program.names))
    assert any(n.startswith("stem store rows") for n in program.names)
    assert g.builder.spad_peak <= 2000
    outputs, _ = execute(g, program)
    assert np.array_equal(outputs["y"], y.ref)
