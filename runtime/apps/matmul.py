"""int8 matmul on the NPU: compile, place operands in HBM, run (golden or RTL), read C back."""

import numpy as np

from runtime.compiler.matmul import CompileError, compile_matmul
from runtime.host.execute import ExecutionError, run_program

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


def matmul(a, b, *, config, backend="golden", requant=None, n_me=None, policy="harvest",
           row_block=None, spad_rows=None):
    """C = A @ B (int32, or int8 with ``requant``) on a vNPU of ``n_me`` MEs (default: all);
    returns (C, the driver's RunResult)."""
    a, b = check_operands(a, b)
    m, k = a.shape
    n = b.shape[1]
    words = m * k + k * n + m * n
    if words > config.hbm_words:
        raise MatmulError(f"matmul {m}x{k}x{n} needs {words} HBM words; the NPU has "
                          f"{config.hbm_words} (a config with a larger `hbm_words` lifts the "
                          f"limit)")
    try:
        plan = compile_matmul(config, m, k, n, requant=requant, row_block=row_block,
                              spad_rows=spad_rows)
    except CompileError as error:
        raise MatmulError(str(error)) from None
    # The operands' segment, and the program beside it (aligned to an HBM line).
    line = config.hbm_words_per_cycle
    program_words = -(-2 * len(plan.program.words) // line) * line
    if words + program_words > config.hbm_words:
        raise MatmulError(f"matmul {m}x{k}x{n} needs {words} HBM words and {program_words} "
                          f"for its program; the NPU has {config.hbm_words} (a config with a "
                          f"larger `hbm_words` lifts the limit)")
    try:
        [c], run = run_program(
            config, plan.program.words, spad_rows=spad_rows or config.spad_rows,
            hbm_words=words, backend=backend, n_me=n_me, policy=policy,
            placements=[(plan.a_addr, a.reshape(-1)), (plan.b_addr, b.reshape(-1))],
            reads=[(plan.c_addr, m * n)], max_cycles=10_000_000)
    except ExecutionError as error:
        raise MatmulError(f"matmul {m}x{k}x{n}: {error}") from None
    return c.reshape(m, n), run
