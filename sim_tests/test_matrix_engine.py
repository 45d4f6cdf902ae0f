"""Matrix engine RTL against numpy and the golden model: random GEMMs, edges, faults, contention."""

import numpy as np
import pytest

from isa.config import NPUConfig
from hw.matrix_engine import MatrixEngine
from isa.encoding import Fault
from isa.golden import Segment
from runtime.backends.single_engine import run_engine
from simutil import convert

PORTS = (["rd_in", "rd_aux"], ["wr"])


def run_me(config, source, init, **kwargs):
    return run_engine(config, MatrixEngine, *PORTS, source, init, **kwargs)


def gemm_source(k, m, tiles, acc_first=False):
    """Tiles of weights at rows 0.., inputs after them, outputs after those."""
    lines = [".me eop"]
    in_row = tiles * k
    out_row = in_row + m
    for t in range(tiles):
        lines += [f"    ldw {t * k}, {k}",
                  f"    mm {out_row}, {in_row}, {m}{', acc' if acc_first or t else ''}"]
    return "\n".join(lines) + "\n", in_row, out_row


@pytest.mark.parametrize("rows, cols, lanes", [(4, 4, 4), (8, 8, 8), (8, 4, 8), (4, 8, 8), (3, 5, 8)])
def test_random_gemm_tiles_equal_numpy(rows, cols, lanes):
    config = NPUConfig(array_rows=rows, array_cols=cols, ve_lanes=lanes, spad_rows=256,
                       spad_banks=4)
    rng = np.random.default_rng(rows * 100 + cols)
    tiles, m = 3, 13
    source, in_row, out_row = gemm_source(rows, m, tiles, acc_first=True)
    init = np.zeros((out_row + m, lanes), dtype=np.int64)
    weights = rng.integers(-128, 128, (tiles, rows, lanes))
    weights[0] = -128
    inputs = rng.integers(-128, 128, (m, lanes))
    inputs[0] = -128
    acc = rng.integers(-2**31, 2**31, (m, lanes))
    init[:tiles * rows] = weights.reshape(-1, lanes)
    init[in_row:in_row + m] = inputs
    init[out_row:] = acc
    out = run_me(config, source, init)
    assert out["faults"] == [Fault.NONE]
    want = acc[:, :cols].copy()
    for t in range(tiles):
        want = want + inputs[:, :rows] @ weights[t, :, :cols]
    want = (want + 2**31) % 2**32 - 2**31
    assert np.array_equal(out["spad"][out_row:out_row + m, :cols], want)
    assert np.array_equal(out["spad"], out["golden"].spad)


@pytest.mark.parametrize("rows, cols, lanes", [(4, 4, 4), (8, 4, 8), (3, 5, 8)])
def test_transposed_and_plain_weight_loads_equal_numpy(rows, cols, lanes):
    """ldw with t takes row src + c as weight column c (c < k, the rest zero); tiles loaded
    plain and transposed alternate in one µTOp, with k short of the array too."""
    config = NPUConfig(array_rows=rows, array_cols=cols, ve_lanes=lanes, spad_rows=256,
                       spad_banks=4)
    rng = np.random.default_rng(rows * 7 + cols)
    m, init = 11, rng.integers(-2**31, 2**31, (256, lanes))
    init[:160] = rng.integers(-300, 300, (160, lanes))      # int8 takes the low 8 bits
    loads = [("", rows, 0), (", t", cols, 16), (", t", cols - 1, 32), ("", rows - 1, 48),
             (", t", 1, 64)]
    lines, want = [".me eop"], init[200:200 + m, :cols].copy()
    inputs = init[100:100 + m, :rows].astype(np.int8).astype(np.int64)
    for flag, k, src in loads:
        lines += [f"    ldw {src}, {k}{flag}", "    mm 200, 100, 11, acc"]
        w = np.zeros((rows, cols), np.int64)
        block = init[src:src + k].astype(np.int8).astype(np.int64)
        if flag:
            w[:, :k] = block[:, :rows].T
        else:
            w[:k] = block[:, :cols]
        want = want + inputs @ w
    out = run_me(config, "\n".join(lines) + "\n", init)
    assert out["faults"] == [Fault.NONE]
    assert np.array_equal(out["spad"][200:200 + m, :cols], (want + 2**31) % 2**32 - 2**31)
    assert np.array_equal(out["spad"], out["golden"].spad)


def test_transposed_load_bounds_k_by_the_columns():
    """On an 8 x 4 array, ldw k = 5 is legal, ldw k = 5 with t is not (4 columns)."""
    config = NPUConfig(array_rows=8, array_cols=4, ve_lanes=8, spad_rows=64, spad_banks=4)
    init = np.ones((64, 8), np.int64)
    assert run_me(config, ".me eop\n ldw 0, 5\n", init)["faults"] == [Fault.NONE]
    out = run_me(config, ".me eop\n ldw 0, 5, t\n", init)
    assert out["faults"] == [Fault.ILLEGAL_OPERAND]
    assert out["golden_result"].fault == Fault.ILLEGAL_OPERAND


@pytest.mark.parametrize("seed", range(4))
def test_mmloop_replays_its_pair_with_strides(seed):
    """mmloop count, w_stride, x_stride + ldw + mm: the K loop of a GEMM, against numpy
    and golden; with plain pairs around it, a transposed load in the loop, and negative
    strides."""
    rng = np.random.default_rng(seed)
    config = NPUConfig(array_rows=4, array_cols=4, ve_lanes=4, spad_rows=256, spad_banks=4)
    init = rng.integers(-128, 128, (256, 4))
    count = int(rng.integers(1, 6))
    w_stride = int(rng.choice([4, 8, -4]))
    x_stride = int(rng.choice([16, 20, -16]))
    w0 = 100 if w_stride > 0 else 100 + 4 * 8
    x0 = 0 if x_stride > 0 else 5 * 20
    flag = ", t" if seed % 2 else ""
    acc = ", acc" if seed == 3 else ""
    source = (f".me eop\n ldw 0, 4\n mm 200, 60, 3\n mmloop {count}, {w_stride}, {x_stride}\n"
              f" ldw {w0}, 4{flag}\n mm 220, {x0}, 9{acc}\n ldw 4, 4\n mm 240, 60, 2\n")
    out = run_me(config, source, init)
    assert out["faults"] == [Fault.NONE]
    want = init[220:229].copy() if acc else np.zeros((9, 4), np.int64)
    for t in range(count):
        w = init[w0 + t * w_stride:w0 + t * w_stride + 4]
        want = want + init[x0 + t * x_stride:x0 + t * x_stride + 9] @ (w.T if flag else w)
    assert np.array_equal(out["spad"][220:229], (want + 2**31) % 2**32 - 2**31)
    assert np.array_equal(out["spad"][200:203], init[60:63] @ init[0:4])
    assert np.array_equal(out["spad"][240:242], init[60:62] @ init[4:8])
    assert np.array_equal(out["spad"], out["golden"].spad)


@pytest.mark.parametrize("body, fault", [
    (" mmloop 2, 4, 4\n ldw 0, 4\n", Fault.ILLEGAL_OPERAND),           # the pair is cut
    (" mmloop 2, 4, 4\n mm 8, 0, 1\n ldw 0, 4\n", Fault.ILLEGAL_OPERAND),
    (" mmloop 2, 4, 4\n ldw 0, 4\n ldw 4, 4\n", Fault.ILLEGAL_OPERAND),
    (" mmloop 2, 4, 4\n mmloop 2, 4, 4\n ldw 0, 4\n mm 8, 0, 1\n", Fault.ILLEGAL_OPERAND),
    (" mmloop 9, 4, 0\n ldw 0, 4\n mm 20, 12, 1\n", Fault.SPAD_OOB),   # walks out at t = 8
    (" mmloop 3, -4, 0\n ldw 4, 4\n mm 20, 12, 1\n", Fault.SPAD_OOB),  # row -4 at t = 2
    (" mmloop 5, 0, 8\n ldw 0, 4\n mm 4, 6, 1\n", Fault.SPAD_OOB),     # source 38 at t = 4
    (" mmloop 2, 0, 0\n ldw 0, 4\n .word 0\n", Fault.ILLEGAL_OPCODE),
])
def test_mmloop_faults_match_golden(tiny, body, fault):
    """Malformed loops and iterations that walk out of the segment (base 32, 32 rows):
    the iterations before the fault took effect, as on golden; nothing outside."""
    rng = np.random.default_rng(5)
    init = rng.integers(-100, 100, (128, 4))
    out = run_me(tiny, ".me eop\n" + body, init, segment=Segment(32, 32))
    assert out["golden_result"].fault == fault
    assert out["faults"] == [fault]
    assert np.array_equal(out["spad"], out["golden"].spad)
    outside = np.r_[0:32, 64:128]
    assert np.array_equal(out["spad"][outside], init[outside])


def test_accumulator_wraps_and_overwrite(tiny):
    init = np.zeros((64, 4), dtype=np.int64)
    init[0:4] = -128                      # weights
    init[4:6] = -128                      # inputs: each product 16384, column sum 65536
    init[8:10] = 2**31 - 1                # accumulators at the top of int32
    init[12:14] = 77
    source = ".me eop\n ldw 0, 4\n mm 8, 4, 2, acc\n mm 12, 4, 2\n"
    out = run_me(tiny, source, init)
    assert np.array_equal(out["spad"][8:10], np.full((2, 4), (2**31 - 1 + 65536) - 2**32))
    assert np.array_equal(out["spad"][12:14], np.full((2, 4), 65536))
    assert np.array_equal(out["spad"], out["golden"].spad)


def test_in_body_dependencies_and_several_utops(tiny):
    """An mm that reads rows an earlier mm writes, an ldw of those rows, and three µTOps."""
    rng = np.random.default_rng(5)
    init = rng.integers(-20, 20, (64, 4))
    source = """
    .me
        ldw 0, 4
        mm 16, 4, 4
        mm 24, 16, 4          # reads what the previous mm writes
        ldw 24, 4             # loads weights the previous mm writes
        mm 32, 4, 4, acc
    .me
        ldw 40, 2
        mm 44, 48, 1
        mm 44, 49, 1, acc     # back-to-back accumulation into one row
        mm 44, 50, 1, acc
    .me eop
    """
    out = run_me(tiny, source, init)
    assert out["faults"] == [Fault.NONE] * 3
    assert np.array_equal(out["spad"], out["golden"].spad)
    assert out["counters"]["utops_done"] == 3


@pytest.mark.parametrize("body, fault", [
    (" ldw 0, 0\n", Fault.ILLEGAL_OPERAND),
    (" ldw 0, 5\n", Fault.ILLEGAL_OPERAND),
    (" ldw 30, 4\n", Fault.SPAD_OOB),
    (" ldw 0, 5, t\n", Fault.ILLEGAL_OPERAND),
    (" ldw 0, 0, t\n", Fault.ILLEGAL_OPERAND),
    (" ldw 29, 4, t\n", Fault.SPAD_OOB),
    (" mm 0, 4, 1\n", Fault.UNLOADED_STATE),
    (" ldw 0, 4\n mm 30, 0, 3\n", Fault.SPAD_OOB),
    (" ldw 0, 4\n mm 4, 31, 2\n", Fault.SPAD_OOB),
    (" .word 0\n", Fault.ILLEGAL_OPCODE),
    (" .word 0x0000000000000010\n", Fault.ILLEGAL_OPCODE),         # a VE opcode
    (" .word 0x0200000000000001\n", Fault.ILLEGAL_OPCODE),         # ldw with a reserved bit
    (" ldw 0, 4\n mm 0, 4, 1\n .word 0\n ldw 0, 4\n", Fault.ILLEGAL_OPCODE),
])
def test_faults_in_a_segment_match_golden(tiny, body, fault):
    """Segment base 32, size 32: the ME faults exactly like the golden model, and writes
    nothing outside its segment."""
    rng = np.random.default_rng(11)
    init = rng.integers(-100, 100, (128, 4))
    out = run_me(tiny, ".me eop\n" + body, init, segment=Segment(32, 32))
    assert out["golden_result"].fault == fault
    assert out["faults"] == [fault]
    outside = np.r_[0:32, 64:128]
    assert np.array_equal(out["spad"][outside], init[outside])


def test_empty_and_maximum_bodies(tiny):
    init = np.ones((128, 4), dtype=np.int64)
    body = "".join(f" ldw {i % 8}, 4\n mm {64 + i % 32}, 8, 1, acc\n" for i in range(tiny.max_body // 2))
    out = run_me(tiny, ".me\n.me eop\n" + body, init)
    assert out["faults"] == [Fault.NONE, Fault.NONE]
    assert np.array_equal(out["spad"], out["golden"].spad)


@pytest.mark.parametrize("seed", range(3))
def test_exact_under_scratchpad_contention(seed):
    """Two noise clients hammer the banks (reading anywhere, writing rows nobody checks)."""
    config = NPUConfig.preset("tiny").replace(spad_rows=256)
    rng = np.random.default_rng(seed)
    init = rng.integers(-128, 128, (128, 4))
    source, in_row, out_row = gemm_source(4, 24, 3)
    source = source.replace(".me eop", ".me eop") + " mm 100, 8, 8, acc\n"
    out = run_me(config, source, init, n_noise=2, noise_rows=list(range(200, 256)), seed=seed)
    assert out["faults"] == [Fault.NONE]
    assert np.array_equal(out["spad"][:200], out["golden"].spad[:200])
    assert out["counters"]["stall_cycles"] > 0


def test_converts_at_32x32():
    config = NPUConfig(array_rows=32, array_cols=32, ve_lanes=32, spad_rows=1024)
    convert(MatrixEngine(config))


@pytest.mark.slow
def test_converts_at_128x128():
    convert(MatrixEngine(NPUConfig.preset("tpu")))
