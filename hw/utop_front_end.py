"""The µTOp front end every engine shares: command, body words, instruction register, fault, retirement."""

from amaranth import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import Fault
from .ports import CommandLayout, DoneLayout, SegmentLayout, body_length_shape

__all__ = ["UTopFrontEnd", "attach_front_end"]


class UTopFrontEnd(wiring.Component):
    """Takes a µTOp from the dispatcher and hands its instructions to the engine, one at a time.

    A ``cmd`` starts a µTOp (``start`` is high that cycle) and loads its ``segment`` and
    body length; body words arrive on ``instr`` into the instruction register ``ir``
    while it is empty (``fetched`` is high when one does). The engine empties ``ir`` with
    ``consume``, or makes its own word the next instruction with ``local_valid`` /
    ``local_word`` (the vector engine replays loop bodies so; body words are not taken
    meanwhile). ``raise_fault`` (any value but NONE) sets the µTOp's fault and empties
    ``ir``; it overrides an earlier fault, so an engine that detects a fault of an older
    instruction late reports that one. The engine raises a fault only for the instruction
    in ``ir`` while ``fault`` is NONE, or for an older one still executing.

    After a fault the rest of the body is drained unread. The µTOp retires on ``done``
    once the body is consumed, ``hold`` is low (no replayed instructions left) and the
    engine is ``idle`` (every write visible).
    """

    def __init__(self, config):
        super().__init__({
            "cmd": In(stream.Signature(CommandLayout(config))),
            "instr": In(stream.Signature(unsigned(64))),
            "done": Out(stream.Signature(DoneLayout(config))),
            "start": Out(1),
            "active": Out(1),
            "segment": Out(SegmentLayout(config)),
            "words_left": Out(body_length_shape(config)),
            "ir": Out(64),
            "ir_valid": Out(1),
            "fetched": Out(1),
            "fault": Out(Fault),
            "consume": In(1),
            "raise_fault": In(Fault),
            "local_valid": In(1),
            "local_word": In(64),
            "hold": In(1),
            "idle": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        fault_free = self.fault == Fault.NONE
        body_done = self.active & (self.words_left == 0) & ~self.ir_valid & ~self.hold
        m.d.comb += [
            self.start.eq(self.cmd.valid & self.cmd.ready),
            self.fetched.eq(self.instr.valid & self.instr.ready & fault_free),
            self.cmd.ready.eq(~self.active),
            self.done.valid.eq(body_done & self.idle),
            self.instr.ready.eq(self.active & (self.words_left != 0)
                                & (~fault_free | (~self.ir_valid & ~self.local_valid))),
        ]
        ctx = Signal.like(self.done.payload.ctx)
        m.d.comb += [self.done.payload.ctx.eq(ctx), self.done.payload.fault.eq(self.fault)]

        with m.If(self.start):
            payload = self.cmd.payload
            m.d.sync += [self.active.eq(1), ctx.eq(payload.ctx), self.words_left.eq(payload.length),
                         self.segment.eq(payload.segment), self.fault.eq(Fault.NONE),
                         self.ir_valid.eq(0)]
        with m.If(self.instr.valid & self.instr.ready):
            m.d.sync += self.words_left.eq(self.words_left - 1)
        with m.If(self.fetched):
            m.d.sync += [self.ir.eq(self.instr.payload), self.ir_valid.eq(1)]
        with m.If(self.local_valid & ~self.ir_valid & fault_free):
            m.d.sync += [self.ir.eq(self.local_word), self.ir_valid.eq(1)]
        with m.If(self.consume):
            m.d.sync += self.ir_valid.eq(0)
        with m.If(self.raise_fault != Fault.NONE):
            m.d.sync += [self.fault.eq(self.raise_fault), self.ir_valid.eq(0)]
        with m.If(self.done.valid & self.done.ready):
            m.d.sync += self.active.eq(0)
        return m


def attach_front_end(m, engine):
    """A UTopFrontEnd in module ``m`` of ``engine``, joined to the engine's own ``cmd``,
    ``instr`` and ``done`` ports; returns it."""
    m.submodules.front = front = UTopFrontEnd(engine.config)
    wiring.connect(m, wiring.flipped(engine.cmd), front.cmd)
    wiring.connect(m, wiring.flipped(engine.instr), front.instr)
    wiring.connect(m, front.done, wiring.flipped(engine.done))
    return front
