"""The physical NPU (pNPU): engines, scratchpad, HBM, dispatcher and host interface."""

from amaranth import Cat, Module
from amaranth.hdl import ResetInserter
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from isa.regmap import activity_fields
from .dispatcher import Dispatcher, engine_types
from .dma_engine import DMAEngine
from .hbm import HBM, HBMPortSignature, HBMStorageSignature
from .host_interface import CSRSignature, HostInterface
from .matrix_engine import MatrixEngine
from .ports import SpadReadSignature, SpadWriteSignature
from .scratchpad import Scratchpad
from .vector_engine import VectorEngine

__all__ = ["NPU", "activity_bits"]


def activity_bits(config):
    """Bits per engine of the NPU's ``activity`` port (isa.regmap.activity_fields)."""
    return sum(activity_fields(config))


class NPU(wiring.Component):
    """A pNPU built from an NPUConfig. Everything goes through the host interface:

    - ``csr``: the register map of isa/regmap.py (configuration, programs, start, status,
      faults, counters);
    - ``spad_rd``/``spad_wr``: a scratchpad client (rows), arbitrated like the engines;
    - ``hbm``: an HBM port (lines), arbitrated like the DMA engines;
    - ``hbm_storage``: HBM's lines, a synchronous memory outside the pNPU (hw/hbm.py);
    - ``busy``: some context is running, starting, or has a request queued; ``cycle``: cycles
      since reset (the CYCLE register); ``activity``: which context's µTOp, and which of
      its µTOps, each engine runs now (timelines).
    """

    def __init__(self, config):
        self.config = config
        self.types = engine_types(config)
        self.mes = [MatrixEngine(config) for _ in range(config.n_me)]
        self.ves = [VectorEngine(config) for _ in range(config.n_ve)]
        self.dmas = [DMAEngine(config) for _ in range(config.n_dma)]
        self.engines = self.mes + self.ves + self.dmas
        self.dispatcher = Dispatcher(config)
        self.host = HostInterface(config, len(self.engines))
        read_ports = [(me, "rd_in") for me in self.mes] + [(me, "rd_aux") for me in self.mes] \
            + [(ve, "rd_a") for ve in self.ves] + [(ve, "rd_b") for ve in self.ves] \
            + [(dma, "rd") for dma in self.dmas]
        write_ports = [(engine, "wr") for engine in self.engines]
        self._read_ports, self._write_ports = read_ports, write_ports
        self.spad = Scratchpad(config, n_read=len(read_ports) + 1, n_write=len(write_ports) + 1)
        # HBM ports: the DMA engines, the host, each context's instruction prefetcher.
        self.hbm_model = HBM(config, n_ports=config.n_dma + 1 + config.n_ctx)
        super().__init__({
            "csr": In(CSRSignature()),
            "spad_rd": In(SpadReadSignature(config)),
            "spad_wr": In(SpadWriteSignature(config)),
            "hbm": In(HBMPortSignature(config)),
            # HBM's lines: a memory outside the pNPU (the harness holds it).
            "hbm_storage": Out(HBMStorageSignature(config)),
            "busy": Out(1),
            "cycle": Out(64),
            # A trace port (timelines, runtime.backends): per engine e, bits
            # [e * ACTIVITY_BITS, (e + 1) * ACTIVITY_BITS) (see activity_bits).
            "activity": Out(len(self.engines) * activity_bits(config)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dispatcher = dispatcher = self.dispatcher
        m.submodules.host = host = self.host
        m.submodules.spad = spad = self.spad
        m.submodules.hbm = hbm = self.hbm_model
        for i, engine in enumerate(self.engines):
            m.submodules[f"{self.types[i].name.lower()}{i}"] = engine
            link = dispatcher.engines[i]
            wiring.connect(m, link.cmd, engine.cmd)
            # Each engine buffers a whole µTOp body, so the context's body streamer hands
            # it over at one word per cycle and moves on to the context's next µTOp while
            # the engine works: one tenant's independent µTOps run on several engines.
            # An aborted µTOp's unread body words go with it.
            body = fifo.SyncFIFOBuffered(width=64, depth=self.config.max_body)
            m.submodules[f"body{i}"] = ResetInserter({"sync": dispatcher.engine_abort[i]})(body)
            wiring.connect(m, link.instr, body.w_stream)
            wiring.connect(m, body.r_stream, engine.instr)
            wiring.connect(m, engine.done, link.done)
        # Traffic of a µTOp on a borrowed engine yields to everyone else's (harvest).
        for i, (engine, name) in enumerate(self._read_ports):
            wiring.connect(m, getattr(engine, name), spad.rd[i])
            m.d.comb += spad.rd_background[i].eq(
                dispatcher.engine_background[self.engines.index(engine)])
        for i, (engine, name) in enumerate(self._write_ports):
            wiring.connect(m, getattr(engine, name), spad.wr[i])
            m.d.comb += spad.wr_background[i].eq(
                dispatcher.engine_background[self.engines.index(engine)])
        for i, dma in enumerate(self.dmas):
            wiring.connect(m, dma.hbm, hbm.port[i])
        # The host's own memory ports.
        wiring.connect(m, wiring.flipped(self.spad_rd), spad.rd[len(self._read_ports)])
        wiring.connect(m, wiring.flipped(self.spad_wr), spad.wr[len(self._write_ports)])
        wiring.connect(m, wiring.flipped(self.hbm), hbm.port[self.config.n_dma])
        wiring.connect(m, hbm.storage, wiring.flipped(self.hbm_storage))
        for c in range(self.config.n_ctx):
            wiring.connect(m, dispatcher.hbm[c], hbm.port[self.config.n_dma + 1 + c])

        wiring.connect(m, wiring.flipped(self.csr), host.csr)
        wiring.connect(m, host.control, dispatcher.control)
        m.d.comb += self.cycle.eq(host.cycle)
        m.d.comb += self.busy.eq(host.busy)
        m.d.comb += self.activity.eq(Cat(
            Cat(ctx, pc) for ctx, pc in
            zip(dispatcher.engine_activity, dispatcher.engine_activity_pc)))
        for i, engine in enumerate(self.engines):
            m.d.comb += [host.engine_stall[i].eq(engine.stall_cycles),
                         host.engine_done[i].eq(engine.utops_done),
                         host.engine_work[i].eq(engine.work),
                         engine.flush.eq(dispatcher.engine_abort[i]),
                         dispatcher.engine_progress[i].eq(engine.progress)]
        return m
