"""Neu10 harvesting: own engines first, idle engines of others borrowed, and the owner takes them back."""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import Engine
from .signatures import CandidateLayout, ContextConfigLayout, engine_group, engine_types, owned_engines

__all__ = ["HarvestPolicy"]


class HarvestPolicy(wiring.Component):
    """A context may take an engine it owns, or one whose owner has no candidate for it.

    An engine owned by several contexts (oversubscribed) belongs to the lowest-numbered one
    for harvesting; its owner *wants* it when it has a candidate of that type. Only
    restartable µTOps go to others' engines (engines nobody owns take any µTOp), so an owner
    that wants an engine type and has no owned engine of it free (or coming free) takes
    back one it lent (``preempt``): the borrower's µTOp is flushed and issued again later,
    and the owner waits ``flush_cycles`` at most, whatever the borrower runs.
    """

    def __init__(self, config):
        self.config = config
        C, E = config.n_ctx, len(engine_types(config))
        super().__init__({
            "enabled": In(1),
            "settings": In(ContextConfigLayout(config)).array(C),
            "candidates": In(CandidateLayout(config)).array(C, len(Engine)),
            "busy": In(E), "running": In(E), "borrowed": In(E), "abort": In(E), "done": In(E),
            "allowed": Out(E).array(C, len(Engine)),
            "borrow": Out(E).array(C),      # bit e: engine e would be borrowed by context c
            "preempt": Out(E),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        C = cfg.n_ctx
        types = engine_types(cfg)
        E = len(types)
        groups = {t: [e for e, et in enumerate(types) if et == t] for t in Engine}
        owner_of = {}
        for t in (Engine.ME, Engine.VE):
            for i, e in enumerate(groups[t]):
                owner_of[e] = [self.settings[c].me_mask[i] if t == Engine.ME
                               else self.settings[c].ve_mask[i] for c in range(C)]
        owner_wants = Signal(E)
        owned_by_anyone = Signal(E)
        primary = {}
        for e, t in enumerate(types):
            if t == Engine.DMA:
                continue
            wanted = 0
            taken_by_lower = 0
            primary[e] = Signal(C, name=f"eng{e}_owner")
            for c in range(C):
                m.d.comb += primary[e][c].eq(owner_of[e][c] & ~taken_by_lower)
                taken_by_lower = taken_by_lower | owner_of[e][c]
                wanted = wanted | (primary[e][c] & self.candidates[c][t].valid)
            m.d.comb += [owner_wants[e].eq(wanted), owned_by_anyone[e].eq(taken_by_lower)]

        for t in (Engine.ME, Engine.VE):
            taken = 0
            for e in groups[t]:
                relief = Cat((primary[e] == primary[other])
                             & (~self.busy[other] | self.abort[other])
                             for other in groups[t]).any()
                wanted = (self.enabled & self.running[e] & self.borrowed[e] & ~self.done[e]
                          & owner_wants[e] & ~relief)
                m.d.comb += self.preempt[e].eq(wanted & ~taken)
                taken = taken | wanted

        for c, settings in enumerate(self.settings):
            m.d.comb += self.borrow[c].eq(Cat(
                (self.enabled & owned_by_anyone[e] & ~owner_of[e][c]) if e in owner_of else Const(0, 1)
                for e in range(E)))
            for t in Engine:
                group = engine_group(cfg, t)
                owned = owned_engines(cfg, settings, t)
                # Others' engines only for restartable µTOps (see preemption).
                lendable = Mux(self.candidates[c][t].restartable, group, ~owned_by_anyone)
                m.d.comb += self.allowed[c][t].eq(owned | (group & ~owner_wants & lendable))
        return m
