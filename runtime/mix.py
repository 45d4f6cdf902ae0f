"""Multi-tenant workload mixes: synthetic ME-heavy and VE-heavy programs, run on RTL and checked.

Used by the policy tests and by `neu10 bench` to compare sharing policies on one mix.
"""

from dataclasses import dataclass

import numpy as np

from isa.asm import assemble
from isa.golden import ContextSpec, GoldenNPU, Segment
from .driver import Driver

__all__ = ["me_heavy_program", "ve_heavy_program", "chain_program", "segments", "run_mix",
           "MixRun", "halves"]


def segments(config, n_contexts):
    """Equal, disjoint scratchpad and HBM segments for ``n_contexts`` contexts."""
    spad = config.spad_rows // config.n_ctx
    hbm = config.hbm_words // config.n_ctx
    return [(Segment(c * spad, spad), Segment(c * hbm, hbm)) for c in range(n_contexts)]


def halves(config):
    """Ownership of two vNPUs splitting the engines evenly: (me_mask, ve_mask) each."""
    me_low = (1 << (config.n_me // 2 or 1)) - 1
    ve_low = (1 << (config.n_ve // 2 or 1)) - 1
    me_all, ve_all = (1 << config.n_me) - 1, (1 << config.n_ve) - 1
    return [(me_low, ve_low), (me_all & ~me_low or me_all, ve_all & ~ve_low or ve_all)]


# Layout inside a segment: weights at row 0, inputs at 2*array_rows (both within the first
# INPUT_ROWS rows), GEMM outputs from OUT_ROW, vector outputs from VE_OUT_ROW.
OUT_ROW, VE_OUT_ROW = 64, 160


def me_heavy_program(config, n_ops=4, per_op=3, rows=24):
    """Independent GEMM tiles in operators of ``per_op`` µTOps (eoo on the last one); each
    µTOp overwrites its output from inputs it does not write, so it is restartable."""
    k = config.array_rows
    lines = []
    for i in range(n_ops * per_op):
        eoo = " eoo" if i % per_op == per_op - 1 else ""
        eop = " eop" if i == n_ops * per_op - 1 else ""
        lines += [f".me restartable{eoo}{eop}", f"    ldw 0, {k}",
                  f"    mm {OUT_ROW + (i % 4) * rows}, {2 * k}, {rows}"]
    return "\n".join(lines) + "\n"


def ve_heavy_program(config, n_ve=6, rows=32, n_me=3):
    """VE work first (requantizing), then a little ME work of its own."""
    k = config.array_rows
    lines = []
    for i in range(n_ve):
        eop = " eop" if n_me == 0 and i == n_ve - 1 else ""
        lines += [f".ve restartable eoo{eop}", f"    vrq {VE_OUT_ROW + (i % 2) * rows}, {2 * k}, {rows}"]
    for i in range(n_me):
        eop = " eop" if i == n_me - 1 else ""
        lines += [f".me restartable eoo{eop}", f"    ldw 0, {k}", f"    mm {OUT_ROW + i * 16}, {2 * k}, 16"]
    return "\n".join(lines) + "\n"


def chain_program(length=16):
    """``length`` one-row VE µTOps, each depending on the previous one."""
    lines = []
    for i in range(length):
        deps = " deps(-1)" if i else ""
        eop = " eop" if i == length - 1 else ""
        lines += [f".ve{deps}{eop}", "    vaddi 0, 0, 1, 1"]
    return "\n".join(lines) + "\n"


@dataclass
class MixRun:
    result: object        # runtime.driver.RunResult
    golden: list          # golden ContextResult per context
    exact: bool           # every context's segment and fault equal the golden model's


#: Rows of each segment the mix programs read (random data) and may write (checked).
INPUT_ROWS, USED_ROWS = 64, 256
assert VE_OUT_ROW + 2 * 32 <= USED_ROWS


def run_mix(config, programs, policy, *, owners=None, priorities=None, trace=False, seed=7,
            max_cycles=200_000, backend="pysim"):
    """Run ``programs`` (assembly) on contexts 0.. with random inputs, and on the golden
    model; the first USED_ROWS rows of every segment are compared."""
    rng = np.random.default_rng(seed)
    driver = Driver(config, backend, trace=trace)
    driver.set_policy(policy)
    golden = GoldenNPU(config)
    owners = owners or [(None, None)] * len(programs)
    specs = []
    places = segments(config, len(programs))
    for c, source in enumerate(programs):
        spad, hbm = places[c]
        words = assemble(source, dep_window=config.dep_window)
        me_mask, ve_mask = owners[c]
        driver.load_context(c, words, spad, hbm, me_mask=me_mask, ve_mask=ve_mask,
                            priority=(priorities or [0] * len(programs))[c])
        data = rng.integers(-128, 128, (INPUT_ROWS, config.ve_lanes))
        driver.write_spad(spad.base, data)
        golden.spad[spad.base:spad.base + INPUT_ROWS] = data
        specs.append(ContextSpec(words, spad, hbm))
    expected = golden.run(specs)
    result = driver.run(max_cycles=max_cycles,
                        read_spad=[(spad.base, USED_ROWS) for spad, _ in places])
    exact = not result.timed_out and all(
        r.fault == e.fault and np.array_equal(result.spad[(spad.base, USED_ROWS)],
                                              golden.spad[spad.base:spad.base + USED_ROWS])
        for r, e, (spad, _) in zip(result.contexts, expected, places))
    return MixRun(result, expected, exact)
