"""Host interface: the register file of regmap.py behind a CSR bus, plus the instruction-memory window."""

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .dispatcher import ContextConfigLayout, ContextStateLayout
from .regmap import (CONTEXT, CONTEXT_BASE, CONTEXT_STRIDE, ENGINE, ENGINE_BASE, ENGINE_STRIDE,
                     GLOBAL, ID_VALUE, IMEM_BASE, IMEM_STRIDE, Access, HostError, Status)

__all__ = ["HostInterface", "CSRSignature"]


class CSRSignature(wiring.Signature):
    """The host's register bus, seen from the host: a write (``we``) takes effect at the clock
    edge; a read (``re``) returns ``rdata`` after that edge."""

    def __init__(self):
        super().__init__({
            "addr": Out(32), "wdata": Out(64), "we": Out(1), "re": Out(1),
            "rdata": In(64),
        })


class HostInterface(wiring.Component):
    """Holds the writable registers and decodes every register of the map.

    Reads are evaluated only in a cycle with ``re`` (so the counters feeding the read
    multiplexer cost nothing otherwise).

    The host is trusted with the settings but not believed: a write whose value does not
    fit its register, a write to no writable register, an instruction-memory word past
    ``imem_words``, and any START, configuration or program write of a running context
    are refused (nothing changes) and recorded in HOST_ERROR. START of a context whose
    segments run past the end of their memory, or whose PROG_LEN exceeds the instruction
    memory, does not run it: the context faults CONFIG (``config_fault``).
    """

    def __init__(self, config, n_engines):
        self.config, self.n_engines = config, n_engines
        super().__init__({
            "csr": In(CSRSignature()),
            # To the dispatcher.
            "ctx_config": Out(ContextConfigLayout(config)).array(config.n_ctx),
            "ctx_state": In(ContextStateLayout(config)).array(config.n_ctx),
            "policy": Out(2),
            "time_slice": Out(32, init=4096),
            "start": Out(config.n_ctx),
            "config_fault": Out(config.n_ctx),
            "imem_we": Out(1),
            "imem_ctx": Out(range(config.n_ctx)),
            "imem_addr": Out(range(config.imem_words)),
            "imem_data": Out(64),
            # Counters to read.
            "engine_busy": In(32).array(n_engines),
            "engine_busy_by_ctx": In(32).array(n_engines, config.n_ctx),
            "engine_stall": In(32).array(n_engines),
            "engine_done": In(32).array(n_engines),
            "engine_work": In(32).array(n_engines),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        csr = self.csr
        cycle = Signal(64)
        m.d.sync += cycle.eq(cycle + 1)

        shape = (cfg.n_ctx | cfg.n_me << 8 | cfg.n_ve << 16 | cfg.n_dma << 24
                 | cfg.array_rows << 32 | cfg.array_cols << 40 | cfg.ve_lanes << 48)
        status_packed = Cat(state.status for state in self.ctx_state)
        readable = {
            ("global", "ID"): ID_VALUE, ("global", "SHAPE"): shape,
            ("global", "POLICY"): self.policy, ("global", "STATUS"): status_packed,
            ("global", "CYCLE"): cycle, ("global", "TIME_SLICE"): self.time_slice,
        }
        writable = {("global", "POLICY"): self.policy, ("global", "TIME_SLICE"): self.time_slice}
        for c in range(cfg.n_ctx):
            config, state = self.ctx_config[c], self.ctx_state[c]
            fields = {"PROG_LEN": config.prog_len, "SPAD_BASE": config.spad_base,
                      "SPAD_SIZE": config.spad_size, "HBM_BASE": config.hbm_base,
                      "HBM_SIZE": config.hbm_size, "ME_MASK": config.me_mask,
                      "VE_MASK": config.ve_mask, "PRIORITY": config.priority}
            for name, value in fields.items():
                readable[(c, name)] = writable[(c, name)] = value
            readable.update({(c, "STATUS"): state.status, (c, "FAULT"): state.fault,
                             (c, "FAULT_PC"): state.fault_pc})
            for register in CONTEXT:
                if register.access == Access.RO and (c, register.name) not in readable:
                    readable[(c, register.name)] = getattr(state, register.name.lower())
        for e in range(self.n_engines):
            readable.update({("engine", e, "BUSY"): self.engine_busy[e],
                             ("engine", e, "STALL"): self.engine_stall[e],
                             ("engine", e, "DONE"): self.engine_done[e],
                             ("engine", e, "WORK"): self.engine_work[e]})
            for c in range(cfg.n_ctx):
                readable[("engine", e, f"BUSY_CTX{c}")] = self.engine_busy_by_ctx[e][c]

        def address(key):
            if key[0] == "global":
                return next(r.offset for r in GLOBAL if r.name == key[1])
            if key[0] == "engine":
                return ENGINE_BASE + key[1] * ENGINE_STRIDE + next(
                    r.offset for r in ENGINE if r.name == key[2])
            return CONTEXT_BASE + key[0] * CONTEXT_STRIDE + next(
                r.offset for r in CONTEXT if r.name == key[1])

        # Writes: every refused write names its reason in HOST_ERROR (the first one sticks).
        host_error = Signal(8)
        host_error_addr = Signal(32)
        readable[("global", "HOST_ERROR")] = Cat(host_error, Signal(24), host_error_addr)
        refuse = Signal(8)
        running = Signal(cfg.n_ctx)
        m.d.comb += running.eq(Cat(state.status == Status.RUNNING for state in self.ctx_state)
                               | self.start)
        value = csr.wdata

        def fits(target):
            return (value >> len(target)) == 0

        def valid_settings(c):
            config = self.ctx_config[c]
            return ((config.prog_len <= cfg.imem_words)
                    & (config.spad_base + config.spad_size <= cfg.spad_rows)
                    & (config.hbm_base + config.hbm_size <= cfg.hbm_words))

        imem_offset = csr.addr[:IMEM_STRIDE.bit_length() - 1]
        imem_ctx = (csr.addr - IMEM_BASE) >> (IMEM_STRIDE.bit_length() - 1)
        in_imem = (csr.addr >= IMEM_BASE) & (csr.addr < IMEM_BASE + cfg.n_ctx * IMEM_STRIDE)
        imem_ok = Signal()
        m.d.sync += [self.start.eq(0), self.config_fault.eq(0)]
        with m.If(csr.we):
            with m.Switch(csr.addr):
                for key, target in writable.items():
                    with m.Case(address(key)):
                        busy = 0 if key[0] == "global" else running[key[0]]
                        out_of_range = ~fits(target)
                        if target is self.time_slice:
                            out_of_range = out_of_range | (value == 0)
                        with m.If(busy):
                            m.d.comb += refuse.eq(HostError.CONTEXT_RUNNING)
                        with m.Elif(out_of_range):
                            m.d.comb += refuse.eq(HostError.VALUE_RANGE)
                        with m.Else():
                            m.d.sync += target.eq(value)
                with m.Case(address(("global", "START"))):
                    with m.If((value >> cfg.n_ctx) != 0):
                        m.d.comb += refuse.eq(HostError.VALUE_RANGE)
                    with m.Elif((value[:cfg.n_ctx] & running).any()):
                        m.d.comb += refuse.eq(HostError.CONTEXT_RUNNING)
                    with m.Else():
                        good = Cat(valid_settings(c) for c in range(cfg.n_ctx))
                        m.d.sync += [self.start.eq(value[:cfg.n_ctx] & good),
                                     self.config_fault.eq(value[:cfg.n_ctx] & ~good)]
                        with m.If((value[:cfg.n_ctx] & ~good).any()):
                            m.d.comb += refuse.eq(HostError.BAD_CONTEXT)
                with m.Case(address(("global", "HOST_ERROR"))):
                    m.d.sync += [host_error.eq(0), host_error_addr.eq(0)]
                with m.Default():
                    with m.If(~in_imem):
                        m.d.comb += refuse.eq(HostError.UNMAPPED)
                    with m.Elif(imem_offset >= cfg.imem_words):
                        m.d.comb += refuse.eq(HostError.IMEM_RANGE)
                    with m.Elif(running.bit_select(imem_ctx[:max(1, (cfg.n_ctx - 1).bit_length())], 1)):
                        m.d.comb += refuse.eq(HostError.CONTEXT_RUNNING)
                    with m.Else():
                        m.d.comb += imem_ok.eq(1)
        with m.If((refuse != 0) & (host_error == 0)):
            m.d.sync += [host_error.eq(refuse), host_error_addr.eq(csr.addr)]
        m.d.comb += [
            self.imem_we.eq(imem_ok),
            self.imem_ctx.eq(imem_ctx),
            self.imem_addr.eq(imem_offset),
            self.imem_data.eq(csr.wdata),
        ]

        # Reads.
        with m.If(csr.re):
            m.d.sync += csr.rdata.eq(0)
            with m.Switch(csr.addr):
                for key, value in readable.items():
                    with m.Case(address(key)):
                        m.d.sync += csr.rdata.eq(value)
        return m
