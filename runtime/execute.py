"""Run a compiled graph on a backend: the host places its HBM image, starts it, reads the
outputs. ``golden`` is the numpy ISA model (with the race check on); ``pysim`` and
``verilator`` simulate the RTL through the driver."""

import numpy as np

from isa.golden import ContextSpec, GoldenNPU, Segment
from .driver import Driver

__all__ = ["ExecutionError", "execute"]


class ExecutionError(RuntimeError):
    """The program faulted, raced, or did not finish; the message says which."""


def execute(graph, program, *, backend="golden", n_me=None, n_ve=None, policy="harvest",
            max_cycles=20_000_000, progress=None):
    """(outputs by name as rows x cols int arrays, the driver's RunResult or None).

    The vNPU gets the first ``n_me`` MEs and ``n_ve`` VEs (default: all) under ``policy``;
    ``progress(cycles)`` is called during long pysim runs."""
    cfg = graph.config
    builder = graph.builder
    spad, hbm = Segment(0, builder.spad_rows), Segment(0, builder.hbm_words)
    reads = {name: (region.start, region.size) for name, (region, _) in graph.outputs.items()}
    shapes = {name: (x.rows, x.tiles * graph.lanes) for name, (_, x) in graph.outputs.items()}
    if backend == "golden":
        npu = GoldenNPU(cfg, check_races=True)
        for address, words in builder.hbm_image.items():
            npu.hbm[address:address + len(words)] = words
        for region, values in graph.inputs.values():
            npu.hbm[region.start:region.start + region.size] = values.reshape(-1)
        [result] = npu.run([ContextSpec(program.words, spad, hbm)])
        if result.fault:
            raise ExecutionError(f"the program faulted: {result.fault.name} ({result.fault_detail})")
        if result.races:
            raise ExecutionError(f"the program has a race: {result.races[0]}")
        return {name: npu.hbm[a:a + n].reshape(shapes[name]).astype(np.int64)
                for name, (a, n) in reads.items()}, None
    driver = Driver(cfg, backend, progress=progress)
    driver.set_policy(policy)
    me_mask = (1 << (cfg.n_me if n_me is None else n_me)) - 1
    ve_mask = (1 << (cfg.n_ve if n_ve is None else n_ve)) - 1
    driver.load_context(0, program.words, spad, hbm, me_mask=me_mask, ve_mask=ve_mask)
    for address, words in builder.hbm_image.items():
        driver.write_hbm(address, words)
    for region, values in graph.inputs.values():
        driver.write_hbm(region.start, values.reshape(-1))
    run = driver.run(read_hbm=list(reads.values()), max_cycles=max_cycles)
    context = run.contexts[0]
    if run.timed_out or context.fault:
        raise ExecutionError(f"the program did not finish: {context.status.name} "
                             f"{context.fault.name} at word {context.fault_pc}")
    return {name: run.hbm[key].reshape(shapes[name]).astype(np.int64)
            for name, key in reads.items()}, run
