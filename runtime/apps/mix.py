"""Multi-tenant workload mixes: synthetic ME-heavy and VE-heavy programs, run on RTL and checked.

Used by the policy tests and by `neu10 bench` to compare sharing policies on one mix.
"""

from dataclasses import dataclass

import numpy as np

from isa.asm import assemble
from runtime.host.device import Device

__all__ = ["me_heavy_program", "ve_heavy_program", "chain_program", "place_tenants", "run_mix",
           "MixRun", "halves"]


def halves(config):
    """(n_me, n_ve) of two vNPUs splitting the engines evenly (with one engine of a kind,
    both own it)."""
    me, ve = config.n_me // 2 or 1, config.n_ve // 2 or 1
    return [(me, ve), (config.n_me - me or config.n_me, config.n_ve - ve or config.n_ve)]


def place_tenants(device, engines, priorities=None):
    """One vNPU per (n_me, n_ve) of ``engines`` on ``device``, in order: the lowest engines
    free (shared when none are), and equal disjoint segments of 1/n_ctx of the scratchpad
    and 1/(2 n_ctx) of HBM (the other half holds the programs)."""
    cfg = device.config
    priorities = priorities or [0] * len(engines)
    return [device.create(n_me, n_ve, cfg.spad_rows // cfg.n_ctx,
                          cfg.hbm_words // (2 * cfg.n_ctx),
                          priority=priority, oversubscribe=True)
            for (n_me, n_ve), priority in zip(engines, priorities)]


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
    result: object        # runtime.host.driver.RunResult
    golden: list          # the golden backend's ContextResult per context
    exact: bool           # every context's segment and fault equal the golden model's


#: Rows of each segment the mix programs read (random data) and may write (checked).
INPUT_ROWS, USED_ROWS = 64, 256
assert VE_OUT_ROW + 2 * 32 <= USED_ROWS


def run_mix(config, programs, policy, *, engines=None, priorities=None, trace=False, seed=7,
            max_cycles=200_000, backend="pysim"):
    """Run ``programs`` (assembly) on vNPUs of ``engines`` ((n_me, n_ve) each; default every
    engine, shared) with random inputs, on ``backend`` and on the golden model; the first
    USED_ROWS rows of every segment are compared."""
    rng = np.random.default_rng(seed)
    words = [assemble(source, config=config) for source in programs]
    data = [rng.integers(-128, 128, (INPUT_ROWS, config.ve_lanes)) for _ in programs]
    engines = engines or [(config.n_me, config.n_ve)] * len(programs)

    def run_on(backend, **options):
        device = Device(config, backend, policy, **options)
        vnpus = place_tenants(device, engines, priorities)
        driver = device.driver({v.name: w for v, w in zip(vnpus, words)})
        for vnpu, values in zip(vnpus, data):
            driver.write_spad(vnpu.spad.base, values)
        reads = [(vnpu.spad.base, USED_ROWS) for vnpu in vnpus]
        return driver.run(max_cycles=max_cycles, read_spad=reads), reads

    result, reads = run_on(backend, **({"trace": True} if trace else {}))
    expected, _ = run_on("golden")
    exact = not result.timed_out and all(
        r.fault == e.fault and np.array_equal(result.spad[key], expected.spad[key])
        for r, e, key in zip(result.contexts, expected.contexts, reads))
    return MixRun(result, expected.contexts, exact)
