"""Run a compiled graph on a backend: the host places its HBM image, starts it, reads the
outputs. ``golden`` is the numpy ISA model (with the race check on); ``pysim`` and
``verilator`` simulate the RTL through the driver."""

import numpy as np

from isa.golden import ContextSpec, GoldenNPU, Segment
from .driver import Driver

__all__ = ["ExecutionError", "execute", "run_program", "run_tenants"]


class ExecutionError(RuntimeError):
    """The program faulted, raced, or did not finish; the message says which."""


def run_program(config, words, *, spad_rows, hbm_words, placements, reads, backend="golden",
                me_mask=None, ve_mask=None, policy="harvest", max_cycles=20_000_000,
                progress=None):
    """Run one program as context 0 with segments at 0: the host writes ``placements``
    ((HBM address, words) pairs) first and reads ``reads`` ((address, count) pairs) after.
    Returns (the words read, in order; the driver's RunResult or None on golden)."""
    spad, hbm = Segment(0, spad_rows), Segment(0, hbm_words)
    if backend == "golden":
        npu = GoldenNPU(config, check_races=True)
        for address, values in placements:
            npu.hbm[address:address + len(values)] = values
        [result] = npu.run([ContextSpec(words, spad, hbm)])
        if result.fault:
            raise ExecutionError(f"the program faulted: {result.fault.name} ({result.fault_detail})")
        if result.races:
            raise ExecutionError(f"the program has a race: {result.races[0]}")
        if result.restart_hazards:
            raise ExecutionError(f"a µTOp flagged restartable is not: "
                                 f"{result.restart_hazards[0]}")
        return [npu.hbm[a:a + n].astype(np.int64) for a, n in reads], None
    driver = Driver(config, backend, progress=progress)
    driver.set_policy(policy)
    driver.load_context(0, words, spad, hbm, me_mask=me_mask, ve_mask=ve_mask)
    for address, values in placements:
        driver.write_hbm(address, values)
    run = driver.run(read_hbm=list(reads), max_cycles=max_cycles)
    context = run.contexts[0]
    if run.timed_out or context.fault:
        raise ExecutionError(f"the program did not finish: {context.status.name} "
                             f"{context.fault.name} at word {context.fault_pc}")
    return [run.hbm[key].astype(np.int64) for key in reads], run


def _host_image(graph):
    """(HBM address, words) the host writes before a run: weights and inputs."""
    return list(graph.builder.hbm_image.items()) + [
        (region.start, values.reshape(-1)) for region, values in graph.inputs.values()]


def _as_tensor(graph, x, words):
    """Output words read back from HBM as the rows x padded columns of tensor ``x``."""
    return words.astype(np.int64).reshape(x.rows, x.tiles * graph.lanes)


def execute(graph, program, *, backend="golden", n_me=None, n_ve=None, policy="harvest",
            max_cycles=20_000_000, progress=None):
    """(outputs by name as rows x cols int arrays, the driver's RunResult or None).

    The vNPU gets the first ``n_me`` MEs and ``n_ve`` VEs (default: all) under ``policy``;
    ``progress(cycles)`` is called during long pysim runs."""
    cfg, builder = graph.config, graph.builder
    placements = _host_image(graph)
    outputs = list(graph.outputs.items())
    values, run = run_program(
        cfg, program.words, spad_rows=builder.spad_rows, hbm_words=builder.hbm_words,
        placements=placements, reads=[(region.start, region.size) for _, (region, _) in outputs],
        backend=backend, me_mask=None if n_me is None else (1 << n_me) - 1,
        ve_mask=None if n_ve is None else (1 << n_ve) - 1, policy=policy,
        max_cycles=max_cycles, progress=progress)
    return {name: _as_tensor(graph, x, words)
            for (name, (_, x)), words in zip(outputs, values)}, run


def run_tenants(config, tenants, *, backend="verilator", policy="harvest",
                max_cycles=20_000_000):
    """Run compiled models side by side, each on its own vNPU.

    ``tenants`` is a list of (CompiledModel, n_me, n_ve); the device maps each onto a
    context with engines it owns and disjoint segments sized to its program, and every
    tenant's output is read back from its own HBM segment. Returns (outputs per tenant as
    rows x cols arrays, the driver's RunResult); raises ExecutionError on a fault."""
    from .vnpu import Device
    device = Device(config, backend, policy)
    vnpus, programs = [], {}
    for index, (model, n_me, n_ve) in enumerate(tenants):
        builder = model.graph.builder      # the segments are what the program uses
        vnpu = device.create(n_me, n_ve, max(1, builder.spad_peak), max(1, builder.hbm_top),
                             name=f"{model.name}{index}")
        vnpus.append(vnpu)
        programs[vnpu.name] = model.program.words
    driver = device.driver(programs)
    reads = []
    for vnpu, (model, _, _) in zip(vnpus, tenants):
        graph = model.graph
        for address, values in _host_image(graph):
            driver.write_hbm(vnpu.hbm.base + address, values)
        region, _ = graph.outputs[model.name]
        reads.append((vnpu.hbm.base + region.start, region.size))
    run = driver.run(read_hbm=reads, max_cycles=max_cycles)
    for vnpu, context in zip(vnpus, run.contexts):
        if run.timed_out or context.fault:
            raise ExecutionError(f"{vnpu.name} did not finish: {context.status.name} "
                                 f"{context.fault.name} at word {context.fault_pc}")
    outputs = []
    for (model, _, _), key in zip(tenants, reads):
        _, x = model.graph.outputs[model.name]
        outputs.append(_as_tensor(model.graph, x, run.hbm[key]))
    return outputs, run
