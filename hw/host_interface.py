"""Host interface: the register file of regmap.py behind a CSR bus, plus the instruction-memory window."""

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .dispatcher import ControlSignature
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
            "control": Out(ControlSignature(config, n_engines)),
            # Engine counters to read.
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

        control = self.control
        # The writable registers, at the widths of the register map; the dispatcher sees a
        # context's settings at the widths of its memories (START checks they fit).
        context_registers = [{register.name: Signal(register.width(cfg), name=f"c{c}_{register.name.lower()}")
                              for register in CONTEXT if register.access == Access.RW}
                             for c in range(cfg.n_ctx)]
        for registers, settings in zip(context_registers, control.ctx_config):
            m.d.comb += [settings.prog_len.eq(registers["PROG_LEN"]),
                         settings.segment.spad_base.eq(registers["SPAD_BASE"]),
                         settings.segment.spad_size.eq(registers["SPAD_SIZE"]),
                         settings.segment.hbm_base.eq(registers["HBM_BASE"]),
                         settings.segment.hbm_size.eq(registers["HBM_SIZE"]),
                         settings.me_mask.eq(registers["ME_MASK"]),
                         settings.ve_mask.eq(registers["VE_MASK"]),
                         settings.priority.eq(registers["PRIORITY"])]

        shape = (cfg.n_ctx | cfg.n_me << 8 | cfg.n_ve << 16 | cfg.n_dma << 24
                 | cfg.array_rows << 32 | cfg.array_cols << 40 | cfg.ve_lanes << 48)
        status_packed = Cat(state.status for state in control.ctx_state)
        readable = {
            ("global", "ID"): ID_VALUE, ("global", "SHAPE"): shape,
            ("global", "POLICY"): control.policy, ("global", "STATUS"): status_packed,
            ("global", "CYCLE"): cycle, ("global", "TIME_SLICE"): control.time_slice,
        }
        writable = {("global", "POLICY"): control.policy,
                    ("global", "TIME_SLICE"): control.time_slice}
        for c in range(cfg.n_ctx):
            state = control.ctx_state[c]
            for name, value in context_registers[c].items():
                readable[(c, name)] = writable[(c, name)] = value
            readable.update({(c, "STATUS"): state.status, (c, "FAULT"): state.fault,
                             (c, "FAULT_PC"): state.fault_pc})
            for register in CONTEXT:
                if register.access == Access.RO and (c, register.name) not in readable:
                    readable[(c, register.name)] = getattr(state, register.name.lower())
        for e in range(self.n_engines):
            readable.update({("engine", e, "BUSY"): control.engine_busy[e],
                             ("engine", e, "STALL"): self.engine_stall[e],
                             ("engine", e, "DONE"): self.engine_done[e],
                             ("engine", e, "WORK"): self.engine_work[e]})
            for c in range(cfg.n_ctx):
                readable[("engine", e, f"BUSY_CTX{c}")] = control.engine_busy_by_ctx[e][c]

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
        m.d.comb += running.eq(Cat(state.status == Status.RUNNING for state in control.ctx_state)
                               | control.start)
        value = csr.wdata

        def fits(target):
            return (value >> len(target)) == 0

        def valid_settings(c):
            registers = context_registers[c]
            return ((registers["PROG_LEN"] <= cfg.imem_words)
                    & (registers["SPAD_BASE"] + registers["SPAD_SIZE"] <= cfg.spad_rows)
                    & (registers["HBM_BASE"] + registers["HBM_SIZE"] <= cfg.hbm_words))

        imem_offset = csr.addr[:IMEM_STRIDE.bit_length() - 1]
        imem_ctx = (csr.addr - IMEM_BASE) >> (IMEM_STRIDE.bit_length() - 1)
        in_imem = (csr.addr >= IMEM_BASE) & (csr.addr < IMEM_BASE + cfg.n_ctx * IMEM_STRIDE)
        imem_ok = Signal()
        m.d.sync += [control.start.eq(0), control.config_fault.eq(0)]
        with m.If(csr.we):
            with m.Switch(csr.addr):
                for key, target in writable.items():
                    with m.Case(address(key)):
                        busy = 0 if key[0] == "global" else running[key[0]]
                        out_of_range = ~fits(target)
                        if target is control.time_slice:
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
                        m.d.sync += [control.start.eq(value[:cfg.n_ctx] & good),
                                     control.config_fault.eq(value[:cfg.n_ctx] & ~good)]
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
            control.imem_we.eq(imem_ok),
            control.imem_ctx.eq(imem_ctx),
            control.imem_addr.eq(imem_offset),
            control.imem_data.eq(csr.wdata),
        ]

        # Reads.
        with m.If(csr.re):
            m.d.sync += csr.rdata.eq(0)
            with m.Switch(csr.addr):
                for key, value in readable.items():
                    with m.Case(address(key)):
                        m.d.sync += csr.rdata.eq(value)
        return m
