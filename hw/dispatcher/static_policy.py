"""Static partitioning: a context uses only the engines it owns."""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import Engine
from .signatures import ContextConfigLayout, engine_types, owned_engines

__all__ = ["StaticPolicy"]


class StaticPolicy(wiring.Component):
    """``allowed[c][t]``: the engines of type t context c may be issued to (its own)."""

    def __init__(self, config):
        self.config = config
        C, E = config.n_ctx, len(engine_types(config))
        super().__init__({
            "settings": In(ContextConfigLayout(config)).array(C),
            "allowed": Out(E).array(C, len(Engine)),
        })

    def elaborate(self, platform):
        m = Module()
        for c, settings in enumerate(self.settings):
            for t in Engine:
                m.d.comb += self.allowed[c][t].eq(owned_engines(self.config, settings, t))
        return m
