"""int8 matmul on the NPU: compile, place operands in HBM, run (golden or RTL), read C back."""

import numpy as np

from isa.golden import ContextSpec, GoldenNPU, Segment
from .compiler import CompileError, compile_matmul
from .driver import Driver

__all__ = ["matmul", "MatmulError"]


class MatmulError(ValueError):
    """Operands that cannot be multiplied; the message names the shapes or values."""


def check_operands(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise MatmulError(f"matmul needs two matrices, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise MatmulError(f"shapes {a.shape} and {b.shape} do not match: A has {a.shape[1]} "
                          f"columns, B has {b.shape[0]} rows")
    for name, x in (("A", a), ("B", b)):
        if not np.issubdtype(x.dtype, np.integer):
            raise MatmulError(f"{name} must hold integers (int8 values), not {x.dtype}")
        if x.size and (x.min() < -128 or x.max() > 127):
            raise MatmulError(f"{name} holds values outside int8 [-128, 127] "
                              f"(min {x.min()}, max {x.max()})")
    return a.astype(np.int64), b.astype(np.int64)


def matmul(a, b, *, config, backend="golden", requant=None, me_mask=None, policy="harvest",
           row_block=None, spad_rows=None):
    """C = A @ B (int32, or int8 with ``requant``); returns (C, run) where run is the
    driver's RunResult (None on the golden backend)."""
    a, b = check_operands(a, b)
    m, k = a.shape
    n = b.shape[1]
    words = m * k + k * n + m * n
    if words > config.hbm_words:
        raise MatmulError(f"matmul {m}x{k}x{n} needs {words} HBM words; the NPU has "
                          f"{config.hbm_words}")
    try:
        plan = compile_matmul(config, m, k, n, requant=requant, row_block=row_block,
                              spad_rows=spad_rows)
    except CompileError as error:
        raise MatmulError(str(error)) from None
    spad, hbm = Segment(0, spad_rows or config.spad_rows), Segment(0, config.hbm_words)
    if backend == "golden":
        npu = GoldenNPU(config, check_races=True)
        npu.hbm[plan.a_addr:plan.a_addr + m * k] = a.reshape(-1)
        npu.hbm[plan.b_addr:plan.b_addr + k * n] = b.reshape(-1)
        [result] = npu.run([ContextSpec(plan.program.words, spad, hbm)])
        if result.fault:
            raise MatmulError(f"the compiled program faulted: {result.fault.name} "
                              f"({result.fault_detail})")
        if result.races:
            raise MatmulError(f"the compiled program has a race: {result.races[0]}")
        return npu.hbm[plan.c_addr:plan.c_addr + m * n].reshape(m, n).copy(), None
    driver = Driver(config, backend)
    driver.set_policy(policy)
    driver.load_context(0, plan.program.words, spad, hbm, me_mask=me_mask)
    driver.write_hbm(plan.a_addr, a.reshape(-1))
    driver.write_hbm(plan.b_addr, b.reshape(-1))
    run = driver.run(read_hbm=[(plan.c_addr, m * n)], max_cycles=10_000_000)
    context = run.contexts[0]
    if run.timed_out or context.fault:
        raise MatmulError(f"the compiled program did not finish: {context.status.name} "
                          f"{context.fault.name}")
    return run.hbm[(plan.c_addr, m * n)].reshape(m, n), run
