"""One context's fetch and dependency window: µTOps in flight, readiness, faults, status, counters."""

from amaranth import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import HEADER, Engine, Fault
from ..arbitration import one_hot_index, one_hot_select, round_robin
from ..ports import body_length_shape, prog_addr_shape
from isa.regmap import Status
from .signatures import (COUNTERS, OP_ID_BITS, CandidateLayout, ContextConfigLayout,
                         ContextStateLayout, engine_types, seq_shape)

__all__ = ["ContextWindow"]


class ContextWindow(wiring.Component):
    """The fetch unit and the ``dep_window`` window slots of one context.

    The program counter walks the program header by header, reading the instruction
    buffer the prefetcher fills: a µTOp is taken once its header and whole body are in the
    buffer (``visible``); a bad header or a µTOp past the program's end faults BAD_HEADER /
    FETCH_OOB. The buffer keeps everything from ``keep`` on (the oldest µTOp in the window,
    else the program counter) for the body streamer. Each µTOp takes the next
    window slot, with a *wait mask* of the live slots it depends on, cleared as they
    retire. Slots are freed in order. A slot is *ready* when its wait mask is empty; the
    oldest ready slot of each engine type is that type's candidate (none while the body
    streamer still hands over the previous µTOp's body).

    Faults are kept precise: the oldest faulting µTOp in program order is reported, µTOps
    younger than it are no longer eligible, and the context reads FAULTED (or DONE) once
    nothing it issued is pending. A watchdog ``kill`` faults it WATCHDOG at once and it
    reads FAULTED once none of its engines is ``aborting`` any more.
    """

    def __init__(self, config):
        self.config = config
        W, E = config.dep_window, len(engine_types(config))
        pc = prog_addr_shape(config)
        super().__init__({
            "settings": In(ContextConfigLayout(config)),
            "start": In(1),
            "config_fault": In(1),
            # The instruction buffer is read with a registered port: ``fetch_addr`` is the
            # word the program counter moves to at this clock edge, ``fetch_word`` the word
            # at the program counter (valid when the program counter is below ``visible``).
            "fetch_addr": Out(pc),
            "fetch_word": In(64),
            "visible": In(pc),
            "fetch_request": In(1),    # the prefetcher sends HBM a line request this cycle
            "keep": Out(pc),
            "fetching": Out(1),        # the context may fetch more of its program
            # Retirements: bit s, the µTOp in slot s finished on an engine this cycle; the
            # oldest fault among them.
            "finishing": In(W),
            "retire_fault": In(Fault),
            "retire_fault_seq": In(seq_shape),
            "retire_fault_pc": In(pc),
            # Issue of the µTOp in slot ``issue_slot`` (the candidate of ``issue_type``) this
            # cycle, and what the engine needs of it: the header's address, the body's first
            # word and its length (read from the candidate, which is known early).
            "issue": In(1),
            "issue_slot": In(range(W)),
            "issue_type": In(Engine),
            "issue_seq": Out(seq_shape),
            "issue_pc": Out(pc),
            "issue_body": Out(pc),
            "issue_length": Out(body_length_shape(config)),
            "preempted_slots": In(W),
            "streaming": In(1),
            "engines_running": In(E),      # bit e: engine e runs one of this context's µTOps
            "hung": In(1),                 # one of them trips the engine watchdog ...
            "hung_pc": In(pc),             # ... running the µTOp whose header is here
            "stall_expired": In(1),
            "aborting": In(1),             # one of its engines is held in reset
            "gang_op": In(OP_ID_BITS),
            "state": Out(ContextStateLayout(config)),
            "running": Out(1),
            "candidates": Out(CandidateLayout(config)).array(len(Engine)),
            "ready_types": Out(len(Engine)),   # bit t: a ready µTOp for engine type t
            "ready_any": Out(1),
            "me_op": Out(OP_ID_BITS),           # operator of the ME candidate
            "me_op_ended": Out(1),              # ... whose eoo µTOp has already retired
            "oldest_me_op": Out(OP_ID_BITS),    # operator of the oldest unfinished ME µTOp
            "gang_eoo_retiring": Out(1),        # the eoo µTOp of operator gang_op retires
            "me_used": Out(32),                 # ME engine-cycles since START
            "kill": Out(1),
            "activity": Out(1),                 # fetches, streams, issues or retires
            "retiring_any": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        W = cfg.dep_window
        types = engine_types(cfg)
        groups = {t: [e for e, et in enumerate(types) if et == t] for t in Engine}
        pc_shape = prog_addr_shape(cfg)
        settings = self.settings

        status = Signal(Status)
        running = status == Status.RUNNING
        pc = Signal(pc_shape)
        fetch_done = Signal()
        seq_next = Signal(seq_shape)
        head = Signal(range(W))
        count = Signal(range(W + 1))
        valid = Signal(W)
        issued = Signal(W)
        retired = Signal(W)
        etype = [Signal(Engine, name=f"s{s}_type") for s in range(W)]
        wait = [Signal(W, name=f"s{s}_wait") for s in range(W)]
        eoo = Signal(W)
        restartable = Signal(W)
        hdr_pc = [Signal(pc_shape, name=f"s{s}_pc") for s in range(W)]
        length = [Signal(body_length_shape(cfg), name=f"s{s}_len") for s in range(W)]
        seq = [Signal(seq_shape, name=f"s{s}_seq") for s in range(W)]
        op_next = Signal(OP_ID_BITS)
        op_id = [Signal(OP_ID_BITS, name=f"s{s}_op") for s in range(W)]
        fault_valid = Signal()
        fault_seq = Signal(seq_shape)
        fault_code = Signal(Fault)
        fault_pc = Signal(pc_shape)
        counters = {name: Signal(32, name=name) for name in COUNTERS}
        me_used = self.me_used
        killed = Signal()          # faulted by a watchdog: engines abort
        m.d.comb += self.running.eq(running)

        # --- retirements ------------------------------------------------------------------
        retiring = Signal(W)
        m.d.comb += [retiring.eq(self.finishing & running.replicate(W)),
                     self.retiring_any.eq(retiring.any())]

        # --- fetch --------------------------------------------------------------------------
        header_fields = {f.name: f for f in HEADER.fields}
        pc_next = Signal(pc_shape)
        m.d.comb += [pc_next.eq(pc), self.fetch_addr.eq(pc_next)]
        m.d.sync += pc.eq(pc_next)
        word = self.fetch_word
        hdr_length = word[header_fields["length"].lsb:][:8]
        deps = word[header_fields["deps"].lsb:][:header_fields["deps"].width]
        magic = word[:8]
        engine_of_magic = Signal(Engine, name="hdr_type")
        good_magic = Signal(name="hdr_magic_ok")
        for engine, value in HEADER.magic.items():
            with m.If(magic == value):
                m.d.comb += [engine_of_magic.eq(engine), good_magic.eq(1)]
        bad_header = (~good_magic | ((word & Const(HEADER.reserved_mask, 64)) != 0)
                      | ((deps >> W) != 0) | (hdr_length > cfg.max_body))
        tail = Signal(range(W))
        m.d.comb += tail.eq(Mux(head + count >= W, head + count - W, head + count))
        m.d.comb += self.fetching.eq(running & ~fetch_done & ~fault_valid)
        can_fetch = self.fetching & (count < W)
        allocate = Signal()
        fetch_fault = Signal(Fault)
        with m.If(can_fetch):
            with m.If(pc >= settings.prog_len):
                m.d.comb += fetch_fault.eq(Fault.FETCH_OOB)
            with m.Elif(pc < self.visible):           # the header has arrived
                with m.If(bad_header):
                    m.d.comb += fetch_fault.eq(Fault.BAD_HEADER)
                with m.Elif(pc + 1 + hdr_length > settings.prog_len):
                    m.d.comb += fetch_fault.eq(Fault.FETCH_OOB)
                with m.Elif(pc + 1 + hdr_length <= self.visible):     # ... and its body
                    m.d.comb += allocate.eq(1)
        # Translate the dependency bits (distances) into a mask of live slots.
        live = valid & ~retired & ~retiring
        wait_new_terms = 0
        for j in range(W):
            slot = Signal(range(W), name=f"dep{j}_slot")
            m.d.comb += slot.eq(Mux(tail >= j + 1, tail - 1 - j, tail + W - 1 - j))
            wait_new_terms = wait_new_terms | Mux(deps[j] & live.bit_select(slot, 1),
                                                  Const(1, W) << slot, 0)
        tail_bit = Signal(W)
        wait_new = Signal(W)
        m.d.comb += [tail_bit.eq(Const(1, W) << tail), wait_new.eq(wait_new_terms)]
        with m.If(allocate):
            for s in range(W):
                with m.If(tail == s):
                    m.d.sync += [etype[s].eq(engine_of_magic), hdr_pc[s].eq(pc),
                                 length[s].eq(hdr_length), seq[s].eq(seq_next),
                                 op_id[s].eq(op_next)]
            with m.If(word[header_fields["eoo"].lsb]):
                m.d.sync += op_next.eq(op_next + 1)
            is_restartable = word[header_fields["restartable"].lsb]
            m.d.sync += [eoo.eq(Mux(word[header_fields["eoo"].lsb], eoo | tail_bit,
                                    eoo & ~tail_bit)),
                         restartable.eq(Mux(is_restartable, restartable | tail_bit,
                                            restartable & ~tail_bit)),
                         seq_next.eq(seq_next + 1)]
            m.d.comb += pc_next.eq(pc + 1 + hdr_length)
            with m.If(word[header_fields["eop"].lsb]):
                m.d.sync += fetch_done.eq(1)

        # --- readiness and candidates ----------------------------------------------------------
        # Eligible: a live slot older than the recorded fault (all of them while there is
        # none). Kept as a register, set where a fault is recorded below, so that readiness
        # starts from registers: for every valid slot of a running context it equals
        # ~fault_valid | (seq[s] < fault_seq) (fetch allocates only while there is no fault).
        eligible = Signal(W, init=(1 << W) - 1)
        ready = Signal(W)
        # A retirement clears wait masks at the clock edge: its dependants are ready from
        # the next cycle (a register between retire and issue).
        m.d.comb += ready.eq(Cat(wait[s] == 0 for s in range(W))
                             & valid & ~issued & eligible & running.replicate(W))
        m.d.comb += self.ready_any.eq(ready.any())
        # Per slot, what issue needs of a µTOp: sequence number, header and body addresses,
        # body length.
        utops = [Cat(seq[s], hdr_pc[s], (hdr_pc[s] + 1)[:len(pc)], length[s]) for s in range(W)]
        issue_fields = []
        for t in Engine:
            of_type = Signal(W, name=f"ready_{t.name}")
            m.d.comb += of_type.eq(ready & Cat(etype[s] == t for s in range(W)))
            pick = round_robin(m, of_type, head, W, f"cand_{t.name}", tree=True)
            candidate = self.candidates[t]
            m.d.comb += [candidate.valid.eq(of_type.any() & ~self.streaming),
                         candidate.slot.eq(one_hot_index(pick)),
                         candidate.age.eq(Mux(candidate.slot >= head, candidate.slot - head,
                                              candidate.slot + W - head)),
                         candidate.restartable.eq(restartable.bit_select(candidate.slot, 1)),
                         self.ready_types[t].eq(of_type.any())]
            # What issue needs of the candidate (beside arbitration, not after it).
            chosen = Signal(len(utops[0]), name=f"cand_{t.name}_utop")
            m.d.comb += chosen.eq(Array(utops)[candidate.slot])
            issue_fields.append(chosen)
            if t == Engine.ME:
                m.d.comb += self.me_op.eq(Mux(pick.any(), one_hot_select(pick, op_id), op_id[0]))
                # The candidate's operator already ended: its eoo µTOp was fetched and has
                # retired (ME µTOps of an operator may retire out of order).
                eoo_pending = Cat(valid[s] & ~retired[s] & ~retiring[s] & eoo[s]
                                  & (op_id[s] == self.me_op) for s in range(W)).any()
                m.d.comb += self.me_op_ended.eq((op_next != self.me_op) & ~eoo_pending)
        # Operators gang in program order (v10): the oldest unfinished ME operator.
        unfinished_me = Signal(W)
        m.d.comb += unfinished_me.eq(valid & ~retired & Cat(etype[s] == Engine.ME for s in range(W)))
        oldest = round_robin(m, unfinished_me, head, W, "oldest_me", tree=True)
        m.d.comb += self.oldest_me_op.eq(one_hot_select(oldest, op_id))
        m.d.comb += self.gang_eoo_retiring.eq(
            (retiring & eoo & Cat(op_id[s] == self.gang_op for s in range(W))).any())

        # --- issue ------------------------------------------------------------------------------
        issue_bit = Signal(W)
        m.d.comb += issue_bit.eq(Mux(self.issue, Const(1, W) << self.issue_slot, 0))
        issued_utop = Signal.like(issue_fields[0])
        for t, fields in zip(Engine, issue_fields):
            with m.If(self.issue_type == t):
                m.d.comb += issued_utop.eq(fields)
        issue_length = Signal.like(self.issue_length)
        m.d.comb += [Cat(self.issue_seq, self.issue_pc, self.issue_body, issue_length)
                     .eq(issued_utop),
                     # (Without an issue, the length of slot 0: the engines' command payload.)
                     self.issue_length.eq(Mux(self.issue, issue_length, length[0]))]
        with m.If(self.issue):
            m.d.sync += counters["issued"].eq(counters["issued"] + 1)
        m.d.comb += self.activity.eq(allocate | (fetch_fault != 0) | self.streaming | self.issue
                                     | retiring.any())

        # --- retirement, freeing, faults, completion, counters ------------------------------
        # Slot bookkeeping: one assignment per register, so nothing overrides anything.
        alloc_bit = Mux(allocate, tail_bit, 0)
        for s in range(W):
            m.d.sync += wait[s].eq(Mux(alloc_bit[s], wait_new, wait[s] & ~retiring))
        retired_next = retired | retiring
        head_bit = Signal(W)
        m.d.comb += head_bit.eq(Const(1, W) << head)
        free_head = valid.bit_select(head, 1) & retired_next.bit_select(head, 1)
        free_bit = Mux(free_head, head_bit, 0)
        m.d.sync += [valid.eq((valid & ~free_bit) | alloc_bit),
                     retired.eq(retired_next & ~free_bit & ~alloc_bit),
                     issued.eq((issued | issue_bit) & ~alloc_bit & ~free_bit
                               & ~self.preempted_slots)]
        with m.If(free_head):
            m.d.sync += [head.eq(Mux(head == W - 1, 0, head + 1)),
                         count.eq(count + allocate - 1)]
        with m.Else():
            m.d.sync += count.eq(count + allocate)
        n_retiring = 0
        for s in range(W):
            n_retiring = n_retiring + retiring[s]
        m.d.sync += [counters["retired"].eq(counters["retired"] + n_retiring),
                     counters["preempted"].eq(counters["preempted"]
                                              + self.preempted_slots.any())]

        # Faults: keep the oldest in program order.
        new_fault = Signal(Fault)
        new_seq = Signal(seq_shape)
        new_pc = Signal(pc_shape)
        with m.If(self.retire_fault != 0):
            m.d.comb += [new_fault.eq(self.retire_fault), new_seq.eq(self.retire_fault_seq),
                         new_pc.eq(self.retire_fault_pc)]
        with m.Elif(fetch_fault != 0):
            m.d.comb += [new_fault.eq(fetch_fault), new_seq.eq(seq_next), new_pc.eq(pc)]
        fault_now = Signal()
        m.d.comb += fault_now.eq(running & (new_fault != 0)
                                 & (~fault_valid | (new_seq < fault_seq)))
        with m.If(fault_now):
            m.d.sync += [fault_valid.eq(1), fault_seq.eq(new_seq),
                         fault_code.eq(new_fault), fault_pc.eq(new_pc),
                         # A µTOp allocated now is younger than any fault (fetch stops at one).
                         eligible.eq(Cat(seq[s] < new_seq for s in range(W)) & ~alloc_bit)]
        with m.If(fetch_fault != 0):
            m.d.sync += fetch_done.eq(1)

        pending = (valid & ~retired_next & (issued | eligible)).any() | self.streaming
        with m.If(running & (fetch_done | fault_valid) & ~pending & ~allocate
                  & (fetch_fault == 0)):
            # A fault taken in this very cycle (say by the eop µTOp) counts.
            m.d.sync += status.eq(Mux(fault_valid | fault_now, Status.FAULTED, Status.DONE))

        # Watchdog kill: fault with WATCHDOG at once, stop fetch, issue and streaming; every
        # engine running one of this context's µTOps is held in reset, and the context reads
        # FAULTED only once they are all released (nothing of it is written after).
        oldest_pc = Signal(pc_shape)
        m.d.comb += [oldest_pc.eq(Mux(count != 0, Array(hdr_pc)[head], pc)),
                     self.keep.eq(oldest_pc)]
        hung_pc = Signal(pc_shape)
        m.d.comb += hung_pc.eq(Mux(self.hung, self.hung_pc, oldest_pc))
        m.d.comb += self.kill.eq(running & ~killed & (self.hung | self.stall_expired))
        with m.If(self.kill):
            m.d.sync += [killed.eq(1), fault_valid.eq(1), fault_seq.eq(0), eligible.eq(0),
                         fault_code.eq(Fault.WATCHDOG), fault_pc.eq(hung_pc),
                         fetch_done.eq(1),
                         status.eq(Status.RUNNING)]     # not DONE, even this cycle
        with m.If(running & killed & ~self.aborting):
            m.d.sync += status.eq(Status.FAULTED)

        # Counters.
        own = 0
        harvest = 0
        dma = 0
        me_cycles = 0
        for e, t in enumerate(types):
            mine = self.engines_running[e]
            if t == Engine.DMA:
                dma = dma + mine
                continue
            i = groups[t].index(e)
            owned = settings.me_mask[i] if t == Engine.ME else settings.ve_mask[i]
            own = own + (mine & owned)
            harvest = harvest + (mine & ~owned)
            if t == Engine.ME:
                me_cycles = me_cycles + mine
        unissued = (valid & ~issued & eligible).any()
        with m.If(running):
            m.d.sync += [
                counters["cycles"].eq(counters["cycles"] + 1),
                counters["own_cycles"].eq(counters["own_cycles"] + own),
                counters["harvest_cycles"].eq(counters["harvest_cycles"] + harvest),
                counters["dma_cycles"].eq(counters["dma_cycles"] + dma),
                counters["fetched"].eq(counters["fetched"] + self.fetch_request),
                counters["dep_wait"].eq(counters["dep_wait"] + (unissued & ~ready.any())),
                counters["engine_wait"].eq(counters["engine_wait"]
                                           + (ready.any() & ~self.issue)),
                me_used.eq(me_used + me_cycles),
            ]

        # Start, or a refused start (wins over everything above).
        with m.If(self.start | self.config_fault):
            m.d.comb += pc_next.eq(0)
            m.d.sync += [status.eq(Status.RUNNING), fetch_done.eq(0),
                         seq_next.eq(0), head.eq(0), count.eq(0), valid.eq(0),
                         issued.eq(0), retired.eq(0), fault_valid.eq(0), eligible.eq(~0),
                         fault_code.eq(0), fault_pc.eq(0),
                         me_used.eq(0), killed.eq(0), op_next.eq(0)]
            m.d.sync += [counter.eq(0) for counter in counters.values()]
        with m.If(self.config_fault):
            m.d.sync += [status.eq(Status.FAULTED), fault_valid.eq(1),
                         fault_code.eq(Fault.CONFIG)]

        state = self.state
        m.d.comb += [state.status.eq(status), state.fault.eq(fault_code),
                     state.fault_pc.eq(fault_pc)]
        m.d.comb += [getattr(state, name).eq(counters[name]) for name in COUNTERS]
        return m
