"""Vector engine RTL against the golden model: random programs, every instruction, faults, contention."""

import random

import numpy as np
import pytest

from isa.config import NPUConfig
from hw.vector_engine import VectorEngine
from isa.encoding import Fault
from isa.golden import Segment
from runtime.backends.single_engine import run_engine
from simutil import convert

PORTS = (["rd_a", "rd_b"], ["wr"])
CONFIG = NPUConfig.preset("tiny").replace(spad_rows=256)
ALU = ["add", "sub", "mul", "min", "max", "shl", "sra", "srl"]


def run_ve(source, init, config=CONFIG, **kwargs):
    return run_engine(config, VectorEngine, *PORTS, source, init, **kwargs)


def random_instruction(rng, src_region, dst_region, lanes):
    """One instruction reading rows of src_region and writing rows of dst_region."""
    lo, hi = src_region
    d_lo, d_hi = dst_region

    def rows(count, region=(lo, hi)):
        return rng.randrange(region[0], region[1] - count + 1)

    n = rng.choice([1, 2, 3, 7, 16])
    kind = rng.choice(["alu", "alu", "alu", "vrq", "vlut", "lane", "row", "pool", "vreg",
                       "vsetvl", "vsetq"])
    if kind == "alu":
        op = rng.choice(ALU) + rng.choice(["", "r", "i"])
        operand = {"": str(rows(n)), "r": str(rng.randrange(8)),
                   "i": str(rng.randint(-2**15, 2**15 - 1))}[op[-1] if op[-1] in "ri" else ""]
        sat = rng.choice(["", ".s8"])
        return f"v{op}{sat} {rows(n, dst_region)}, {rows(n)}, {operand}, {n}"
    if kind == "vrq":
        return rng.choice([f"vrq {rows(n, dst_region)}, {rows(n)}, {n}",
                           f"vrqr {rows(n, dst_region)}, {rows(n)}, {rng.randrange(8)}, {n}"])
    if kind == "vlut":
        return f"vlut {rows(n, dst_region)}, {rows(n)}, {n}"
    if kind == "lane":
        return f"vl{rng.choice(['sum', 'max', 'min'])} {rows(n, dst_region)}, {rows(n)}, {n}"
    if kind == "row":
        stride = rng.choice([0, 1, 2, 3])
        n = rng.randint(1, 1 + (hi - lo - 1) // max(stride, 1) if stride else 9)
        n = min(n, 9)
        return f"vr{rng.choice(['sum', 'max', 'min'])} {rows(1, dst_region)}, {rows(1 + (n - 1) * stride)}, {stride}, {n}"
    if kind == "pool":
        kh, kw, pitch = rng.randint(1, 3), rng.randint(1, 3), rng.randint(3, 5)
        return f"vpool{rng.choice(['max', 'sum'])} {rows(1, dst_region)}, {rows((kh - 1) * pitch + kw)}, {pitch}, {kh}, {kw}"
    if kind == "vreg":
        return rng.choice([f"vld {rng.randrange(8)}, {rows(1)}", f"vst {rows(1, dst_region)}, {rng.randrange(8)}"])
    if kind == "vsetvl":
        return f"vsetvl {rng.randint(1, lanes)}"
    shift = rng.choice([rng.randint(0, 40), rng.randint(0, 63)])
    flags = rng.choice(["", ", even"]) + rng.choice(["", ", wide"])
    return f"vsetq {rng.randint(-2**31, 2**31 - 1)}, {shift}, {rng.randint(-128, 127)}{flags}"


def random_ve_program(rng, lanes, n_instr=12, loop=False):
    """Rows 0..63: the lookup table and inputs; 64..127 and 128..191: results that later
    instructions read back (chaining through the read-after-write interlock)."""
    regions = [(0, 64), (64, 128), (128, 192)]
    lines = [".ve eop", "    vldlut 0"]
    for _ in range(n_instr):
        src = rng.choice(regions[:2])
        dst = regions[2] if src == regions[1] else regions[1]
        lines.append("    " + random_instruction(rng, src, dst, lanes))
    if loop:
        lines += ["    loop 3, end, 2, 1",
                  "    " + random_instruction(rng, (0, 40), (100, 120), lanes),
                  "    " + random_instruction(rng, (0, 40), (150, 170), lanes),
                  "end:"]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(6))
def test_random_programs_match_golden(seed):
    rng = random.Random(seed)
    init = np.random.default_rng(seed).integers(-400, 400, (256, 4))
    init[10:20] = np.random.default_rng(seed).integers(-2**31, 2**31, (10, 4))
    source = random_ve_program(rng, 4, loop=seed % 2 == 1)
    out = run_ve(source, init)
    assert out["golden_result"].fault == Fault.NONE, out["golden_result"].fault_detail
    assert out["faults"] == [Fault.NONE]
    assert np.array_equal(out["spad"], out["golden"].spad), source


def test_every_instruction_once_with_8_lanes():
    config = NPUConfig(spad_rows=512, max_body=128)
    rng = np.random.default_rng(3)
    init = rng.integers(-1000, 1000, (300, 8))
    source = """
    .ve eop
        vldlut 0
        vsetq 1234567, 20, -3
        vld 5, 40
        vsetvl 6
    """ + "".join(f"        v{op}{form}{sat} {100 + 2 * i}, 40, {dict(r='5', i='-77').get(form, '50')}, 2\n"
                  for i, (op, form, sat) in enumerate((op, form, sat) for op in ALU for form in ["", "r", "i"]
                                                      for sat in ["", ".s8"])) + """
        vrq 200, 40, 3
        vrqr 224, 40, 5, 3
        vlut 204, 40, 3
        vlsum 208, 40, 2
        vlmax 210, 40, 2
        vlmin 212, 40, 2
        vrsum 214, 40, 3, 4
        vrmax 215, 40, 1, 9
        vrmin 216, 41, 2, 3
        vpoolmax 217, 40, 5, 3, 2
        vpoolsum 218, 40, 5, 2, 3
        vst 219, 5
        loop 4, end, 1, 2
        vaddi 220, 40, 1, 1
    end:
    """
    out = run_ve(source, init, config=config)
    assert out["golden_result"].fault == Fault.NONE
    assert out["faults"] == [Fault.NONE]
    assert np.array_equal(out["spad"], out["golden"].spad)


@pytest.mark.parametrize("even", [0, 1], ids=["up", "even"])
@pytest.mark.parametrize("mult, shift, zp", [(1, 1, 0), (3, 2, 0), (1, 3, 5), (-5, 4, -2)])
def test_requantize_rounds_exact_halves_up_or_to_even(mult, shift, zp, even):
    """`vrq` (isa/SPEC.md): r = (x * mult + 2^(shift-1)) >> shift, so a product exactly
    halfway between two integers rounds towards +infinity: 2.5 -> 3, -2.5 -> -2, -0.5 -> 0;
    with `vsetq`'s even flag, to the even neighbour: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, -1.5
    -> -2. Inputs are chosen so that every product is an exact half (or a near one), and
    the expected values are computed here with exact fractions, not by the golden model."""
    from fractions import Fraction
    from math import floor
    step = 2 ** shift
    # x * mult = (2k + 1) * 2^(shift-1): exact halves, both signs; and one off either side.
    products = [(2 * k + 1) * step // 2 + d for k in range(-4, 4) for d in (0, 0, -1, 1)]
    xs = [p // mult for p in products if p % mult == 0] if abs(mult) > 1 else products
    xs = (xs * 4)[:32]
    init = np.zeros((256, 4), dtype=np.int64)
    init[:8] = np.array(xs, dtype=np.int64).reshape(8, 4)
    flag = ", even" if even else ""
    out = run_ve(f".ve eop\n vsetq {mult}, {shift}, {zp}{flag}\n vrq 100, 0, 8\n", init)
    assert out["faults"] == [Fault.NONE]

    def nearest(v):
        r = floor(v + Fraction(1, 2))
        return r - 1 if even and v - floor(v) == Fraction(1, 2) and r % 2 else r
    expected = [max(-128, min(127, nearest(Fraction(x * mult, step)) + zp)) for x in xs]
    got = [int(v) for v in out["spad"][100:108].reshape(-1)]
    wrong = [(x, x * mult / step, e, g) for x, e, g in zip(xs, expected, got) if e != g]
    assert not wrong, (
        f"vsetq {mult}, {shift}, {zp}{flag}: (x, x*mult/2^shift, expected, RTL) {wrong[:6]}: "
        f"vrq must round exact halves {'to even' if even else 'up, towards +infinity'}")
    assert [int(v) for v in out["golden"].spad[100:108].reshape(-1)] == expected


@pytest.mark.parametrize("wide", [0, 1], ids=["int8", "wide"])
def test_requantize_with_a_multiplier_per_lane(wide):
    """`vrqr` (isa/SPEC.md): lane l's multiplier comes from V[vb][l], shift and zp from
    vsetq; lanes at or past vl keep their value; results saturate to int8, or with
    `vsetq`'s wide flag to int32. Expected values are exact fractions."""
    from fractions import Fraction
    from math import floor
    rng = np.random.default_rng(7)
    mults = [1 << 30, -(1 << 29) + 3, 12345, -1]
    shift, zp, vl = 20, 3, 3
    init = np.zeros((256, 4), dtype=np.int64)
    init[0] = mults
    init[8:16] = rng.integers(-(1 << 24), 1 << 24, (8, 4))
    init[100:108] = 55
    out = run_ve(f".ve eop\n vld 6, 0\n vsetq 99, {shift}, {zp}{', wide' * wide}\n"
                 f" vsetvl {vl}\n vrqr 100, 8, 6, 8\n", init)
    assert out["faults"] == [Fault.NONE]
    expected = np.full((8, 4), 55)
    top = 2 ** 31 - 1 if wide else 127
    for i in range(8):
        for lane in range(vl):
            x = int(init[8 + i, lane]) * mults[lane]
            r = floor(Fraction(x, 1 << shift) + Fraction(1, 2)) + zp
            expected[i, lane] = max(-top - 1, min(top, r))
    assert wide == (np.abs(expected) > 128).any()        # the wide case leaves int8
    assert np.array_equal(out["spad"][100:108], expected)
    assert np.array_equal(out["golden"].spad[100:108], expected)


@pytest.mark.parametrize("body, fault", [
    (" vaddi 30, 0, 1, 3\n", Fault.SPAD_OOB),
    (" vadd 0, 0, 31, 2\n", Fault.SPAD_OOB),
    (" vrsum 0, 20, 6, 3\n", Fault.SPAD_OOB),
    (" vpoolmax 0, 20, 6, 3, 1\n", Fault.SPAD_OOB),
    (" vst 32, 0\n", Fault.SPAD_OOB),
    (" loop 3, 1, -1, 0\n vaddi 1, 5, 1, 1\n", Fault.SPAD_OOB),
    (" vldlut 0\n", Fault.SPAD_OOB),            # 64 rows of table in a 32-row segment
    (" vlut 0, 1, 1\n", Fault.UNLOADED_STATE),
    (" vsetvl 0\n", Fault.ILLEGAL_OPERAND),
    (" vsetvl 5\n", Fault.ILLEGAL_OPERAND),
    (" loop 2, 3, 0, 0\n vaddi 0, 0, 1, 1\n", Fault.ILLEGAL_OPERAND),
    (" loop 2, 2, 0, 0\n loop 2, 1, 0, 0\n vaddi 0, 0, 1, 1\n", Fault.ILLEGAL_OPERAND),
    (" .word 0\n", Fault.ILLEGAL_OPCODE),
    (" .word 0x0000000000000001\n", Fault.ILLEGAL_OPCODE),      # an ME opcode
    (" .word 0x0000080000000044\n", Fault.ILLEGAL_OPCODE),      # vld with a reserved bit
    (" vaddi 1, 0, 1, 1\n loop 2, 1, 0, 0\n .word 0\n vaddi 2, 0, 1, 1\n", Fault.ILLEGAL_OPCODE),
])
def test_faults_in_a_segment_match_golden(body, fault):
    rng = np.random.default_rng(12)
    init = rng.integers(-100, 100, (256, 4))
    out = run_ve(".ve eop\n" + body, init, segment=Segment(32, 32))
    assert out["golden_result"].fault == fault
    assert out["faults"] == [fault]
    outside = np.r_[0:32, 64:256]
    assert np.array_equal(out["spad"][outside], init[outside])


def test_empty_maximum_and_dependent_bodies():
    init = np.zeros((256, 4), dtype=np.int64)
    body = " vaddi 0, 0, 1, 1\n" * CONFIG.max_body     # each reads what the previous wrote
    out = run_ve(".ve\n.ve eop\n" + body, init)
    assert out["faults"] == [Fault.NONE, Fault.NONE]
    assert list(out["spad"][0]) == [CONFIG.max_body] * 4


@pytest.mark.parametrize("seed", range(2))
def test_exact_under_scratchpad_contention(seed):
    rng = random.Random(100 + seed)
    init = np.random.default_rng(seed).integers(-400, 400, (256, 4))
    source = random_ve_program(rng, 4, n_instr=10, loop=True)
    out = run_ve(source, init, n_noise=2, noise_rows=list(range(200, 256)), seed=seed)
    assert out["faults"] == [Fault.NONE]
    assert np.array_equal(out["spad"][:200], out["golden"].spad[:200])
    assert out["counters"]["stall_cycles"] > 0


def test_converts_default_and_wide():
    convert(VectorEngine(NPUConfig()))
    convert(VectorEngine(NPUConfig(ve_lanes=32, array_rows=32, array_cols=32, spad_rows=1024)))
