"""Host interface: the register file of regmap.py behind a CSR bus."""

from amaranth import Cat, Module, Mux, Signal
from amaranth.hdl import ResetInserter
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from .dispatcher import COUNTERS, ControlSignature
from isa.regmap import (CONTEXT, CONTEXT_BASE, CONTEXT_STRIDE, ENGINE, ENGINE_BASE, ENGINE_STRIDE,
                     GLOBAL, ID_VALUE, Access, HostError, Status)

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
    fit its register, a write to no writable register, and any START or configuration
    write of a running context are refused (nothing changes) and recorded in HOST_ERROR.
    START of a context whose segments or program run past the end of their memory, or
    whose PROG_BASE is not at the start of an HBM line, does not run it: the context
    faults CONFIG (``config_fault``). Programs are in HBM: the host writes them there
    through its HBM port, and the dispatcher fetches them.

    Requests (isa/SPEC.md, "Requests"): each context has a queue of DOORBELL writes (the
    HBM offset of the request and the cycle it arrived); a free, unfaulted context starts
    the oldest, and when that run ends its arrival and end cycles go to a second queue the
    host reads through COMPLETION.
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
            "cycle": Out(64),                 # cycles since reset (the CYCLE register)
            "busy": Out(1),                   # a context runs, starts or has a request queued
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        csr = self.csr
        cycle = self.cycle
        m.d.sync += cycle.eq(cycle + 1)

        control = self.control
        # The writable registers, at the widths of the register map; the dispatcher sees a
        # context's settings at the widths of its memories (START checks they fit).
        context_registers = [{register.name: Signal(register.width(cfg), name=f"c{c}_{register.name.lower()}")
                              for register in CONTEXT if register.access == Access.RW}
                             for c in range(cfg.n_ctx)]
        # A request runs with its doorbell value added to HBM_BASE (0 after a START).
        request_offset = [Signal(32, name=f"c{c}_request_offset") for c in range(cfg.n_ctx)]
        for registers, settings, offset in zip(context_registers, control.ctx_config,
                                               request_offset):
            m.d.comb += [settings.prog_len.eq(registers["PROG_LEN"]),
                         settings.prog_base.eq(registers["PROG_BASE"]),
                         settings.segment.spad_base.eq(registers["SPAD_BASE"]),
                         settings.segment.spad_size.eq(registers["SPAD_SIZE"]),
                         settings.segment.hbm_base.eq(registers["HBM_BASE"] + offset),
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
            for name in COUNTERS:
                readable[(c, name.upper())] = getattr(state, name)
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

        def valid_settings(c, offset=0):
            registers = context_registers[c]
            line_bits = (cfg.hbm_words_per_cycle - 1).bit_length()
            return ((registers["PROG_BASE"][:line_bits] == 0)
                    & (registers["PROG_BASE"] + 2 * registers["PROG_LEN"] <= cfg.hbm_words)
                    & (registers["SPAD_BASE"] + registers["SPAD_SIZE"] <= cfg.spad_rows)
                    & (registers["HBM_BASE"] + offset + registers["HBM_SIZE"] <= cfg.hbm_words))

        # Requests: each context has a queue of doorbell values (requests not started) and
        # a queue of finished requests for the host to read (one more entry than requests
        # can be outstanding, so a context never waits for the host to read).
        queues = [fifo.SyncFIFO(width=63, depth=cfg.queue_depth) for _ in range(cfg.n_ctx)]
        finished = [fifo.SyncFIFO(width=63, depth=cfg.queue_depth + 1)
                    for _ in range(cfg.n_ctx)]
        from_request = Signal(cfg.n_ctx)     # the context's run is a request's
        was_running = Signal(cfg.n_ctx)
        started = Signal(cfg.n_ctx)          # START written for these contexts this cycle
        taking = Signal(cfg.n_ctx)           # ... or a request taken: a start next cycle
        # Settings are locked from the cycle a run is decided.
        locked = running | taking
        for c, (queue, done) in enumerate(zip(queues, finished)):
            # START of a context drops the requests it had queued (say, when it faulted).
            m.submodules[f"requests{c}"] = ResetInserter(started[c])(queue)
            m.submodules[f"finished{c}"] = done

        m.d.sync += [control.start.eq(0), control.config_fault.eq(0)]
        with m.If(csr.we):
            with m.Switch(csr.addr):
                for key, target in writable.items():
                    with m.Case(address(key)):
                        busy = 0 if key[0] == "global" else locked[key[0]]
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
                        m.d.comb += started.eq(value[:cfg.n_ctx])
                        m.d.sync += [control.start.eq(value[:cfg.n_ctx] & good),
                                     control.config_fault.eq(value[:cfg.n_ctx] & ~good)]
                        with m.If((value[:cfg.n_ctx] & ~good).any()):
                            m.d.comb += refuse.eq(HostError.BAD_CONTEXT)
                for c, queue in enumerate(queues):
                    with m.Case(address((c, "DOORBELL"))):
                        with m.If(~fits(request_offset[c])):
                            m.d.comb += refuse.eq(HostError.VALUE_RANGE)
                        with m.Elif(control.ctx_state[c].status == Status.FAULTED):
                            m.d.comb += refuse.eq(HostError.CONTEXT_FAULTED)
                        with m.Elif(~queue.w_rdy):
                            m.d.comb += refuse.eq(HostError.QUEUE_FULL)
                        with m.Else():
                            m.d.comb += [queue.w_en.eq(1),
                                         queue.w_data.eq(Cat(value[:32], cycle[:31]))]
                with m.Case(address(("global", "HOST_ERROR"))):
                    m.d.sync += [host_error.eq(0), host_error_addr.eq(0)]
                with m.Default():
                    m.d.comb += refuse.eq(HostError.UNMAPPED)
        # A free context (idle or done, not faulted, not being started or refused) whose
        # queue holds a request starts it, unless the host starts it this very cycle or a
        # request's end is being recorded. When a request's run ends, its arrival and end
        # cycles are recorded, and whether it faulted. One run at a time, and a request is
        # taken only when its end will find room: no end is ever dropped.
        for c, (queue, done) in enumerate(zip(queues, finished)):
            state = control.ctx_state[c]
            take = taking[c]
            good = Signal(name=f"c{c}_request_settings_ok")
            offset, arrived = queue.r_data[:32], queue.r_data[32:]
            is_running = state.status == Status.RUNNING
            ended = Signal(name=f"c{c}_request_ended")
            m.d.comb += ended.eq(was_running[c] & ~is_running & from_request[c])
            m.d.comb += [take.eq(~running[c] & ~control.config_fault[c]
                                 & (state.status != Status.FAULTED) & queue.r_rdy
                                 & done.w_rdy & ~ended & ~started[c]),
                         good.eq(valid_settings(c, offset)),
                         queue.r_en.eq(take)]
            arrival = Signal(31, name=f"c{c}_request_arrival")
            with m.If(take):
                m.d.sync += [control.start[c].eq(good), control.config_fault[c].eq(~good),
                             from_request[c].eq(1), request_offset[c].eq(offset),
                             arrival.eq(arrived)]
            with m.If(started[c]):
                m.d.sync += [from_request[c].eq(0), request_offset[c].eq(0)]
            m.d.sync += was_running[c].eq(is_running)
            refused_request = take & ~good       # it ends at once, faulted (CONFIG)
            m.d.comb += [
                done.w_en.eq(ended | refused_request),
                done.w_data.eq(Cat(cycle[:31], Mux(refused_request, arrived, arrival),
                                   refused_request | (state.status == Status.FAULTED))),
            ]
            completed = Signal(32, name=f"c{c}_completed")
            with m.If(done.w_en & done.w_rdy):
                m.d.sync += completed.eq(completed + 1)
            readable[(c, "PENDING")] = queue.level
            readable[(c, "COMPLETED")] = completed
            readable[(c, "COMPLETION")] = Mux(done.r_rdy, Cat(done.r_data, 1), 0)
            m.d.comb += done.r_en.eq(csr.re & (csr.addr == address((c, "COMPLETION"))))

        # Busy while a context runs or a context that can still run has a request queued.
        m.d.comb += self.busy.eq(running.any() | Cat(
            queue.r_rdy & (state.status != Status.FAULTED)
            for queue, state in zip(queues, control.ctx_state)).any())

        with m.If((refuse != 0) & (host_error == 0)):
            m.d.sync += [host_error.eq(refuse), host_error_addr.eq(csr.addr)]

        # Reads.
        with m.If(csr.re):
            m.d.sync += csr.rdata.eq(0)
            with m.Switch(csr.addr):
                for key, value in readable.items():
                    with m.Case(address(key)):
                        m.d.sync += csr.rdata.eq(value)
        return m
