"""µTOp dispatcher: per-context fetch and dependency windows, issue to engines under a sharing policy."""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import Engine
from isa.regmap import Policy
from ..hbm import HBMPortSignature
from ..ports import prog_addr_shape
from ..sram import SRAM
from .body_streamer import BodyStreamer
from .context import ContextWindow
from .engine_table import EngineTable
from .harvest_policy import HarvestPolicy
from .issue_arbiter import IssueArbiter
from .prefetcher import Prefetcher, ring_rows
from .signatures import (ControlSignature, EngineLinkSignature, engine_group, engine_types,
                         owned_engines)
from .static_policy import StaticPolicy
from .temporal_policy import TemporalPolicy
from .v10_policy import V10Policy
from .watchdog import Watchdog

__all__ = ["Dispatcher"]


class Dispatcher(wiring.Component):
    """Fetches µTOps of up to ``n_ctx`` contexts and issues them to engines.

    The parts, one file each:

    - ``Prefetcher`` (one per context): streams the context's program from HBM into its
      instruction buffer (a ring of ``imem_words`` words), ahead of decode;
    - ``ContextWindow`` (one per context): fetch, the ``dep_window`` window slots with their
      wait masks, the oldest ready µTOp of each engine type (its *candidates*), precise
      faults, status and counters;
    - ``IssueArbiter``: every cycle, contexts in rotating order each take their oldest
      candidate that has a free engine the policy allows (one issue per context per cycle);
    - one block per sharing policy (see regmap.Policy) saying which engines a context may
      take: ``StaticPolicy``, ``HarvestPolicy`` (with preemption of lent engines),
      ``TemporalPolicy`` (PREMA-like), ``V10Policy`` (ME operators gang-issued);
    - ``BodyStreamer``: hands an issued µTOp's body words to its engine;
    - ``EngineTable``: which µTOp each engine runs, retirements and aborts;
    - ``Watchdog``: an engine that makes no progress, an NPU on which nothing moves.

    Faults are precise in program order: the oldest faulting µTOp is reported; µTOps older
    than it still issue, younger ones stop, and those already issued drain before the
    context reports FAULTED, so nothing of a context is written once it reads FAULTED.

    Two watchdogs, each blaming only the context that failed to make progress: an engine
    that runs a µTOp and shows no progress (``engine_progress``) for ``watchdog_cycles``
    faults that µTOp's context with WATCHDOG; every engine running that context's µTOps is
    then held in reset (``engine_abort``) for ``flush_cycles``, long enough for in-flight
    memory responses to drain, and only then does the context read FAULTED. When no engine
    is busy and no context fetches, issues or retires a µTOp for ``watchdog_cycles`` while
    some context runs (e.g. under static a context owns no engine of a type it needs),
    every running context faults: all of them are stuck. A long µTOp that progresses, and
    a context that waits for an engine someone else uses, never trip either.
    """

    def __init__(self, config):
        self.config = config
        self.types = engine_types(config)
        #: Cycles an engine is held in reset when its µTOp is aborted (watchdog) or preempted
        #: (harvest): its memory responses in flight arrive while it still ignores them; a
        #: scratchpad read answers in one cycle, an HBM line in about ``hbm_latency``.
        self.flush_cycles = [config.hbm_latency + 4 if t == Engine.DMA else 2
                             for t in self.types]
        n_engines = len(self.types)
        #: Instruction buffers (one per context), rows of one HBM line of program words,
        #: written by the context's prefetcher. Both reads (header fetch, body streaming)
        #: are registered, as an SRAM macro's are: the fetch unit and the body streamer
        #: address them with their next position.
        self.imems = [SRAM(width=64 * config.prog_words_per_line, depth=ring_rows(config),
                           read_ports=("sync", "sync"))
                      for _ in range(config.n_ctx)]
        super().__init__({
            "control": In(ControlSignature(config, n_engines)),
            # Instruction fetch: one HBM port per context (programs live in HBM).
            "hbm": Out(HBMPortSignature(config)).array(config.n_ctx),
            "engines": Out(EngineLinkSignature(config)).array(n_engines),
            # Engine e did something this cycle (see the watchdog); while engine_abort[e] is
            # high the engine is held in reset.
            "engine_progress": In(1).array(n_engines),
            "engine_abort": Out(1).array(n_engines),
            # Engine e runs a µTOp its context borrowed (harvest): its memory traffic yields.
            "engine_background": Out(1).array(n_engines),
            # Observation points for testbenches and traces (one issue per context per cycle).
            "issue_valid": Out(1).array(config.n_ctx),
            "issue_engine": Out(range(n_engines)).array(config.n_ctx),
            "ready_any": Out(1).array(config.n_ctx),
            "candidate": Out(3).array(config.n_ctx),    # bit t: a ready µTOp for engine type t
            "ctx_on_me": Out(config.n_ctx),             # bit c: an ME runs a µTOp of context c
            "ctx_on_any": Out(config.n_ctx),            # bit c: some engine runs one of c's µTOps
            "retiring": Out(config.n_ctx),              # bit c: c retires a µTOp this cycle
            # Per engine: 0 idle, c + 1 running a µTOp of context c (what BUSY_CTXc counts).
            "engine_activity": Out(range(config.n_ctx + 1)).array(n_engines),
            # ... and the header address of the µTOp it runs (0 while idle).
            "engine_activity_pc": Out(prog_addr_shape(config)).array(n_engines),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        C, E = cfg.n_ctx, len(self.types)
        control = self.control
        me_group = engine_group(cfg, Engine.ME)

        m.submodules.table = table = EngineTable(cfg, self.flush_cycles)
        m.submodules.streamer = streamer = BodyStreamer(cfg)
        m.submodules.watchdog = watchdog = Watchdog(cfg, E)
        m.submodules.arbiter = arbiter = IssueArbiter(cfg)
        m.submodules.static = static = StaticPolicy(cfg)
        m.submodules.harvest = harvest = HarvestPolicy(cfg)
        m.submodules.temporal = temporal = TemporalPolicy(cfg)
        m.submodules.v10 = v10 = V10Policy(cfg)
        ctxs = [ContextWindow(cfg) for _ in range(C)]
        restart = Signal(C)
        m.d.comb += restart.eq(control.start | control.config_fault)

        prefetchers = [Prefetcher(cfg) for _ in range(C)]
        for c, (x, imem, prefetcher) in enumerate(zip(ctxs, self.imems, prefetchers)):
            m.submodules[f"ctx{c}"] = x
            m.submodules[f"imem{c}"] = imem
            m.submodules[f"prefetch{c}"] = prefetcher
            wiring.connect(m, prefetcher.hbm, wiring.flipped(self.hbm[c]))
            write, (fetch, body) = imem.write, imem.read
            choice = arbiter.choice[c]
            m.d.comb += [
                prefetcher.prog_base.eq(control.ctx_config[c].prog_base),
                prefetcher.prog_len.eq(control.ctx_config[c].prog_len),
                prefetcher.start.eq(restart[c]), prefetcher.enable.eq(x.fetching),
                prefetcher.keep.eq(x.keep), x.visible.eq(prefetcher.visible),
                x.fetch_request.eq(prefetcher.hbm.req.valid & prefetcher.hbm.req.ready),
                write.addr.eq(prefetcher.write.addr), write.data.eq(prefetcher.write.data),
                write.en.eq(prefetcher.write.en),
                x.fetch_word.eq(_buffer_read(m, cfg, fetch, x.fetch_addr, f"c{c}_fetch")),
                streamer.read_data[c].eq(
                    _buffer_read(m, cfg, body, streamer.read_addr[c], f"c{c}_body")),
                # The context.
                x.settings.eq(control.ctx_config[c]),
                x.start.eq(control.start[c]), x.config_fault.eq(control.config_fault[c]),
                x.finishing.eq(table.ctx_finishing[c]),
                x.retire_fault.eq(table.ctx_fault[c]),
                x.retire_fault_seq.eq(table.ctx_fault_seq[c]),
                x.retire_fault_pc.eq(table.ctx_fault_pc[c]),
                x.issue.eq(choice.valid), x.issue_slot.eq(choice.slot),
                x.issue_type.eq(choice.type),
                x.preempted_slots.eq(table.ctx_preempted_slots[c]),
                x.streaming.eq(streamer.active[c]),
                x.engines_running.eq(table.ctx_running[c]),
                x.hung.eq(table.ctx_hung[c]), x.hung_pc.eq(table.ctx_hung_pc[c]),
                x.stall_expired.eq(watchdog.stall_expired),
                x.aborting.eq(table.ctx_aborting[c]),
                x.gang_op.eq(v10.gang_op),
                control.ctx_state[c].eq(x.state),
                # Its issue, to the engine table and the body streamer.
                table.issue[c].valid.eq(choice.valid), table.issue[c].engines.eq(choice.engines),
                table.issue[c].slot.eq(choice.slot), table.issue[c].seq.eq(x.issue_seq),
                table.issue[c].pc.eq(x.issue_pc), table.issue[c].borrowed.eq(harvest.borrow[c]),
                table.kill[c].eq(x.kill),
                streamer.job[c].valid.eq(choice.valid), streamer.job[c].engine.eq(choice.engine),
                streamer.job[c].addr.eq(x.issue_body),
                streamer.job[c].length.eq(x.issue_length),
                streamer.cancel[c].eq(x.kill | restart[c]),
                streamer.preempted[c].eq(table.ctx_preempted_engines[c]),
                # Its candidates, and what each policy allows it.
                arbiter.running[c].eq(x.running),
                static.settings[c].eq(control.ctx_config[c]),
                harvest.settings[c].eq(control.ctx_config[c]),
                temporal.priority[c].eq(control.ctx_config[c].priority),
                v10.me_op[c].eq(x.me_op), v10.oldest_me_op[c].eq(x.oldest_me_op),
                v10.me_used[c].eq(x.me_used), v10.priority[c].eq(control.ctx_config[c].priority),
            ]
            for t in Engine:
                m.d.comb += [arbiter.candidates[c][t].eq(x.candidates[t]),
                             harvest.candidates[c][t].eq(x.candidates[t]),
                             arbiter.owned[c][t].eq(owned_engines(cfg, control.ctx_config[c], t))]
                with m.Switch(control.policy):
                    with m.Case(Policy.STATIC):
                        m.d.comb += arbiter.allowed[c][t].eq(static.allowed[c][t])
                    with m.Case(Policy.HARVEST):
                        m.d.comb += arbiter.allowed[c][t].eq(harvest.allowed[c][t])
                    with m.Case(Policy.TEMPORAL):
                        m.d.comb += arbiter.allowed[c][t].eq(
                            Mux(temporal.ok[c], engine_group(cfg, t), 0))
                    with m.Case(Policy.V10):
                        m.d.comb += arbiter.allowed[c][t].eq(
                            Mux(v10.me_ok[c], engine_group(cfg, t), 0) if t == Engine.ME
                            else engine_group(cfg, t))

        running = Cat(x.running for x in ctxs)
        ctx_on_me = Cat((table.ctx_busy[c] & me_group).any() for c in range(C))
        ctx_on_any = Cat(table.ctx_busy[c].any() for c in range(C))
        m.d.comb += [
            harvest.enabled.eq(control.policy == Policy.HARVEST),
            harvest.busy.eq(table.busy), harvest.running.eq(table.running),
            harvest.borrowed.eq(table.borrowed), harvest.abort.eq(table.abort),
            harvest.done.eq(Cat(link.done.valid for link in self.engines)),
            temporal.enabled.eq(control.policy == Policy.TEMPORAL),
            temporal.time_slice.eq(control.time_slice),
            temporal.running.eq(running), temporal.on_engines.eq(ctx_on_any),
            temporal.restart.eq(restart),
            v10.enabled.eq(control.policy == Policy.V10),
            v10.running.eq(running), v10.me_busy.eq((table.busy & me_group).any()),
            v10.on_me.eq(ctx_on_me),
            v10.me_candidate.eq(Cat(x.candidates[Engine.ME].valid for x in ctxs)),
            v10.me_op_ended.eq(Cat(x.me_op_ended for x in ctxs)),
            v10.me_issue.eq(Cat(arbiter.choice[c].valid & (arbiter.choice[c].type == Engine.ME)
                                for c in range(C))),
            v10.eoo_retiring.eq(Cat(x.gang_eoo_retiring for x in ctxs)),
            arbiter.busy.eq(table.busy),
            table.preempt.eq(harvest.preempt),
            table.hung.eq(watchdog.hung),
            watchdog.running.eq(table.running),
            watchdog.progress.eq(Cat(self.engine_progress)),
            watchdog.done.eq(Cat(link.done.valid for link in self.engines)),
            watchdog.any_running.eq(running.any()),
            watchdog.activity.eq(table.busy.any() | control.start.any()
                                 | control.config_fault.any()
                                 | Cat(x.activity for x in ctxs).any()
                                 | Cat(p.write.en for p in prefetchers).any()),
        ]

        # Engines: commands, body words, retirements.
        for e, link in enumerate(self.engines):
            wiring.connect(m, streamer.instr[e], wiring.flipped(link.instr))
            m.d.comb += [link.done.ready.eq(1), table.done[e].eq(link.done.valid),
                         table.done_fault[e].eq(link.done.payload.fault),
                         self.engine_abort[e].eq(table.abort[e]),
                         self.engine_background[e].eq(table.running[e] & table.borrowed[e]),
                         self.engine_activity[e].eq(
                             Mux(table.running[e], table.engine_ctx[e] + 1, 0)),
                         self.engine_activity_pc[e].eq(
                             Mux(table.running[e], table.engine_pc[e], 0)),
                         control.engine_busy[e].eq(table.engine_busy[e])]
            m.d.comb += [control.engine_busy_by_ctx[e][c].eq(table.engine_busy_by_ctx[e][c])
                         for c in range(C)]
            payload = link.cmd.payload
            valid, sel_terms = 0, 0
            sel = Signal(range(C), name=f"eng{e}_cmd_ctx")
            for c in range(C):
                hit = arbiter.choice[c].valid & arbiter.choice[c].engines[e]
                valid = valid | hit
                sel_terms = sel_terms | Mux(hit, c, 0)
            m.d.comb += [sel.eq(sel_terms), link.cmd.valid.eq(valid), payload.ctx.eq(sel)]
            for c, x in enumerate(ctxs):
                with m.If(sel == c):
                    m.d.comb += [payload.segment.eq(control.ctx_config[c].segment),
                                 payload.length.eq(x.issue_length)]

        for c, x in enumerate(ctxs):
            m.d.comb += [self.issue_valid[c].eq(arbiter.choice[c].valid),
                         self.issue_engine[c].eq(arbiter.choice[c].engine),
                         self.ready_any[c].eq(x.ready_any),
                         self.candidate[c].eq(x.ready_types),
                         self.retiring[c].eq(x.retiring_any)]
        m.d.comb += [self.ctx_on_me.eq(ctx_on_me), self.ctx_on_any.eq(ctx_on_any)]
        return m


def _buffer_read(m, config, port, addr, name):
    """The program word at ``addr`` through an instruction buffer's registered read port:
    the row holding it (``addr`` modulo the ring), then the word within the row."""
    K = config.prog_words_per_line
    word_bits = (K - 1).bit_length()
    m.d.comb += port.addr.eq(addr[word_bits:])          # rows wrap: the ring's depth
    if K == 1:
        return port.data
    select = Signal(word_bits, name=f"{name}_word")
    m.d.sync += select.eq(addr[:word_bits])
    return port.data.word_select(select, 64)
