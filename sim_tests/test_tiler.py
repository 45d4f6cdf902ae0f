"""The gemm tiler (runtime/compiler/tiler.py): which loop order a gemm too large for the
scratchpad runs in, and the programs it gives: weight panels loaded once where the weights
outweigh the input, bit-exact on golden (race check on)."""

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.encoding import dma_words
from runtime.apps.inference import execute
from runtime.compiler.graph import Graph, Image
from runtime.compiler.tiler import choose_tiling

DEFAULT = NPUConfig()


def _tiling(rows, k_tiles, n_tiles, total, input_in_hbm, unit=1, ring=3):
    """The tiler on a scratchpad of ``rows`` rows where a band of b lines computing t
    column tiles takes, per line of ``unit`` rows, its output (t), its input (k_tiles,
    when loaded from HBM) and its accumulators (up to 3), after the panel buffers."""
    panel_rows = k_tiles * DEFAULT.array_rows + 1
    per_line = lambda t: unit * (t + k_tiles * input_in_hbm + min(t, 3))
    return choose_tiling(
        DEFAULT, n_tiles=n_tiles, k_tiles=k_tiles, ring=ring, total=total, unit=unit,
        panel_rows=panel_rows,
        band_for=lambda buffers, t: max(0, (rows - buffers * panel_rows) // per_line(t)),
        input_rows=lambda band: total * unit * k_tiles * input_in_hbm)


def test_large_weights_over_a_small_image_stay_in_the_scratchpad():
    """A ResNet-50 layer4 3x3 convolution on `default` with 6000 rows free: 64 panels of
    4609 rows over a 7x7 image (9 lines of 9 rows with its ring) read in place. Streaming
    fits two lines per band beside its one buffer, so every band would load all 295k
    weight rows again, and the DMA would be the bottleneck; held one at a time, each panel
    is loaded once and the whole image passes under it in one band."""
    tiling = _tiling(6000, 576, 64, 9, False, unit=9, ring=1)
    assert tiling.held and tiling.band >= 9
    assert tiling.buffers == tiling.group


def test_when_the_mes_are_the_bottleneck_the_weights_stream():
    """32 panels of 1025 rows over 1024 rows of input in HBM: streaming through three
    buffers reloads the weights per band (13 bands) but behind the MEs, the busier
    resource; holding them in groups would also read the input again per group."""
    tiling = _tiling(16384, 128, 32, 1024, True)
    assert not tiling.held and tiling.group == 32 and tiling.buffers == 3


def test_every_panel_held_when_they_all_fit():
    tiling = _tiling(16384, 4, 4, 10_000, True)
    assert tiling.held and tiling.group == 4 and tiling.groups(4) == [(0, 4)]


def test_no_loop_order_when_not_even_one_row_fits():
    assert _tiling(1000, 128, 32, 64, True) is None


def test_groups_cover_the_column_tiles_once():
    tiling = _tiling(16384, 128, 30, 64, True)
    covered = [c for first, stop in tiling.groups(30) for c in range(first, stop)]
    assert covered == list(range(30))


def _weight_words_loaded(program, layer):
    return sum(dma_words(u.body, DEFAULT) for u, name in zip(program.utops, program.names)
               if name.startswith(f"{layer} load w"))


def _run(graph):
    program = graph.build()
    outputs, _ = execute(graph, program)
    [(name, (_, tensor))] = graph.outputs.items()
    assert np.array_equal(outputs[name], tensor.ref)
    return program


def test_a_wide_linear_by_bands_loads_each_weight_panel_once():
    """256 rows x 64 -> 512 on a 4096-row scratchpad: the output (16384 rows) does not fit,
    so the linear runs by bands; its 64 panels do not all fit either, so they go in groups
    that stay while the rows pass: each panel is loaded once (before, every band loaded
    every panel). A second linear reads the output back by bands. Bit-exact on golden."""
    rng = np.random.default_rng(3)
    g = Graph(DEFAULT, spad_rows=4096)
    x = g.input("x", rng.integers(-127, 128, (256, 64)), 0.05)
    g.end_operator()
    y = g.linear("fc", x, rng.normal(0, 0.1, (64, 512)), rng.normal(0, 0.1, 512), 0.3)
    g.end_operator()
    y = g.linear("fc2", y, rng.normal(0, 0.1, (512, 8)), rng.normal(0, 0.1, 8), 0.3)
    g.end_operator()
    g.output("y", y)
    program = _run(g)
    weights = 64 * (64 * DEFAULT.ve_lanes // 4 + DEFAULT.ve_lanes)   # int8 packed, bias row
    assert _weight_words_loaded(program, "fc") == weights
    assert any(n.startswith("fc store rows 0 tiles ") for n in program.names)


def test_a_convolution_with_large_weights_by_bands_loads_each_panel_once():
    """A 3x3 convolution of 64 -> 256 channels (32 panels of 577 rows: 18464 rows) over
    two 8x8 images on a 4000-row scratchpad: by bands of lines, each group of panels held
    while the bands pass. Bit-exact on golden."""
    rng = np.random.default_rng(4)
    g = Graph(DEFAULT, spad_rows=4000)
    x = g.input("x", rng.integers(-127, 128, (2, 8, 8, 64)), 0.05, image=Image(2, 8, 8))
    g.end_operator()
    y = g.conv("conv", x, rng.normal(0, 0.05, (3, 3, 64, 256)), rng.normal(0, 0.1, 256), 0.3,
               act="relu")
    g.end_operator()
    y = g.conv("conv2", y, rng.normal(0, 0.05, (1, 1, 256, 8)), rng.normal(0, 0.1, 8), 0.3)
    g.end_operator()
    g.output("y", y)
    program = _run(g)
    weights = 32 * (576 * DEFAULT.ve_lanes // 4 + DEFAULT.ve_lanes)
    assert _weight_words_loaded(program, "conv") == weights


def test_lifted_regions_count_as_free_only_within_the_block():
    """The tiler asks what would fit with a layer's panel ring given back, without giving
    it back (ProgramBuilder.lifted)."""
    from runtime.compiler.builder import ProgramBuilder
    builder = ProgramBuilder(DEFAULT, spad_rows=100)
    ring = builder.alloc(60, "ring")
    assert not builder.fits_all([50])
    with builder.lifted([ring]):
        assert builder.fits_all([100]) and builder.free_rows == 100
    assert not builder.fits_all([50]) and builder.free_rows == 40
    builder.free(ring)                     # still allocated, so it can be given back


def test_lifting_what_is_not_allocated_is_refused_and_changes_nothing():
    from runtime.compiler.builder import ProgramBuilder, Region
    builder = ProgramBuilder(DEFAULT, spad_rows=100)
    ring = builder.alloc(60, "ring")
    with pytest.raises(ValueError, match="not allocated"):
        with builder.lifted([ring, Region("spad", 70, 10)]):
            pass
    assert builder.free_rows == 40
    with pytest.raises(RuntimeError, match="while regions are lifted"):
        with builder.lifted([ring]):
            builder.alloc(10, "x")
    assert builder.free_rows == 40


@pytest.mark.parametrize("per_channel", [False, True])
def test_held_groups_with_a_short_last_pass_are_bit_exact(per_channel, monkeypatch):
    """Groups of 22 of a linear's 64 column tiles (passes of 22, 22 and 20, the later ones
    at a column offset), forced on the tiler, with per-tensor and per-channel weights:
    each panel loaded once, the output bit-exact on golden."""
    from runtime.compiler import graph
    real = graph.choose_tiling

    def groups_of_22(config, **kw):
        band_for = kw["band_for"]
        kw["band_for"] = lambda b, t: band_for(b, t) if (b, t) == (22, 22) else 0
        return real(config, **kw)
    monkeypatch.setattr(graph, "choose_tiling", groups_of_22)
    rng = np.random.default_rng(5)
    g = Graph(DEFAULT, spad_rows=3000, per_channel=per_channel)
    x = g.input("x", rng.integers(-127, 128, (40, 64)), 0.05)
    g.end_operator()
    w = rng.normal(0, 0.1, (64, 512)) * np.linspace(0.1, 3, 512)
    y = g.linear("fc", x, w, rng.normal(0, 1, 512), 0.3, act="relu")
    g.end_operator()
    g.output("y", y)
    program = _run(g)
    assert sum(n.startswith("fc load w") for n in program.names) == 64
    assert any(n.startswith("fc store rows 0 tiles 44") for n in program.names)
