"""Which µTOp each engine runs: context, window slot, sequence number; retirements, aborts, occupancy."""

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import Fault
from ..arbitration import first_in_order, one_hot_select, or_tree, pairwise_order
from ..ports import ctx_shape, prog_addr_shape
from .signatures import engine_types, seq_shape

__all__ = ["EngineTable", "IssueLayout"]


class IssueLayout(data.StructLayout):
    """A context issues the µTOp in window slot ``slot`` to the engines set in ``engines``
    (one), ``borrowed`` if it runs on an engine of another context (harvest)."""

    def __init__(self, config):
        E = len(engine_types(config))
        super().__init__({
            "valid": 1, "engines": E, "slot": range(config.dep_window),
            "seq": seq_shape, "pc": prog_addr_shape(config), "borrowed": E,
        })


class EngineTable(wiring.Component):
    """Per engine: busy, the context, slot, sequence number and header address of the µTOp it
    runs, whether the engine is borrowed, and the abort (held in reset) countdown.

    Seen per context, it tells each context which of its slots finish this cycle (and the
    oldest fault among them), which of its µTOps are preempted, which engines run its
    µTOps, whether one of them is hung or aborting. An abort (``preempt`` or a context's
    ``kill``) holds the engine in reset for ``flush_cycles[e]``.
    """

    def __init__(self, config, flush_cycles):
        self.config = config
        self.flush_cycles = flush_cycles
        C, W, E = config.n_ctx, config.dep_window, len(engine_types(config))
        pc = prog_addr_shape(config)
        super().__init__({
            "issue": In(IssueLayout(config)).array(C),
            "done": In(E),                 # engine e reports a retirement ...
            "done_fault": In(Fault).array(E),   # ... with this fault
            "preempt": In(E),
            "kill": In(C),
            "hung": In(E),
            "busy": Out(E),
            "running": Out(E),             # busy and not being aborted
            "abort": Out(E),
            "borrowed": Out(E),
            "finished": Out(E),            # running and retiring this cycle
            "engine_ctx": Out(ctx_shape(config)).array(E),
            "engine_pc": Out(pc).array(E),       # header address of the µTOp it runs
            # Per context.
            "ctx_busy": Out(E).array(C),         # bit e: engine e is busy with one of its µTOps
            "ctx_running": Out(E).array(C),
            "ctx_aborting": Out(1).array(C),
            "ctx_finishing": Out(W).array(C),    # bit s: the µTOp in slot s finishes
            "ctx_fault": Out(Fault).array(C),    # the oldest fault among them
            "ctx_fault_seq": Out(seq_shape).array(C),
            "ctx_fault_pc": Out(pc).array(C),
            "ctx_preempted_slots": Out(W).array(C),
            "ctx_preempted_engines": Out(E).array(C),
            "ctx_hung": Out(1).array(C),
            "ctx_hung_pc": Out(pc).array(C),
            # Occupancy counters.
            "engine_busy": Out(32).array(E),
            "engine_busy_by_ctx": Out(32).array(E, C),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        C, W = cfg.n_ctx, cfg.dep_window
        E = len(engine_types(cfg))
        pc_shape = prog_addr_shape(cfg)
        busy, running, abort, borrowed = self.busy, self.running, self.abort, self.borrowed
        eng_ctx = self.engine_ctx
        eng_slot = [Signal(range(W), name=f"eng{e}_slot") for e in range(E)]
        eng_seq = [Signal(seq_shape, name=f"eng{e}_seq") for e in range(E)]
        eng_pc = [Signal(pc_shape, name=f"eng{e}_pc") for e in range(E)]
        abort_left = [Signal(range(self.flush_cycles[e] + 1), name=f"eng{e}_abort_left")
                      for e in range(E)]
        abort_end = Cat(abort[e] & (abort_left[e] == 1) for e in range(E))
        m.d.comb += [running.eq(busy & ~abort), self.finished.eq(self.done & running)]
        m.d.comb += [self.engine_pc[e].eq(eng_pc[e]) for e in range(E)]

        # --- per context views ----------------------------------------------------------------
        # Decoded once per engine (an expression is written out again at every use).
        ctx_bit = [Signal(C, name=f"eng{e}_ctx_bit") for e in range(E)]
        slot_bit = [Signal(W, name=f"eng{e}_slot_bit") for e in range(E)]
        faulting = Signal(E)
        m.d.comb += [ctx_bit[e].eq(Const(1, C) << eng_ctx[e]) for e in range(E)]
        m.d.comb += [slot_bit[e].eq(Const(1, W) << eng_slot[e]) for e in range(E)]
        m.d.comb += faulting.eq(self.finished & Cat(self.done_fault[e] != 0 for e in range(E)))
        # Which engine's µTOp comes first in program order (the same for every context).
        older = pairwise_order(m, eng_seq, "eng_seq")
        for c in range(C):
            of_c = Signal(E, name=f"c{c}_engines")
            m.d.comb += of_c.eq(Cat(ctx_bit[e][c] for e in range(E)))
            finishing, preempted = (
                or_tree(Mux(event[e] & of_c[e], slot_bit[e], 0) for e in range(E))
                for event in (self.finished, self.preempt))
            m.d.comb += [
                self.ctx_busy[c].eq(busy & of_c),
                self.ctx_running[c].eq(running & of_c),
                self.ctx_aborting[c].eq((abort & of_c).any()),
                self.ctx_finishing[c].eq(finishing),
                self.ctx_preempted_slots[c].eq(preempted),
                self.ctx_preempted_engines[c].eq(self.preempt & of_c),
            ]
            # Several µTOps may fault in one cycle: keep the oldest (lowest sequence number;
            # the lowest-numbered engine on a tie). The sequence numbers are compared pairwise
            # beside the retirements (they are registers), so a fault passes one AND tree.
            mine = Signal(E, name=f"c{c}_faulting")
            m.d.comb += mine.eq(faulting & of_c)
            wins = Signal(E, name=f"c{c}_fault_from")
            m.d.comb += wins.eq(first_in_order(mine, older))
            m.d.comb += Cat(self.ctx_fault[c], self.ctx_fault_seq[c], self.ctx_fault_pc[c]).eq(
                one_hot_select(wins, [Cat(self.done_fault[e], eng_seq[e], eng_pc[e])
                                      for e in range(E)]))
            hung = Signal(E, name=f"c{c}_hung")
            m.d.comb += [hung.eq(self.hung & of_c), self.ctx_hung[c].eq(hung.any())]
            for e in reversed(range(E)):
                with m.If(hung[e]):
                    m.d.comb += self.ctx_hung_pc[c].eq(eng_pc[e])

        # --- preemption: the engine is held in reset, its µTOp issued again later -------------
        for e in range(E):
            with m.If(self.preempt[e]):
                m.d.sync += [abort[e].eq(1), abort_left[e].eq(self.flush_cycles[e])]

        # --- issue --------------------------------------------------------------------------------
        issued_mask = 0
        for c in range(C):
            issue = self.issue[c]
            for e in range(E):
                hit = issue.valid & issue.engines[e]
                issued_mask = issued_mask | (hit << e)
                with m.If(hit):
                    m.d.sync += [eng_ctx[e].eq(c), eng_slot[e].eq(issue.slot),
                                 eng_seq[e].eq(issue.seq), eng_pc[e].eq(issue.pc),
                                 borrowed[e].eq(issue.borrowed[e])]
        m.d.sync += busy.eq((busy & ~self.finished & ~abort_end) | issued_mask)
        for e in range(E):
            with m.If(abort[e]):
                m.d.sync += abort_left[e].eq(abort_left[e] - 1)
                with m.If(abort_left[e] == 1):
                    m.d.sync += abort[e].eq(0)

        # --- watchdog kill: abort every engine running one of the context's µTOps -----------------
        for c in range(C):
            with m.If(self.kill[c]):
                for e in range(E):
                    with m.If(self.ctx_running[c][e] & ~self.finished[e]):
                        m.d.sync += [abort[e].eq(1), abort_left[e].eq(self.flush_cycles[e])]

        # --- occupancy counters ---------------------------------------------------------------------
        for e in range(E):
            m.d.sync += self.engine_busy[e].eq(self.engine_busy[e] + running[e])
            for c in range(C):
                with m.If(self.ctx_running[c][e]):
                    m.d.sync += self.engine_busy_by_ctx[e][c].eq(self.engine_busy_by_ctx[e][c] + 1)
        return m
