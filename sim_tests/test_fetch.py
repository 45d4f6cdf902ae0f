"""Instruction fetch from HBM: programs longer than the instruction buffer, the prefetcher's
ring discipline, fetch traffic on HBM, and programs placed where no tenant can reach them."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from isa.asm import assemble
from isa.config import NPUConfig
from isa.encoding import Fault
from isa.golden import ContextSpec, GoldenNPU, Segment
from isa.regmap import Status
from hw.dispatcher.prefetcher import Prefetcher
from runtime.host.driver import Driver, DriverError
from simutil import convert
from test_conformance import same_run

TINY = NPUConfig.preset("tiny")
SEGMENTS = [(Segment(c * 256, 256), Segment(c * 1024, 1024)) for c in range(4)]


def long_program(seed, n_utops, *, engines="ve"):
    """A chain of µTOps with bodies of 0..7 words (so bodies straddle the buffer's end): VE
    adds into rows 0..7, DMA copies of rows to HBM."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_utops):
        kind = rng.choice(engines)
        # A chain (deps(-1)): the DMA copies read rows the VE µTOps write.
        flags = (" deps(-1)" if i else "") + (" eop" if i == n_utops - 1 else "")
        if kind == "ve" or i == n_utops - 1:
            lines.append(f".ve{flags}")
            for j in range(rng.randint(0 if i < n_utops - 1 else 1, 7)):
                row = rng.randrange(8)
                lines.append(f"    vaddi {row}, {row}, {rng.randint(-5, 5)}, 1")
        else:
            lines.append(f".dma{flags}")
            lines.append(f"    dstore {64 + rng.randrange(8) * 4}, {rng.randrange(8)}, 1")
    return assemble("\n".join(lines) + "\n", config=TINY)


def run_long(backend, programs, policy="harvest"):
    driver = Driver(TINY, backend)
    driver.set_policy(policy)
    for c, words in enumerate(programs):
        driver.load_context(c, words, *SEGMENTS[c], me_mask=1 << c % 2, ve_mask=1 << c % 2)
        driver.write_spad(SEGMENTS[c][0].base, np.arange(32).reshape(8, 4) * (c + 1))
    return driver.run(max_cycles=100_000, read_spad=[(s.base, 16) for s, _ in SEGMENTS],
                      read_hbm=[(h.base, 128) for _, h in SEGMENTS])


@pytest.mark.parametrize("policy", [pytest.param("static", marks=pytest.mark.slow), "harvest",
                                    pytest.param("temporal", marks=pytest.mark.slow),
                                    pytest.param("v10", marks=pytest.mark.slow)])
def test_programs_longer_than_the_buffer_match_golden_on_pysim(policy):
    """Two tenants, each with a program of about three times the 256-word buffer, under
    every policy: results equal golden's, every µTOp retires, each line is fetched once."""
    programs = [long_program(c, 200, engines=("ve", "ve", "dma")) for c in range(2)]
    assert all(len(words) > 2 * TINY.imem_words for words in programs)
    golden, pysim = run_long("golden", programs, policy), run_long("pysim", programs, policy)
    K = TINY.prog_words_per_line
    for gold, rtl, words in zip(golden.contexts, pysim.contexts, programs):
        assert (rtl.status, rtl.fault) == (gold.status, gold.fault) == (Status.DONE, Fault.NONE)
        assert rtl.counters["RETIRED"] == gold.counters["RETIRED"] == 200
        # Every line of the program fetched once: the instruction traffic on HBM.
        assert rtl.counters["FETCHED"] == -(-len(words) // K)
    for key in golden.spad:
        assert np.array_equal(golden.spad[key], pysim.spad[key]), key
    for key in golden.hbm:
        assert np.array_equal(golden.hbm[key], pysim.hbm[key]), key


def test_programs_longer_than_the_buffer_agree_on_verilator():
    """The same, cycle for cycle, on Verilator (counters, faults, memory)."""
    programs = [long_program(10 + c, 150, engines=("ve", "dma")) for c in range(3)]
    same_run(run_long("pysim", programs), run_long("verilator", programs))


def test_a_fetch_fault_past_the_buffer_is_precise():
    """A program twice the buffer's size whose last µTOp's body runs past PROG_LEN: every
    µTOp before it runs, FETCH_OOB is reported at its header, on golden and pysim."""
    words = long_program(3, 150)
    header = 0
    while header + 1 + (words[header] >> 16 & 0xFF) < len(words):   # find the last µTOp
        header += 1 + (words[header] >> 16 & 0xFF)
    # It claims 5 body words; the program ends after its first.
    words = words[:header + 2]
    words[header] = words[header] & ~(0xFF << 16) | 5 << 16
    assert header > TINY.imem_words
    for backend in ("golden", "pysim"):
        driver = Driver(TINY, backend)
        driver.load_context(0, words, *SEGMENTS[0])
        [context] = driver.run(max_cycles=50_000).contexts
        assert (context.status, context.fault, context.fault_pc) == \
            (Status.FAULTED, Fault.FETCH_OOB, header), backend


def test_programs_sit_outside_every_segment():
    driver = Driver(TINY, "golden")
    driver.load_context(0, long_program(1, 10), *SEGMENTS[0])
    driver.load_context(1, long_program(2, 10), *SEGMENTS[1])
    programs = list(driver.programs.values())
    for segment in programs:
        assert segment.base % TINY.hbm_words_per_cycle == 0
        assert not any(segment.overlaps(h) for _, h in SEGMENTS[:2])
    assert not programs[0].overlaps(programs[1])
    # A tenant whose data segment would cover a program is refused, naming it.
    with pytest.raises(DriverError, match="overlaps context 0's program"):
        driver.load_context(2, long_program(3, 4), Segment(512, 16), programs[0])
    with pytest.raises(DriverError, match="program base 6 must be a multiple of 4"):
        driver.load_context(2, long_program(3, 4), *SEGMENTS[2], prog_base=6)
    with pytest.raises(DriverError, match="overlaps HBM words 1024..2047"):
        driver.load_context(3, long_program(3, 4), *SEGMENTS[3], prog_base=1024)


# --- the prefetcher alone ---------------------------------------------------------------------

def prefetch(program_lines, *, keep_at, restart_at=None, cycles=120, latency=None):
    """Drive a Prefetcher against an HBM stand-in answering each line ``latency`` cycles
    after it is accepted with the line's number in every word; ``keep_at(cycle)`` is the
    oldest word still needed. Returns (accepted lines, written (row, first word), visible
    per cycle)."""
    config = TINY if latency is None else TINY.replace(hbm_latency=latency)
    dut = Prefetcher(config)
    K, L = config.prog_words_per_line, config.hbm_latency
    accepted, written, visible = [], [], []

    async def testbench(ctx):
        ctx.set(dut.prog_base, 4096)
        ctx.set(dut.prog_len, program_lines * K)
        in_flight = []
        for cycle in range(cycles):
            ctx.set(dut.keep, keep_at(cycle))
            # (A context is not running, so not fetching, in the cycle it is started.)
            starting = cycle == 0 or cycle == restart_at
            ctx.set(dut.start, int(starting))
            ctx.set(dut.enable, int(not starting))
            ctx.set(dut.hbm.req.ready, int(cycle % 3 != 1))    # HBM busy one cycle in three
            due = [line for when, line in in_flight if when == cycle]
            ctx.set(dut.hbm.resp_valid, int(bool(due)))
            if due:
                ctx.set(dut.hbm.resp, [due[0]] * config.hbm_words_per_cycle)
            if ctx.get(dut.write.en):
                written.append((cycle, ctx.get(dut.write.addr), ctx.get(dut.write.data) & 0xFFFFFFFF))
            if ctx.get(dut.hbm.req.valid) and ctx.get(dut.hbm.req.ready):
                line = ctx.get(dut.hbm.req.payload.line)
                accepted.append((cycle, line))
                in_flight.append((cycle + L, line))
            visible.append(ctx.get(dut.visible))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return accepted, written, visible


def test_the_prefetcher_stays_within_the_ring_above_keep():
    """With the oldest needed word stuck at 10, lines are requested up to 10 + imem_words
    and no further; moving keep on releases exactly the room it frees."""
    K, N = TINY.prog_words_per_line, TINY.imem_words
    accepted, written, visible = prefetch(1000, keep_at=lambda cycle: 10 if cycle < 300 else 60,
                                          cycles=400)
    first = 4096 // TINY.hbm_words_per_cycle
    before = [line - first for cycle, line in accepted if cycle < 300]
    assert before == list(range(len(before)))                   # in order, none skipped
    assert (before[-1] + 1) * K <= 10 + N < (before[-1] + 2) * K
    after = [line - first for cycle, line in accepted if cycle >= 300]
    assert (after[-1] + 1) * K <= 60 + N < (after[-1] + 2) * K
    # Each line lands in row (line mod rows), and becomes visible one cycle after.
    rows = N // K
    assert [row for _, row, _ in written] == [i % rows for i in range(len(written))]
    assert [data - first for _, _, data in written] == list(range(len(written)))
    landed = written[0][0]
    assert visible[landed] == 0 and visible[landed + 1] == 0 and visible[landed + 2] == K


def test_the_prefetcher_drops_lines_of_the_run_before_a_start():
    """A START while lines are in flight: they arrive and are not written; the new run's
    lines fill the ring from row 0 again."""
    accepted, written, visible = prefetch(40, keep_at=lambda cycle: 0, restart_at=30,
                                          cycles=120, latency=12)
    first = 4096 // TINY.hbm_words_per_cycle
    in_flight = [line for cycle, line in accepted if 30 - 12 < cycle < 30]
    assert in_flight                                        # the case is exercised
    after = [(row, data - first) for cycle, row, data in written if cycle > 30]
    assert after[:3] == [(0, 0), (1, 1), (2, 2)], after[:3]
    assert visible[31] == 0


def test_the_prefetcher_converts():
    convert(Prefetcher(TINY))
    convert(Prefetcher(NPUConfig.preset("tpu")))


def test_a_request_window_over_a_program_is_refused():
    """A doorbell offset that would move a context's HBM window onto a program (its own
    or another's) is refused before the stream runs, naming both."""
    driver = Driver(TINY, "golden")
    driver.load_context(0, long_program(1, 4), Segment(0, 16), Segment(0, 4))
    driver.load_context(1, long_program(2, 4), Segment(16, 16), Segment(64, 4))
    program = driver.programs[1]
    with pytest.raises(DriverError, match=r"request 1: with offset .* context 0's HBM window "
                                          r".* covers context 1's program"):
        driver.serve([(0, 0), (10, 0)], offsets=[0, program.base])
    with pytest.raises(DriverError, match="context 0's program is there"):
        driver.reserve_hbm(driver.programs[0])
