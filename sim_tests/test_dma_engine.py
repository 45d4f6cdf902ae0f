# amaranth: UnusedElaboratable=no
"""DMA engine and HBM model against the golden model: random strided copies, gathers, faults."""

import random

import numpy as np
import pytest

from isa.config import NPUConfig
from hw.dma_engine import DMAEngine
from hw.hbm import HBM
from isa.encoding import Fault
from isa.golden import Segment
from runtime.backends.single_engine import run_engine
from simutil import convert

TINY = NPUConfig.preset("tiny").replace(spad_rows=256, hbm_words=1024)


def run_dma(source, init, hbm, config=TINY, **kwargs):
    return run_engine(config, DMAEngine, ["rd"], ["wr"], source, init, hbm=hbm, **kwargs)


def random_dma_program(rng, lanes, hbm_words, packed=0.0):
    """Loads into rows 64..127 from HBM 0..511, stores from rows 0..63 to HBM 512.., gathers;
    a share ``packed`` of the shapes with int8 elements packed four per word (i8)."""
    lines = [".dma eop"]
    for _ in range(8):
        length = rng.randint(1, lanes)
        i8 = rng.random() < packed
        words = -(-length // 4) if i8 else length
        kind = rng.choice(["load", "store", "gather"])
        rows = rng.randint(1, 6)
        hstride = rng.choice([words, lanes, rng.randint(0, 3 * lanes)])
        sstride = rng.choice([1, 1, 2])
        lines.append(f"    dcfg {length}, {hstride}, {sstride}{', i8' if i8 else ''}")
        length = words
        if kind == "load":
            top = 512 - (rows - 1) * hstride - length
            lines.append(f"    dload {rng.randrange(64, 128 - (rows - 1) * sstride)}, {rng.randrange(0, top)}, {rows}")
        elif kind == "store":
            top = hbm_words - 512 - (rows - 1) * hstride - length
            lines.append(f"    dstore {512 + rng.randrange(0, top)}, {rng.randrange(0, 64 - (rows - 1) * sstride)}, {rows}")
        else:
            lines.append(f"    dbase {rng.randrange(0, 64)}")
            lines.append(f"    dgather {rng.randrange(64, 128 - (rows - 1) * sstride)}, 0, {rows}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("bytes_per_cycle, lanes, seed", [
    (16, 4, 0), (16, 4, 1), (8, 4, 2), (64, 4, 3), (32, 8, 4), (16, 8, 5), (16, 2, 6),
])
@pytest.mark.parametrize("packed", [0.0, 0.7])
def test_random_copies_match_golden(bytes_per_cycle, lanes, seed, packed):
    """Plain and int8-packed (i8) copies at every alignment of rows to HBM lines."""
    config = TINY.replace(hbm_bytes_per_cycle=bytes_per_cycle, ve_lanes=lanes, hbm_latency=3 + seed,
                          array_rows=min(4, lanes), array_cols=min(4, lanes))
    rng = random.Random(seed + int(10 * packed))
    init = np.random.default_rng(seed).integers(-1000, 1000, (256, lanes))
    init[0:6] = np.random.default_rng(seed).integers(0, 8, (6, lanes))    # gather indices
    hbm = np.random.default_rng(seed + 1).integers(-2**31, 2**31, config.hbm_words)
    source = random_dma_program(rng, lanes, config.hbm_words, packed)
    out = run_dma(source, init, hbm, config=config)
    assert out["golden_result"].fault == Fault.NONE, out["golden_result"].fault_detail
    assert out["faults"] == [Fault.NONE]
    assert np.array_equal(out["spad"], out["golden"].spad), source
    assert np.array_equal(out["hbm"], out["golden_hbm"]), source


@pytest.mark.parametrize("body, fault", [
    (" dload 30, 0, 3\n", Fault.SPAD_OOB),
    (" dcfg 4, 4, 5\n dload 0, 0, 8\n", Fault.SPAD_OOB),
    (" dload 0, 126, 1\n", Fault.HBM_OOB),
    (" dcfg 2, 60, 1\n dstore 10, 0, 3\n", Fault.HBM_OOB),
    (" dstore 0, 32, 1\n", Fault.SPAD_OOB),
    (" dgather 0, 31, 5\n", Fault.SPAD_OOB),
    (" dgather 0, 1, 3\n", Fault.HBM_OOB),         # index 40: beyond the 128-word segment
    (" dbase 120\n dgather 4, 0, 2\n", Fault.HBM_OOB),
    (" dcfg 0, 4, 1\n", Fault.ILLEGAL_OPERAND),
    (" dcfg 5, 4, 1\n", Fault.ILLEGAL_OPERAND),
    (" dcfg 5, 4, 1, i8\n", Fault.ILLEGAL_OPERAND),
    (" dcfg 4, 1, 1, i8\n dload 0, 127, 1\n", Fault.NONE),     # one word: in the segment
    (" dcfg 4, 1, 1, i8\n dload 0, 126, 3\n", Fault.HBM_OOB),  # words 126..128
    (" dcfg 4, 64, 1, i8\n dstore 0, 0, 3\n", Fault.HBM_OOB),
    (" dcfg 4, 1, 1, i8\n dgather 0, 0, 3\n", Fault.HBM_OOB),       # index -1
    (" .word 0\n", Fault.ILLEGAL_OPCODE),
    (" .word 0x0000000000000041\n", Fault.ILLEGAL_OPCODE),      # a VE opcode
    (" .word 0x0000000000000085\n", Fault.ILLEGAL_OPCODE),      # past the last DMA opcode
    (" .word 0x0100000000000083\n", Fault.ILLEGAL_OPCODE),      # dbase with a reserved bit
])
def test_faults_in_segments_match_golden(body, fault):
    rng = np.random.default_rng(21)
    init = rng.integers(-100, 100, (256, 4))
    init[32] = [3, -1, 40, 1]
    hbm = rng.integers(-100, 100, 1024)
    out = run_engine(TINY, DMAEngine, ["rd"], ["wr"], ".dma eop\n" + body, init, hbm=hbm,
                     segment=Segment(32, 32), hbm_segment=Segment(256, 128))
    assert out["golden_result"].fault == fault
    assert out["faults"] == [fault]
    if fault == Fault.NONE:
        assert np.array_equal(out["spad"], out["golden"].spad)
    outside = np.r_[0:32, 64:256]
    assert np.array_equal(out["spad"][outside], init[outside])
    hbm_outside = np.r_[0:256, 384:1024]
    assert np.array_equal(out["hbm"][hbm_outside], hbm[hbm_outside])


def test_exact_under_scratchpad_contention():
    rng = random.Random(9)
    init = np.random.default_rng(9).integers(0, 8, (256, 4))
    hbm = np.random.default_rng(10).integers(-1000, 1000, 1024)
    source = random_dma_program(rng, 4, 1024)
    out = run_dma(source, init, hbm, n_noise=2, noise_rows=list(range(200, 256)), seed=9)
    assert out["faults"] == [Fault.NONE]
    assert np.array_equal(out["spad"][:200], out["golden"].spad[:200])
    assert np.array_equal(out["hbm"], out["golden_hbm"])


def test_empty_body_and_hbm_rejects_no_ports():
    out = run_dma(".dma\n.dma eop\n", np.zeros((4, 4)), np.zeros(4))
    assert out["faults"] == [Fault.NONE, Fault.NONE]
    with pytest.raises(ValueError, match="an HBM needs at least one port, not 0"):
        HBM(TINY, n_ports=0)


def test_converts():
    convert(DMAEngine(NPUConfig()))
    convert(HBM(NPUConfig(), n_ports=2))


def test_back_to_back_loads_with_shape_changes_at_long_latency():
    """Later loads start while earlier ones are still in flight; each keeps its own shape."""
    config = TINY.replace(hbm_latency=25)
    hbm = np.random.default_rng(4).integers(-1000, 1000, 1024)
    source = """
    .dma eop
        dcfg 3, 5, 1
        dload 64, 0, 20
        dcfg 2, 7, 2
        dload 100, 3, 10
        dcfg 4, 4, 1
        dload 130, 1, 30
        dbase 9
        dstore 600, 64, 40
        dload 180, 600, 8
    """
    out = run_dma(source, np.zeros((256, 4), dtype=np.int64), hbm, config=config)
    assert out["faults"] == [Fault.NONE]
    assert np.array_equal(out["spad"], out["golden"].spad)
    assert np.array_equal(out["hbm"], out["golden_hbm"])
