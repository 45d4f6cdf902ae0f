"""The shell every engine shares: abort by reset, progress for the watchdog, counters that survive an abort."""

from amaranth import Cat, Module
from amaranth.hdl import ResetInserter

from .ports import refused

__all__ = ["engine_shell"]


def engine_shell(engine, core, *, active, requests, responses, work, progress=()):
    """Wrap an engine's µTOp logic ``core`` (a Module) in the part all engines share.

    - ``engine.flush`` resets ``core`` (every register of the µTOp in flight, its FIFOs and
      pipelines): the dispatcher holds it while a watchdog-killed context's µTOp drains,
      so nothing of that µTOp runs on afterwards. Memory contents (weight buffers, lookup
      tables) are not cleared, but a new µTOp cannot read them before it loads them.
    - ``engine.progress`` is high in a cycle where the engine does anything: takes a body
      word, has a memory request granted or answered, retires, or one of ``progress``
      (engine-specific events, e.g. an instruction executed from a loop buffer).
    - The counters (busy, stall, done and the engine's ``work`` measure, given as the
      amount to add this cycle) live outside the reset: an abort does not clear them.

    ``requests`` are the engine's memory request streams, ``responses`` its
    response-valid signals.
    """
    m = Module()
    m.submodules.core = ResetInserter({"sync": engine.flush})(core)
    retired = engine.done.valid & engine.done.ready
    handshakes = [retired, engine.instr.valid & engine.instr.ready, *progress, *responses]
    handshakes += [request.valid & request.ready for request in requests]
    m.d.comb += engine.progress.eq(Cat(handshakes).any())
    m.d.sync += [
        engine.busy_cycles.eq(engine.busy_cycles + active),
        engine.stall_cycles.eq(engine.stall_cycles + refused(*requests)),
        engine.utops_done.eq(engine.utops_done + retired),
        engine.work.eq(engine.work + work),
    ]
    return m
