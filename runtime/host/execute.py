"""Run programs on vNPUs: the host places each one's HBM image, starts them, reads the
outputs. Every backend goes the same way (device, driver, host script); on ``golden``
(the ISA's numpy model) the race check is on, so a program that races or is wrongly
flagged restartable is refused before any RTL runs it."""

import numpy as np

from isa.regmap import Status

from .device import Device

__all__ = ["ExecutionError", "MAX_RUN_CYCLES", "run_program", "run_tenants"]

#: Cycles one inference may take by default on a timed backend (`neu10 run`): on the
#: `default` config a ResNet-50 takes about 65M, a BERT-base 138M, a BERT-large about 0.8G
#: (24 layers of 33.5M). A program that stops making progress faults long before (the
#: per-µTOp watchdog).
MAX_RUN_CYCLES = 2_000_000_000


class ExecutionError(RuntimeError):
    """The program faulted, raced, or did not finish; the message says which."""


def _check(run, names, max_cycles):
    """Raise ExecutionError for the first context of ``run`` that did not finish cleanly."""
    for name, context in zip(names, run.contexts):
        if context.races:
            raise ExecutionError(f"{name} has a race: {context.races[0]}")
        if context.restart_hazards:
            raise ExecutionError(f"{name}: a µTOp flagged restartable is not: "
                                 f"{context.restart_hazards[0]}")
        if run.timed_out and context.status == Status.RUNNING:
            raise ExecutionError(f"{name} did not finish within max_cycles={max_cycles} "
                                 f"cycles (still {context.status.name}; a larger max_cycles, "
                                 f"`--max-cycles` of `neu10 run`, lets it run longer)")
        if context.fault or run.timed_out and context.status != Status.DONE:
            detail = f" ({context.fault_detail})" if context.fault_detail else ""
            raise ExecutionError(f"{name} did not finish: {context.status.name} "
                                 f"{context.fault.name} at word {context.fault_pc}{detail}")


def _device(config, backend, policy, progress):
    options = {"check_races": True} if backend == "golden" else {}
    if progress is not None:
        options["progress"] = progress
    return Device(config, backend, policy, **options)


def run_program(config, words, *, spad_rows, hbm_words, placements, reads, backend="golden",
                n_me=None, n_ve=None, policy="harvest", max_cycles=MAX_RUN_CYCLES, progress=None):
    """Run one program on a vNPU of ``n_me`` MEs and ``n_ve`` VEs (default: all) with
    segments of ``spad_rows`` and ``hbm_words``: the host writes ``placements`` ((HBM
    address, words) pairs, segment-relative) first and reads ``reads`` ((address, count)
    pairs) after. Returns (the words read, in order; the driver's RunResult)."""
    [values], run = run_tenants(
        config, [(words, n_me, n_ve, spad_rows, hbm_words, placements, reads)],
        backend=backend, policy=policy, max_cycles=max_cycles, progress=progress,
        names=["the program"])
    return values, run


def run_tenants(config, tenants, *, backend="verilator", policy="harvest",
                max_cycles=MAX_RUN_CYCLES, progress=None, names=None, timeline=False):
    """Run programs side by side, each on its own vNPU.

    ``tenants`` are (words, n_me, n_ve, spad_rows, hbm_words, placements, reads): the device
    maps each onto a context with engines it owns (None: every engine) and disjoint
    segments; ``placements`` and ``reads`` are as in run_program, relative to the tenant's
    HBM segment. Returns (per tenant the words read, the driver's RunResult); raises
    ExecutionError when a tenant faults, races or does not finish. With ``timeline`` (a
    timed backend), the RunResult has the run's timeline (Driver.run)."""
    cfg = config
    device = _device(cfg, backend, policy, progress)
    names = names or [f"tenant {i}" for i in range(len(tenants))]
    vnpus, programs = [], {}
    for name, (words, n_me, n_ve, spad_rows, hbm_words, _, _) in zip(names, tenants):
        vnpus.append(device.create(cfg.n_me if n_me is None else n_me,
                                   cfg.n_ve if n_ve is None else n_ve, spad_rows, hbm_words,
                                   name=name))
        programs[name] = words
    driver = device.driver(programs)
    reads = []
    for vnpu, (_, _, _, _, _, placements, wanted) in zip(vnpus, tenants):
        for address, values in placements:
            driver.load_hbm(vnpu.hbm.base + address, values)
        reads.append([(vnpu.hbm.base + address, count) for address, count in wanted])
    run = driver.run(read_hbm=[r for tenant in reads for r in tenant], max_cycles=max_cycles,
                     timeline=timeline)
    _check(run, names, max_cycles)
    return [[run.hbm[key].astype(np.int64) for key in tenant] for tenant in reads], run
