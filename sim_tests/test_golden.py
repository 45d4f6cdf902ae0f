"""Golden model semantics against plain-Python references, with randomized operands (fixed seeds)."""

import random

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.asm import assemble
from isa.encoding import Fault
from isa.golden import ContextSpec, GoldenNPU, Segment, requantize


def w32(x):
    return ((x + 2**31) % 2**32) - 2**31


def run_one(config, source, spad=None, hbm=None):
    npu = GoldenNPU(config)
    if spad is not None:
        npu.spad[:len(spad)] = spad
    if hbm is not None:
        npu.hbm[:len(hbm)] = hbm
    # The config's dependency window, but any body length: the model must fault long ones.
    program = assemble(source, config.replace(max_body=255, imem_words=512))
    [result] = npu.run([ContextSpec(program, Segment(0, config.spad_rows),
                                    Segment(0, config.hbm_words))])
    return npu, result


def test_requantize_matches_exact_integer_rule():
    rng = random.Random(1)
    xs, params = [], []
    for _ in range(3000):
        x = rng.choice([rng.randint(-2**31, 2**31 - 1), rng.randint(-1000, 1000)])
        mult = rng.choice([rng.randint(-2**31, 2**31 - 1), 1, -1, 1 << 30])
        shift = rng.randint(0, 63)
        zp = rng.randint(-128, 127)
        xs.append(x)
        params.append((mult, shift, zp))
    for x, (mult, shift, zp) in zip(xs, params):
        p = x * mult
        r = p if shift == 0 else (p + (1 << (shift - 1))) >> shift  # Python ints: exact
        assert requantize(np.array([x]), mult, shift, zp)[0] == max(-128, min(127, r + zp))


@pytest.mark.parametrize("x, shift, expected", [
    (5, 1, 3), (-5, 1, -2), (6, 2, 2), (-6, 2, -1), (2, 2, 1), (-2, 2, 0), (1, 1, 1), (-1, 1, 0),
])
def test_requantize_ties_round_towards_plus_infinity(x, shift, expected):
    assert requantize(np.array([x]), 1, shift, 0)[0] == expected


@pytest.mark.parametrize("x, shift, expected", [
    (5, 1, 2), (-5, 1, -2), (7, 1, 4), (-7, 1, -4), (3, 1, 2), (-3, 1, -2), (6, 2, 2),
    (-6, 2, -2), (10, 2, 2), (2, 2, 0), (-2, 2, 0), (11, 2, 3), (9, 2, 2), (1, 1, 0),
])
def test_requantize_with_the_even_flag_rounds_ties_to_even(x, shift, expected):
    """x / 2^shift: 2.5 -> 2, 3.5 -> 4, 1.5 -> 2, -1.5 -> -2, 0.5 -> 0; non-ties (2.75,
    2.25) to the nearest."""
    assert requantize(np.array([x]), 1, shift, 0, even=True)[0] == expected


ALU = {
    "add": lambda a, b: w32(a + b), "sub": lambda a, b: w32(a - b),
    "mul": lambda a, b: w32(a * b), "min": min, "max": max,
    "shl": lambda a, b: w32(a << (b & 31)), "sra": lambda a, b: a >> (b & 31),
    "srl": lambda a, b: w32((a & 0xFFFFFFFF) >> (b & 31)),
}


@pytest.mark.parametrize("op", sorted(ALU))
@pytest.mark.parametrize("form", ["", "r", "i"])
@pytest.mark.parametrize("sat", [False, True])
def test_vector_alu_random(tiny, op, form, sat):
    rng = np.random.default_rng([sorted(ALU).index(op), len(form), sat])
    lanes, n = tiny.ve_lanes, 20
    interesting = np.array([0, 1, -1, 127, -128, 2**31 - 1, -2**31, 31, 32, 255])
    values = rng.integers(-2**31, 2**31, (3 * n + 1, lanes))
    mask = rng.random(values.shape) < 0.3
    values[mask] = rng.choice(interesting, mask.sum())
    imm = int(rng.integers(-2**15, 2**15))
    operand = {"": f"{n}", "r": "2", "i": f"{imm}"}[form]
    mnemonic = f"v{op}{form}" + (".s8" if sat else "")
    npu, result = run_one(tiny, f".ve eop\n vld 2, {3 * n}\n {mnemonic} {2 * n}, 0, {operand}, {n}\n",
                          spad=values)
    assert result.fault == Fault.NONE
    for i in range(n):
        for lane in range(lanes):
            a = int(values[i, lane])
            b = {"": int(values[n + i, lane]), "r": int(values[3 * n, lane]), "i": imm}[form]
            want = ALU[op](a, b)
            if sat:
                want = max(-128, min(127, want))
            assert npu.spad[2 * n + i, lane] == want, (mnemonic, a, b)


@pytest.mark.parametrize("rows, cols, lanes", [(4, 4, 4), (8, 8, 8), (8, 4, 8), (3, 8, 8), (16, 16, 16)])
def test_matrix_engine_random_gemm(rows, cols, lanes):
    config = NPUConfig(array_rows=rows, array_cols=cols, ve_lanes=lanes)
    rng = np.random.default_rng(rows * 100 + cols)
    m = 37
    a = rng.integers(-128, 128, (m, lanes))
    a[0, :] = -128
    w = rng.integers(-128, 128, (rows, lanes))
    w[0, :] = -128
    acc = rng.integers(-2**31, 2**31, (m, lanes))
    spad = np.concatenate([a, w, acc]).astype(np.int64)
    npu, result = run_one(config, f".me eop\n ldw {m}, {rows}\n mm {m + rows}, 0, {m}, acc\n",
                          spad=spad)
    assert result.fault == Fault.NONE
    product = a[:, :rows] @ w[:, :cols]
    want = (acc[:, :cols] + product + 2**31) % 2**32 - 2**31
    assert np.array_equal(npu.spad[m + rows:m + rows + m, :cols], want)
    # lanes past the array's columns are untouched
    assert np.array_equal(npu.spad[m + rows:m + rows + m, cols:], acc[:, cols:])


def test_mm_reads_low_byte_as_int8(tiny):
    spad = np.zeros((16, 4), dtype=np.int64)
    spad[0] = [0x17F, 0x80, -129, 0x100]      # int8: 127, -128, 127, 0
    spad[4] = [1, 0, 0, 0]                    # W = identity-ish column 0
    spad[5] = [1, 0, 0, 0]
    spad[6] = [1, 0, 0, 0]
    spad[7] = [1, 0, 0, 0]
    npu, _ = run_one(tiny, ".me eop\n ldw 4, 4\n mm 8, 0, 1\n", spad=spad)
    assert npu.spad[8, 0] == 127 - 128 + 127 + 0


def test_empty_and_maximum_bodies(tiny):
    npu, result = run_one(tiny, ".ve\n.me\n.dma eop\n")
    assert result.fault == Fault.NONE and result.utops_retired == 3
    body = " vaddi 0, 0, 1, 1\n" * tiny.max_body
    npu, result = run_one(tiny, ".ve eop\n" + body)
    assert result.fault == Fault.NONE and npu.spad[0, 0] == tiny.max_body
    npu, result = run_one(tiny, ".ve eop\n" + body + " vaddi 0, 0, 1, 1\n")
    assert result.fault == Fault.BAD_HEADER and result.fault_pc == 0


def test_dependencies_before_the_program_start_are_satisfied(tiny):
    _, result = run_one(tiny, ".ve deps(-8, -3) eop\n vaddi 0, 0, 1, 1\n")
    assert result.fault == Fault.NONE


def test_program_stops_at_eop(tiny):
    npu, result = run_one(tiny, ".ve eop\n vaddi 0, 0, 1, 1\n.ve\n vaddi 0, 0, 1, 1\n")
    assert result.utops_retired == 1 and npu.spad[0, 0] == 1


def test_contexts_are_independent_of_each_other(tiny):
    """Running contexts together gives each the memory it gets when run alone."""
    rng = np.random.default_rng(7)
    programs = [
        ".me\n ldw 0, 4\n mm 8, 4, 4\n.ve deps(-1) eop\n vrq 12, 8, 4\n",
        ".ve eop\n vmul 8, 0, 4, 4\n vlsum 12, 8, 4\n",
        ".dma\n dload 0, 0, 4\n.dma deps(-1) eop\n dstore 16, 0, 4\n",
        ".ve eop\n vrmax 0, 1, 1, 6\n",
    ]
    init = rng.integers(-128, 128, (tiny.spad_rows, tiny.ve_lanes))
    hbm_init = rng.integers(-1000, 1000, tiny.hbm_words)
    segments = [(Segment(i * 32, 32), Segment(i * 128, 128)) for i in range(4)]
    together = GoldenNPU(tiny)
    together.spad[:], together.hbm[:] = init, hbm_init
    results = together.run([ContextSpec(assemble(p), *s) for p, s in zip(programs, segments)])
    assert all(r.fault == Fault.NONE for r in results)
    for program, (spad, hbm) in zip(programs, segments):
        alone = GoldenNPU(tiny)
        alone.spad[:], alone.hbm[:] = init, hbm_init
        alone.run([ContextSpec(assemble(program), spad, hbm)])
        rows = slice(spad.base, spad.base + spad.size)
        words = slice(hbm.base, hbm.base + hbm.size)
        assert np.array_equal(together.spad[rows], alone.spad[rows])
        assert np.array_equal(together.hbm[words], alone.hbm[words])


def test_faulting_context_writes_nothing_outside_its_segment(tiny):
    rng = np.random.default_rng(3)
    npu = GoldenNPU(tiny)
    npu.spad[:] = rng.integers(-100, 100, npu.spad.shape)
    before = npu.spad.copy()
    program = assemble(".ve eop\n vaddi 0, 0, 1, 20\n")  # rows 0..19 of a 16-row segment
    [result] = npu.run([ContextSpec(program, Segment(100, 16), Segment(0, 16))])
    assert result.fault == Fault.SPAD_OOB and result.fault_pc == 0
    outside = np.ones(len(before), bool)
    outside[100:116] = False
    assert np.array_equal(npu.spad[outside], before[outside])


@pytest.mark.parametrize("contexts, message", [
    ([ContextSpec([], Segment(0, 1), Segment(0, 1))] * 5, "5 contexts given; this NPU has 4"),
    ([ContextSpec([], Segment(1000, 100), Segment(0, 1))], "context 0: scratchpad segment base=1000 size=100 does not fit in 1024 rows"),
    ([ContextSpec([], Segment(0, 1), Segment(8100, 100))], "context 0: HBM segment base=8100 size=100 does not fit in 8192 words"),
    ([ContextSpec([0] * 4097, Segment(0, 1), Segment(0, 1))], r"context 0: program of 4097 words does not fit in HBM \(at most 4096\)"),
])
def test_bad_context_settings(tiny, contexts, message):
    with pytest.raises(ValueError, match=message):
        GoldenNPU(tiny).run(contexts)


@pytest.mark.parametrize("seed", range(6))
def test_an_mmloop_at_once_equals_it_iteration_by_iteration(seed, monkeypatch):
    """Golden runs an mmloop that stays in its segment as one sum of products: the rows,
    the restart check and the race check agree with running each iteration (strides of
    both signs, t loads, acc; with sources overlapping the destination, undefined by the
    spec, it runs them one by one)."""
    rng = np.random.default_rng(seed)
    config = NPUConfig(array_rows=4, array_cols=4, ve_lanes=4, spad_rows=256)
    spad = rng.integers(-2**31, 2**31, (256, 4))
    count, w_stride, x_stride = int(rng.integers(1, 6)), int(rng.integers(-6, 7)), \
        int(rng.integers(-6, 7))
    t = ", t" if seed % 2 else ""
    acc = ", acc" if seed % 3 == 0 else ""
    dst = 100 + int(rng.integers(-3, 4)) if seed == 5 else 200    # seed 5: mm reads dst rows
    restartable = " restartable" if seed % 2 == 0 else ""
    source = (f".me eop{restartable}\n mmloop {count}, {w_stride}, {x_stride}\n"
              f" ldw 50, {int(rng.integers(1, 5))}{t}\n mm {dst}, 100, 7{acc}\n")
    runs = []
    for at_once in (True, False):
        if not at_once:
            monkeypatch.setattr(GoldenNPU, "_mmloop_at_once", lambda *a: False)
        npu = GoldenNPU(config, check_races=True)
        npu.spad[:] = spad
        program = assemble(source, config)
        [outcome] = npu.run([ContextSpec(program, Segment(0, 256), Segment(0, 1024))])
        runs.append((npu.spad.copy(), outcome.fault, outcome.restart_hazards, outcome.races))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][1:] == runs[1][1:]


@pytest.mark.parametrize("body, hazards", [
    (" vaddi 10, 10, 1, 2\n", [10, 11]),                       # reads what it writes
    (" vaddi 20, 0, 1, 2\n vaddi 30, 20, 1, 2\n", []),        # writes, then reads: safe
    (" vaddi 20, 0, 1, 4\n vaddi 21, 21, 1, 1\n vaddi 40, 41, 1, 3\n vaddi 42, 0, 1, 1\n",
     [41, 42]),                      # 41 and 42 read first (reads come first in an instruction)
])
def test_the_restart_check_finds_what_a_restartable_utop_reads_before_writing(body, hazards):
    """A µTOp flagged restartable must read nothing it writes before it writes it (run
    again after a partial run it would read its own results): golden names each such
    row, segment base included, and only those."""
    config = NPUConfig(array_rows=4, array_cols=4, ve_lanes=4, spad_rows=256)
    program = assemble(f".ve eop restartable\n{body}", config)
    [outcome] = GoldenNPU(config, check_races=True).run(
        [ContextSpec(program, Segment(100, 156), Segment(0, 1024))])
    assert outcome.fault == Fault.NONE
    assert [(h.space, h.address) for h in outcome.restart_hazards] == \
        [("spad", 100 + row) for row in hazards]
