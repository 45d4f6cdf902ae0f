"""The Verilator backend and Verilog output: differential runs against pysim, waveforms, builds."""

import random
import re
import time

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.regmap import Policy
from isa.asm import assemble
from isa.golden import Segment
from runtime.apps.cli import main
from runtime.host.driver import Driver
from runtime.apps.fuzz import random_program
from runtime.backends.verilator import build_model
from test_conformance import same_run

TINY = NPUConfig.preset("tiny")
SEGMENTS = [(Segment(c * 256, 256), Segment(c * 1024, 1024)) for c in range(4)]


def random_run(backend, seed):
    rng = random.Random(seed)
    data = np.random.default_rng(seed)
    driver = Driver(TINY, backend)
    driver.set_policy(rng.choice(list(Policy)))
    for c in range(1 + seed % 4):
        driver.load_context(c, random_program(rng, TINY, rng.randint(1, 30)), *SEGMENTS[c],
                            me_mask=rng.randint(0, 3), ve_mask=rng.randint(0, 3),
                            priority=rng.randint(0, 15))
        driver.write_spad(SEGMENTS[c][0].base, data.integers(-2**31, 2**31, (16, 4)))
        driver.write_hbm(SEGMENTS[c][1].base, data.integers(-2**31, 2**31, 64))
    return driver.run(max_cycles=20_000, read_spad=[(s.base, 64) for s, _ in SEGMENTS],
                      read_hbm=[(h.base, 128) for _, h in SEGMENTS])


@pytest.mark.parametrize("seed", range(6))
def test_random_programs_agree_on_both_backends(seed):
    """Random multi-context programs (many of them fault): results, faults, counters and
    cycles are identical on pysim and verilator."""
    pysim, verilator = random_run("pysim", seed), random_run("verilator", seed)
    assert not pysim.timed_out
    same_run(pysim, verilator)


@pytest.mark.parametrize("warmup", range(4))
def test_cycles_since_reset_agree_on_both_backends(warmup):
    """Two contexts start together and race for the one DMA engine: who wins depends on the
    arbiters' rotation, i.e. on every cycle since reset, host traffic included. For each
    amount of host traffic before START, both backends give the same cycle counts (a
    harness that missed the reset cycle, or added one, would not)."""
    program = assemble(".dma eop\n    dload 0, 0, 4\n    dload 4, 16, 4\n", config=TINY)

    def run(backend):
        driver = Driver(TINY, backend)
        if warmup:
            driver.write_spad(SEGMENTS[3][0].base, np.zeros((warmup, TINY.ve_lanes), dtype=int))
        for c in range(2):
            driver.load_context(c, program, *SEGMENTS[c])
        return driver.run(max_cycles=5000)

    pysim, verilator = run("pysim"), run("verilator")
    same_run(pysim, verilator)
    assert pysim.contexts[0].cycles != pysim.contexts[1].cycles     # the race is real


def test_second_build_is_cached():
    build_model(TINY)
    start = time.perf_counter()
    binary, seconds = build_model(TINY)
    assert seconds == 0.0 and binary.exists()
    assert time.perf_counter() - start < 10


# The Verilator variant builds a tracing model of its own (about 2.5 CPU-minutes): opt-in.
@pytest.mark.parametrize("backend", ["pysim", pytest.param("verilator", marks=pytest.mark.slow)])
def test_vcd_on_both_backends(tmp_path, capsys, backend):
    vcd = tmp_path / f"{backend}.vcd"
    code = main(["conformance", "--backend", backend, "--vcd", str(vcd),
                 "sim_tests/conformance/deps_chain.toml"])
    assert code == 0, capsys.readouterr().out
    text = vcd.read_text()
    assert "$enddefinitions" in text and "busy" in text
    assert text.count("\n#") > 50          # many time steps were dumped


def test_verilog_block_output_and_lint(tmp_path, capsys):
    out = tmp_path / "me.v"
    assert main(["verilog", "--config", "tiny", "--block", "matrix_engine", "-o", str(out),
                 "--lint"]) == 0
    assert "module neu10_matrix_engine(" in out.read_text()
    assert "lint-only -Wall: clean" in capsys.readouterr().out


def test_bad_verilator_setting(monkeypatch):
    monkeypatch.setenv("NEU10_VERILATOR", "/nonexistent/verilator")
    with pytest.raises(Exception, match="NEU10_VERILATOR='/nonexistent/verilator' is not an executable"):
        Driver(TINY, "verilator")


def test_zero_memory_inits_become_one_loop():
    """All-zero initial contents are written as one loop; anything else is left as it is."""
    from runtime.backends.verilog import collapse_zero_inits
    zeros = "  initial begin\n" + "".join(f"    mem[{i}] = 8'h00;\n" for i in range(3)) + "  end\n"
    collapsed = collapse_zero_inits("module m;\n" + zeros + "endmodule\n")
    assert "for (i = 0; i < 3; i = i + 1)\n      mem[i] = 8'h0;" in collapsed
    assert "mem[1]" not in collapsed
    for kept in (zeros.replace("mem[1] = 8'h00", "mem[1] = 8'h01"),     # a non-zero row
                 zeros.replace("mem[2]", "mem[5]"),                      # not rows 0..N-1
                 zeros.replace("    mem[2]", "    other[2]")):           # two memories
        assert collapse_zero_inits(kept) == kept


def test_verilog_sizes_per_block():
    """`neu10 bench` reports the generated Verilog per block: every block of the pNPU once."""
    from runtime.backends.verilog import block_sizes, generate
    sizes = block_sizes(generate(TINY, "npu"))
    assert {"dispatcher", "hbm", "spad", "host", "me", "ve", "dma", "systolic_array",
            "top"} <= sizes.keys()
    assert sizes["total"] > sum(size for name, size in sizes.items() if name != "total")
    assert sizes["me"] < generate(TINY, "matrix_engine").__len__()   # array reported apart


def test_a_build_reports_its_progress_and_the_time_left(tmp_path):
    """The first build of a config takes minutes: the log gets the share of the model's C++
    compiled and the time left, not one line and silence."""
    from runtime.backends.verilator import _BuildProgress
    lines = []
    progress = _BuildProgress(tmp_path, time.perf_counter() - 10, lines.append, every=0)
    progress.update()
    assert lines[-1].startswith("  verilating: ")
    (tmp_path / "a.cpp").write_text("x" * 300)
    (tmp_path / "b.cpp").write_text("x" * 100)
    progress.update()                     # the C++ is there: compiling starts now
    progress.compiling -= 30              # ... as if 30 s ago
    (tmp_path / "a.o").write_text("")
    progress.update()
    share, left = re.fullmatch(r"  compiling the model: (\d+)% of 2 C\+\+ files, \d+ s so far, "
                               r"about (\d+) s left", lines[-1]).groups()
    assert share == "75" and 9 <= int(left) <= 11      # 30 s for 3/4: 10 s for the rest
