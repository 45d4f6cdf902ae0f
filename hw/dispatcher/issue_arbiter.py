"""Issue: every cycle each context may start one candidate µTOp on a free engine it is allowed."""

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import Engine
from ..arbitration import lowest_set, one_hot_index
from ..ports import ctx_shape
from .signatures import CandidateLayout, engine_group, engine_types

__all__ = ["IssueArbiter", "IssueChoiceLayout"]


class IssueChoiceLayout(data.StructLayout):
    def __init__(self, config):
        E = len(engine_types(config))
        super().__init__({
            "valid": 1, "engines": E, "engine": range(E), "slot": range(config.dep_window),
            "type": Engine,
        })


class IssueArbiter(wiring.Component):
    """Contexts are visited in rotating order (a static chain walked in two passes: from the
    context whose turn it is to the last, then from the first); each takes, among its
    candidates (one per engine type) that have a free engine it is ``allowed``, the oldest.
    It prefers an engine it ``owns``, then the lowest-numbered one."""

    def __init__(self, config):
        self.config = config
        C, E = config.n_ctx, len(engine_types(config))
        super().__init__({
            "running": In(C),
            "candidates": In(CandidateLayout(config)).array(C, len(Engine)),
            "allowed": In(E).array(C, len(Engine)),
            "owned": In(E).array(C, len(Engine)),
            "busy": In(E),
            "choice": Out(IssueChoiceLayout(config)).array(C),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        C, W = cfg.n_ctx, cfg.dep_window
        E = len(engine_types(cfg))
        rotation = Signal(ctx_shape(cfg))
        m.d.sync += rotation.eq(Mux(rotation == C - 1, 0, rotation + 1))
        claimed = Const(0, E)
        passes = {}
        for pass_index in range(2):
            for c in range(C):
                turn = (c >= rotation) if pass_index == 0 else (c < rotation)
                # Values used more than once are signals: an expression is written out
                # again at every use.
                free = Signal(E, name=f"p{pass_index}c{c}_free")
                m.d.comb += free.eq(~self.busy & ~claimed)
                options = []
                for t in Engine:
                    candidate = self.candidates[c][t]
                    usable = Signal(E, name=f"p{pass_index}c{c}_{t.name}_usable")
                    preferred = Signal(E, name=f"p{pass_index}c{c}_{t.name}_preferred")
                    m.d.comb += [usable.eq(free & self.allowed[c][t] & engine_group(cfg, t)),
                                 preferred.eq(usable & self.owned[c][t])]
                    choice = lowest_set(m, Mux(preferred.any(), preferred, usable),
                                        f"p{pass_index}c{c}_{t.name}_choice")
                    options.append((t, candidate.valid & usable.any(), candidate.slot,
                                    candidate.age, choice))
                # Take the oldest option.
                take = Signal(E, name=f"p{pass_index}c{c}_take")
                take_slot = Signal(range(W), name=f"p{pass_index}c{c}_take_slot")
                chosen_t = Signal(Engine, name=f"p{pass_index}c{c}_type")
                best_age, found = Const(W, range(W + 1)), Const(0, 1)
                for t, ok, slot, age, choice in options:
                    better = Signal(name=f"p{pass_index}c{c}_{t.name}_better")
                    m.d.comb += better.eq(ok & (~found | (age < best_age)))
                    step_age = Signal(range(W + 1), name=f"p{pass_index}c{c}_{t.name}_age")
                    step_found = Signal(name=f"p{pass_index}c{c}_{t.name}_found")
                    m.d.comb += [step_age.eq(Mux(better, age, best_age)), step_found.eq(found | ok)]
                    best_age, found = step_age, step_found
                    with m.If(better):
                        m.d.comb += [take.eq(choice), take_slot.eq(slot), chosen_t.eq(t)]
                go = Signal(name=f"p{pass_index}c{c}_go")
                m.d.comb += go.eq(turn & found & self.running[c])
                taken = Signal(E, name=f"p{pass_index}c{c}_taken")
                m.d.comb += taken.eq(Mux(go, take, 0))
                step_claimed = Signal(E, name=f"p{pass_index}c{c}_claimed")
                m.d.comb += step_claimed.eq(claimed | taken)
                claimed = step_claimed
                passes.setdefault(c, []).append((go, take, take_slot, chosen_t))
        for c, ((go0, take0, slot0, t0), (go1, take1, slot1, t1)) in passes.items():
            choice = self.choice[c]
            m.d.comb += [choice.valid.eq(go0 | go1),
                         choice.engines.eq(Mux(go0, take0, take1)),
                         choice.slot.eq(Mux(go0, slot0, slot1)),
                         choice.type.eq(Mux(go0, t0, t1))]
            m.d.comb += choice.engine.eq(one_hot_index(choice.engines))
        return m
