"""Issue: every cycle each context may start one candidate µTOp on a free engine it is allowed."""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import Engine
from ..arbitration import first_in_order, lowest_set, one_hot_index, pairwise_order
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
    """Contexts are visited in rotating order (from the context whose turn it is, round to
    the one before it); each takes, among its candidates (one per engine type) that have a
    free engine it is ``allowed``, the oldest (on equal age the first engine type). It
    prefers an engine it ``owns``, then the lowest-numbered one.

    Only the engines claimed so far pass from one context to the next, so everything else
    is worked out beside that chain: which candidate beats which (by age), and the engines
    each candidate could use if they are free. The contexts' inputs are rotated into visit
    order and the choices rotated back, so the chain is ``n_ctx`` steps long.
    """

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
        C = cfg.n_ctx
        E = len(engine_types(cfg))
        types = list(Engine)
        pairs = [(t, u) for t in types for u in types if t != u]
        rotation = Signal(ctx_shape(cfg))
        m.d.sync += rotation.eq(Mux(rotation == C - 1, 0, rotation + 1))

        # Per context, independent of the other contexts: the engines each candidate could
        # take if free, the ones it owns, and which candidate beats which.
        requests = []
        for c in range(C):
            wants, owns, beats = [], [], []
            for t in types:
                candidate = self.candidates[c][t]
                want = Signal(E, name=f"c{c}_{t.name}_wants")
                m.d.comb += want.eq((self.running[c] & candidate.valid).replicate(E)
                                    & self.allowed[c][t] & engine_group(cfg, t))
                wants.append(want)
                owns.append(self.owned[c][t])
            # t beats u: it is older, or as old and the earlier type.
            order = pairwise_order(m, [self.candidates[c][t].age for t in types], f"c{c}_age")
            beats += [order[t, u] for t, u in pairs]
            request = Signal(2 * len(types) * E + len(pairs), name=f"c{c}_request")
            m.d.comb += request.eq(Cat(*wants, *owns, *beats))
            requests.append(request)

        # The chain, in visit order: position k is context (rotation + k) mod n_ctx.
        claimed = Const(0, E)
        results = []
        for k in range(C):
            request = Signal(len(requests[0]), name=f"k{k}_request")
            with m.Switch(rotation):
                for r in range(C):
                    with m.Case(r):
                        m.d.comb += request.eq(requests[(r + k) % C])
            fields = iter(range(len(types) * 2))
            wants = [request.word_select(next(fields), E) for _ in types]
            owns = [request.word_select(next(fields), E) for _ in types]
            beats = dict(zip(pairs, request[2 * len(types) * E:]))
            free = Signal(E, name=f"k{k}_free")
            m.d.comb += free.eq(~self.busy & ~claimed)
            ok, takes = {}, {}
            for t, want, own in zip(types, wants, owns):
                usable = Signal(E, name=f"k{k}_{t.name}_usable")
                preferred = Signal(E, name=f"k{k}_{t.name}_preferred")
                m.d.comb += [usable.eq(free & want), preferred.eq(usable & own)]
                ok[t] = usable.any()
                takes[t] = lowest_set(m, Mux(preferred.any(), preferred, usable),
                                      f"k{k}_{t.name}_choice", tree=True)
            take = Signal(E, name=f"k{k}_take")
            kind = Signal(Engine, name=f"k{k}_type")
            picks = Signal(len(types), name=f"k{k}_picked")
            m.d.comb += picks.eq(first_in_order(Cat(ok[t] for t in types), beats))
            for t, picked in zip(types, picks):
                with m.If(picked):
                    m.d.comb += [take.eq(takes[t]), kind.eq(t)]
            step = Signal(E, name=f"k{k}_claimed")
            m.d.comb += step.eq(claimed | take)
            claimed = step
            results.append(Cat(take, kind))

        # Back to context order.
        for c in range(C):
            result = Signal(len(results[0]), name=f"c{c}_result")
            with m.Switch(rotation):
                for r in range(C):
                    with m.Case(r):
                        m.d.comb += result.eq(results[(c - r) % C])
            choice = self.choice[c]
            m.d.comb += [choice.engines.eq(result[:E]), choice.type.eq(result[E:]),
                         choice.valid.eq(choice.engines.any()),
                         choice.engine.eq(one_hot_index(choice.engines))]
            for t in types:
                with m.If(choice.valid & (choice.type == t)):
                    m.d.comb += choice.slot.eq(self.candidates[c][t].slot)
        return m
