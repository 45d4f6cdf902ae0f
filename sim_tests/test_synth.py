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
from runtime.backends.yosys import synthesize

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


def test_area_weights():
    assert synth.area({"$_NAND_": 3, "$_DFF_P_": 1}, 10) == (3 + synth.FLIP_FLOP, 5.0)
    logic, _ = synth.area({"$_SDFFE_PP0P_": 1}, 0)
    assert logic == pytest.approx(synth.FLIP_FLOP + synth.ENABLE + synth.RESET)
    with pytest.raises(ToolError, match=r"no NAND2 weight for the cell kind '\$_MYSTERY_'"):
        synth.area({"$_MYSTERY_": 1}, 0)


def test_small_blocks_of_the_tiny_config():
    report = synth.pnpu_report(TINY, ["body_fifo", "host_interface"])
    fifo, host = report["blocks"]["body_fifo"], report["blocks"]["host_interface"]
    # A µTOp body FIFO: max_body - 1 words of memory and a 64-bit output register.
    assert fifo["memory_bits"] == 64 * (TINY.max_body - 1)
    assert fifo["instances"] == TINY.n_me + TINY.n_ve + TINY.n_dma and fifo["neu10"]
    # The host interface holds at least its request queues: queue_depth offsets and
    # arrival stamps (63 bits) per context, and its finished queue one deeper.
    assert host["memory_bits"] + host["ff_bits"] >= TINY.n_ctx * 63 * (2 * TINY.queue_depth + 1)
    for figures in (fifo, host):
        assert figures["area_nand2"] == pytest.approx(figures["logic_nand2"]
                                                      + figures["memory_nand2"])
        assert figures["memory_nand2"] == figures["memory_bits"] * synth.SRAM_BIT
        assert figures["cell_count"] == sum(figures["cells"].values())
        assert figures["depth"] > 0 and figures["method"] == "synthesized"
    total = fifo["total_nand2"] + host["total_nand2"]
    assert fifo["share"] == pytest.approx(fifo["total_nand2"] / total)


@pytest.mark.parametrize("points, target, area_error", [
    ((1, 2, 4), 8, 0.15),              # a 1x1 array has no adder chain: a poor point
    pytest.param((2, 4, 8), 16, 0.05, marks=pytest.mark.slow),
])
def test_arrays_beyond_direct_synthesis_are_extrapolated(monkeypatch, points, target,
                                                         area_error):
    """The quadratic through three array sizes predicts a larger one (flip-flops within 2%)."""
    wide = synth._scaled_config(TINY, target)
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
