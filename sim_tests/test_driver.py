"""The driver refuses what the NPU cannot do, before it writes anything, with errors that
name the value; the golden model refuses overlapping tenants too."""

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.asm import assemble
from isa.golden import ContextSpec, GoldenNPU, Segment
from runtime.host.driver import Driver, DriverError

TINY = NPUConfig.preset("tiny")
PROGRAM = assemble(".ve eop\n vaddi 0, 0, 1, 1\n")


def loaded(*contexts):
    driver = Driver(TINY)
    for c in contexts:
        driver.load_context(c, PROGRAM, Segment(64 * c, 64), Segment(256 * c, 256))
    return driver


@pytest.mark.parametrize("contexts, message", [
    ([1, 1], r"contexts \[1, 1\] name a context more than once"),
    ([-1], r"context -1 does not exist; this NPU has contexts 0..3"),
    ([7], r"context 7 does not exist; this NPU has contexts 0..3"),
    ([True], r"context True does not exist"),
    ([2], r"context 2 was not loaded; loaded: \[0, 1\]"),
])
def test_run_checks_the_contexts_it_starts(contexts, message):
    with pytest.raises(DriverError, match=message):
        loaded(0, 1).run(contexts=contexts)


@pytest.mark.parametrize("cycles", [0, -1, 2**32, 1.5, True])
def test_time_slice_must_fit_the_register(cycles):
    with pytest.raises(DriverError, match=r"time slice must be a number of cycles from 1 to "
                                          r"2\^32-1, not " + repr(cycles).replace(".", r"\.")):
        Driver(TINY).set_time_slice(cycles)


@pytest.mark.parametrize("read_spad, read_hbm, message", [
    ([(TINY.spad_rows - 1, 2)], [], r"cannot read 2 scratchpad rows from 1023: the memory has 1024"),
    ([(-1, 1)], [], r"cannot read 1 scratchpad rows from -1"),
    ([], [(TINY.hbm_words, 1)], r"cannot read 1 HBM words from 8192: the memory has 8192"),
    ([(0, 0)], [], r"cannot read 0 scratchpad rows from 0"),
])
def test_reads_past_the_end_of_memory_are_refused(read_spad, read_hbm, message):
    with pytest.raises(DriverError, match=message):
        loaded(0).run(read_spad=read_spad, read_hbm=read_hbm)


@pytest.mark.parametrize("values, message", [
    ([1 << 32], r"scratchpad values: 4294967296 does not fit in a 32-bit word"),
    ([-(1 << 31) - 1], r"scratchpad values: -2147483649 does not fit in a 32-bit word"),
    ([1.5], r"scratchpad values must be integers, not float64"),
])
def test_values_wider_than_a_word_are_refused(values, message):
    with pytest.raises(DriverError, match=message):
        Driver(TINY).write_spad(0, [values])
    with pytest.raises(DriverError, match=message.replace("scratchpad", "HBM")):
        Driver(TINY).write_hbm(0, values)


def test_full_32_bit_words_are_accepted_signed_or_unsigned():
    driver = loaded(0)
    driver.write_hbm(0, [0xFFFF_FFFF, -(1 << 31)])
    driver.write_spad(0, [[0xFFFF_FFFF, -(1 << 31)]])
    result = driver.run(read_hbm=[(0, 2)], read_spad=[(0, 1)])
    assert list(result.hbm[(0, 2)]) == [-1, -(1 << 31)]
    # (vaddi 0, 0, 1 added one to row 0 in lanes below vl.)
    assert list(result.spad[(0, 1)][0][:2]) == [0, -(1 << 31) + 1]


@pytest.mark.parametrize("spad, hbm, message", [
    (Segment(32, 64), Segment(1024, 256), r"context 1: scratchpad segment base=32 size=64 "
                                          r"overlaps context 0's \(base=0 size=64\)"),
    (Segment(64, 64), Segment(255, 2), r"context 1: HBM segment base=255 size=2 overlaps "
                                       r"context 0's \(base=0 size=256\)"),
])
def test_overlapping_segments_are_refused(spad, hbm, message):
    driver = loaded(0)
    with pytest.raises(DriverError, match=message):
        driver.load_context(1, PROGRAM, spad, hbm)
    golden_contexts = [ContextSpec(PROGRAM, Segment(0, 64), Segment(0, 256)),
                       ContextSpec(PROGRAM, spad, hbm)]
    with pytest.raises(ValueError, match=message):
        GoldenNPU(TINY).run(golden_contexts)


def test_reloading_a_context_may_keep_its_segments_and_empty_segments_never_overlap():
    driver = loaded(0)
    driver.load_context(0, PROGRAM, Segment(0, 64), Segment(0, 256))
    driver.load_context(1, PROGRAM, Segment(10, 0), Segment(64, 0))
    assert driver.segments[1] == (Segment(10, 0), Segment(64, 0))
