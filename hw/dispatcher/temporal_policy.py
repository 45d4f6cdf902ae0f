"""PREMA-style temporal sharing: one context has the whole NPU at a time, switched by tokens."""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..ports import ctx_shape

__all__ = ["TemporalPolicy"]


class TemporalPolicy(wiring.Component):
    """``ok[c]``: context c has the NPU (any engine).

    Every running context that waits earns ``priority + 1`` tokens per cycle (saturating);
    when the active context stops running, or has had the NPU for ``time_slice`` cycles
    while another waits, the waiting context with the most tokens (the lowest-numbered on
    a tie) is chosen: the NPU drains (the active context's µTOps in flight finish, nothing
    new issues), then the chosen context becomes active with its tokens spent.
    """

    def __init__(self, config):
        self.config = config
        C = config.n_ctx
        super().__init__({
            "enabled": In(1),
            "time_slice": In(32),
            "running": In(C),
            "on_engines": In(C),       # bit c: some engine runs one of c's µTOps
            "priority": In(4).array(C),
            "restart": In(C),          # START (or a refused one) of context c
            "ok": Out(C),
        })

    def elaborate(self, platform):
        m = Module()
        C = self.config.n_ctx
        active_valid = Signal()
        active_ctx = Signal(ctx_shape(self.config))
        draining = Signal()
        next_ctx = Signal(ctx_shape(self.config))
        slice_count = Signal(32)
        tokens = [Signal(16, name=f"c{c}_tokens") for c in range(C)]
        best_tokens, best_ctx, best_valid = Const(0, 16), Const(0, range(C)), Const(0, 1)
        for c in range(C):
            candidate = self.running[c] & ~(active_valid & (active_ctx == c))
            better = candidate & (~best_valid | (tokens[c] > best_tokens))
            best_tokens = Mux(better, tokens[c], best_tokens)
            best_ctx = Mux(better, c, best_ctx)
            best_valid = best_valid | candidate
        active_running = active_valid & self.running.bit_select(active_ctx, 1)
        want_switch = best_valid & (~active_running | (slice_count >= self.time_slice))
        with m.If(self.enabled):
            with m.If(draining):
                with m.If(~self.on_engines.bit_select(active_ctx, 1) | ~active_valid):
                    m.d.sync += [draining.eq(0), active_valid.eq(1), active_ctx.eq(next_ctx),
                                 slice_count.eq(0)]
                    for c in range(C):
                        with m.If(next_ctx == c):
                            m.d.sync += tokens[c].eq(0)
            with m.Elif(want_switch):
                m.d.sync += [draining.eq(1), next_ctx.eq(best_ctx)]
            with m.Elif(active_running):
                m.d.sync += slice_count.eq(slice_count + 1)
            for c in range(C):
                with m.If(self.running[c] & ~(active_valid & (active_ctx == c))
                          & ~(draining & (next_ctx == c))):
                    grown = tokens[c] + self.priority[c] + 1
                    m.d.sync += tokens[c].eq(Mux(grown > 0xFFFF, 0xFFFF, grown))
        for c in range(C):
            with m.If(self.restart[c]):
                m.d.sync += tokens[c].eq(0)
        m.d.comb += self.ok.eq(Cat(active_valid & ~draining & (active_ctx == c) for c in range(C)))
        return m
