"""Hands each issued µTOp's body, word by word, from its context's instruction buffer to its engine."""

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..ports import body_length_shape, prog_addr_shape
from .signatures import engine_types

__all__ = ["BodyStreamer", "BodyJobLayout"]


class BodyJobLayout(data.StructLayout):
    """A body to stream: ``length`` words from ``addr`` to engine ``engine``."""

    def __init__(self, config):
        super().__init__({
            "valid": 1, "engine": range(len(engine_types(config))),
            "addr": prog_addr_shape(config), "length": body_length_shape(config),
        })


class BodyStreamer(wiring.Component):
    """One stream per context: a context issues its next µTOp only once the previous body
    is handed over (``active`` low). A body stops early when its µTOp is preempted, when
    its context is killed (``cancel``) or restarted."""

    def __init__(self, config):
        self.config = config
        C, E = config.n_ctx, len(engine_types(config))
        super().__init__({
            "job": In(BodyJobLayout(config)).array(C),
            "cancel": In(1).array(C),
            "preempted": In(E).array(C),     # bit e: the context's µTOp on engine e is preempted
            "read_addr": Out(prog_addr_shape(config)).array(C),   # registered read:
            "read_data": In(64).array(C),                          # the word at addr
            "active": Out(1).array(C),
            "instr": Out(stream.Signature(unsigned(64))).array(E),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        C, E = cfg.n_ctx, len(engine_types(cfg))
        streams = []
        for c in range(C):
            active = self.active[c]
            engine = Signal(range(E), name=f"c{c}_engine")
            addr = Signal(prog_addr_shape(cfg), name=f"c{c}_addr")
            left = Signal(body_length_shape(cfg), name=f"c{c}_left")
            streams.append((active, engine, addr, left))

        for e, link in enumerate(self.instr):
            valid = 0
            for c, (active, engine, addr, left) in enumerate(streams):
                streaming = active & (left != 0) & (engine == e)
                valid = valid | streaming
                with m.If(streaming):
                    m.d.comb += link.payload.eq(self.read_data[c])
            m.d.comb += link.valid.eq(valid)

        for c, (active, engine, addr, left) in enumerate(streams):
            job = self.job[c]
            # The instruction buffer's read port is registered: it is given the address
            # the stream moves to at this clock edge, and returns the word at ``addr``.
            addr_next = Signal(prog_addr_shape(cfg), name=f"c{c}_addr_next")
            m.d.comb += [addr_next.eq(addr), self.read_addr[c].eq(addr_next)]
            m.d.sync += addr.eq(addr_next)
            with m.If(job.valid):
                m.d.sync += [active.eq(1), engine.eq(job.engine), left.eq(job.length)]
                m.d.comb += addr_next.eq(job.addr)
            accepted = Signal(name=f"c{c}_word_accepted")
            for e, link in enumerate(self.instr):
                with m.If(engine == e):
                    m.d.comb += accepted.eq(link.ready & active & (left != 0))
            with m.If(active & ~job.valid):
                with m.If(left == 0):
                    m.d.sync += active.eq(0)
                with m.Elif(accepted):
                    m.d.sync += left.eq(left - 1)
                    m.d.comb += addr_next.eq(addr + 1)
                    with m.If(left == 1):
                        m.d.sync += active.eq(0)
            with m.If(active & self.preempted[c].bit_select(engine, 1)):
                m.d.sync += active.eq(0)      # the rest of the body goes with the µTOp
            with m.If(self.cancel[c]):
                m.d.sync += active.eq(0)
        return m
