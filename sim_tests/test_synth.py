"""neu10 synth: Yosys figures of known small blocks, the area weights, the extrapolation
of arrays, the report's structure."""

import json

import pytest
from amaranth.back import verilog

from hw.systolic_array import SystolicArray
from isa.config import NPUConfig
from runtime.apps import synth
from runtime.apps.cli import main
from runtime.backends.verilog import ToolError
from runtime.backends.yosys import Memory, synthesize

TINY = NPUConfig.preset("tiny")


def test_one_systolic_cell():
    """A 1x1 array: two 8-bit weights and a 16-bit product register (the product of two
    int8s is 16 bits: the 32-bit sum's upper bits are copies of its sign, which Yosys
    merges), no memory, and a multiplier in front of it."""
    netlist = synthesize(verilog.convert(SystolicArray(1, 1), name="cell"), "cell")
    flip_flops = {k: n for k, n in netlist.cells.items() if k.startswith("$_S")}
    assert sum(flip_flops.values()) == 2 * 8 + 16
    assert netlist.memory_bits == 0
    assert netlist.cells["$_XOR_"] > 50 and netlist.cells["$_AND_"] > 50   # the multiplier
    assert 10 < netlist.depth < 60


@pytest.mark.parametrize("kind, weight", [
    ("$_DFF_P_", synth.FLIP_FLOP),
    ("$_DFFE_PP_", synth.FLIP_FLOP + synth.ENABLE),
    ("$_SDFF_PP0_", synth.FLIP_FLOP + synth.RESET),
    ("$_SDFFE_PP0P_", synth.FLIP_FLOP + synth.ENABLE + synth.RESET),
    ("$_SDFFCE_PN1P_", synth.FLIP_FLOP + synth.ENABLE + synth.RESET),
    ("$_DFF_PN0_", synth.FLIP_FLOP + synth.RESET),             # asynchronous reset
    ("$_DFFE_PN0P_", synth.FLIP_FLOP + synth.ENABLE + synth.RESET),
    ("$_DFFSRE_PPPP_", synth.FLIP_FLOP + synth.ENABLE + synth.RESET),
    ("$_DLATCH_P_", synth.FLIP_FLOP),
    ("$_FF_", synth.FLIP_FLOP),
    ("$_NAND_", 1.0), ("$_XOR_", 2.33),
])
def test_cell_weights(kind, weight):
    assert synth.area({kind: 3})[0] == pytest.approx(3 * weight)


def test_memory_weights():
    sram = Memory(width=32, depth=1024, clocked_reads=2, combinational_reads=0)
    regfile = Memory(width=64, depth=256, clocked_reads=0, combinational_reads=2)
    assert synth.memory_area(sram) == 32 * 1024 * synth.SRAM_BIT
    assert synth.memory_area(regfile) == pytest.approx(
        64 * 256 * (synth.REGFILE_BIT + 2 * synth.REGFILE_READ))
    assert synth.area({}, [sram, regfile])[1] == pytest.approx(
        synth.memory_area(sram) + synth.memory_area(regfile))
    with pytest.raises(ToolError, match=r"no NAND2 weight for the cell kind '\$_MYSTERY_'"):
        synth.area({"$_MYSTERY_": 1})


def test_the_scratchpad_and_instruction_memories_are_srams():
    """The scratchpad's banks and the dispatcher's instruction memories are read through
    registers (SRAM macros: every bit of spad_rows x lanes x 32 and n_ctx x imem_words x
    64); the host interface's small request queues are read combinationally (register
    files)."""
    spad = synth.block_figures(TINY, "scratchpad", "lanes")
    assert spad["sram_bits"] == TINY.spad_rows * TINY.ve_lanes * 32
    dispatcher = synth.block_figures(TINY, "dispatcher")
    assert dispatcher["sram_bits"] == TINY.n_ctx * TINY.imem_words * 64
    assert dispatcher["regfile_bits"] == 0
    host = synth.block_figures(TINY, "host_interface")
    assert host["regfile_bits"] > 0 and host["sram_bits"] == 0


def test_the_dispatcher_does_not_set_the_clock():
    """The dispatcher's longest path (retire is registered, arbitration one chain through
    the contexts) is no longer than the vector engine's: the engines set the clock."""
    dispatcher = synth.block_figures(TINY, "dispatcher")
    ve = synth.block_figures(TINY, "vector_engine")
    assert dispatcher["depth"] <= ve["depth"]


def test_small_blocks_of_the_tiny_config():
    report = synth.pnpu_report(TINY, ["body_fifo", "host_interface"])
    fifo, host = report["blocks"]["body_fifo"], report["blocks"]["host_interface"]
    # A µTOp body FIFO: max_body - 1 words of SRAM (its output register is the SRAM's).
    assert fifo["memory_bits"] == fifo["sram_bits"] == 64 * (TINY.max_body - 1)
    assert fifo["instances"] == TINY.n_me + TINY.n_ve + TINY.n_dma and fifo["neu10"]
    # The host interface holds at least its request queues: queue_depth offsets and
    # arrival stamps (63 bits) per context, and its finished queue one deeper.
    assert host["memory_bits"] + host["ff_bits"] >= TINY.n_ctx * 63 * (2 * TINY.queue_depth + 1)
    for figures in (fifo, host):
        assert figures["area_nand2"] == pytest.approx(figures["logic_nand2"]
                                                      + figures["memory_nand2"])
        assert figures["memory_bits"] == figures["sram_bits"] + figures["regfile_bits"]
        assert figures["cell_count"] == sum(figures["cells"].values())
        assert figures["depth"] > 0 and figures["method"] == "synthesized"
    # Shares of the pNPU need every part: none for a subset.
    assert fifo["share"] is None and "neu10_share" not in report
    assert fifo["total_nand2"] == pytest.approx(fifo["area_nand2"] * fifo["instances"])


@pytest.mark.parametrize("points, target, area_error", [
    ((1, 2, 4), 8, 0.15),              # a 1x1 array has no adder chain: a poor point
    pytest.param((2, 4, 8), 16, 0.05, marks=pytest.mark.slow),
])
def test_arrays_beyond_direct_synthesis_are_extrapolated(monkeypatch, points, target,
                                                         area_error):
    """The quadratic through three array sizes predicts a larger one (flip-flops within 2%)."""
    # (An HBM line twice tiny's, so that one lane still has a line of a program word.)
    wide = synth._scaled_config(TINY.replace(hbm_bytes_per_cycle=32), target)
    direct = synth.block_figures(wide, "systolic_array", "array")
    assert direct["method"] == "synthesized"
    monkeypatch.setattr(synth, "DIRECT_UP_TO", points[-1])
    monkeypatch.setattr(synth, "FIT_POINTS", points)
    fitted = synth.block_figures(wide, "systolic_array", "array")
    assert fitted["method"] == (f"quadratic in lanes (array in proportion) through "
                                f"{', '.join(map(str, points))} (depth at {points[-1]})")
    assert fitted["area_nand2"] == pytest.approx(direct["area_nand2"], rel=area_error)
    assert fitted["ff_bits"] == pytest.approx(direct["ff_bits"], rel=0.02)


def test_cli_json(capsys):
    assert main(["synth", "--config", "tiny", "--block", "body_fifo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["blocks"]) == ["body_fifo"]
    assert report["blocks"]["body_fifo"]["memory_bits"] == 64 * (TINY.max_body - 1)


def test_cli_bad_block(capsys):
    assert main(["synth", "--block", "gpu"]) == 2
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_whole_tiny_pnpu():
    report = synth.pnpu_report(TINY)
    assert set(report["blocks"]) == {part for part, *_ in synth.PARTS} | {"systolic_array"}
    assert report["total_nand2"] == pytest.approx(sum(
        f["total_nand2"] for b, f in report["blocks"].items() if b != "systolic_array"))
    assert 0 < report["neu10_share"] < 1 and report["depth_vs_me"]["matrix_engine"] == 1
    # The array is part of the matrix engine, and smaller.
    assert report["blocks"]["systolic_array"]["area_nand2"] < \
        report["blocks"]["matrix_engine"]["area_nand2"]
    assert report["blocks"]["systolic_array"]["share"] is None
    assert sum(f["share"] for b, f in report["blocks"].items() if f["share"]) == \
        pytest.approx(1)


def test_an_extrapolated_figure_never_goes_below_zero():
    """236, 238, 240 at 4, 8, 16 lanes: the quadratic through them bends below 0 at 128."""
    points = [(4, {"n": 236}), (8, {"n": 238}), (16, {"n": 240})]
    assert synth._fit(points, 128, "n") == 0.0
    assert synth._fit(points, 16, "n") == pytest.approx(240)
