"""The two watchdogs: an engine that makes no progress, and an NPU on which nothing moves."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Watchdog"]


class Watchdog(wiring.Component):
    """``hung[e]``: engine e has run a µTOp for ``watchdog_cycles`` without progress (an
    instruction taken or executed, a memory request granted or answered, a retirement),
    so a long µTOp that works never trips it, whoever's engine it runs on.

    ``stall_expired``: for ``watchdog_cycles`` some context ran while nothing happened (no
    engine busy, no context fetched, streamed, issued or retired, no START): every running
    context is stuck (e.g. under static it owns no engine of a type it needs).
    """

    def __init__(self, config, n_engines):
        self.config = config
        super().__init__({
            "running": In(n_engines),
            "progress": In(n_engines),
            "done": In(n_engines),
            "any_running": In(1),
            "activity": In(1),
            "hung": Out(n_engines),
            "stall_expired": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        limit = self.config.watchdog_cycles
        for e in range(len(self.hung)):
            stuck = Signal(range(limit + 1), name=f"eng{e}_stuck")
            m.d.comb += self.hung[e].eq(self.running[e] & (stuck == limit))
            with m.If(~self.running[e] | self.progress[e] | self.done[e]):
                m.d.sync += stuck.eq(0)
            with m.Elif(~self.hung[e]):
                m.d.sync += stuck.eq(stuck + 1)
        stall = Signal(range(limit + 1))
        m.d.comb += self.stall_expired.eq(stall == limit)
        with m.If(~self.any_running | self.activity | self.stall_expired):
            m.d.sync += stall.eq(0)
        with m.Else():
            m.d.sync += stall.eq(stall + 1)
        return m
