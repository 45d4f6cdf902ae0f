"""µTOp dispatcher: per-context fetch, dependency windows, and issue to engines under a sharing policy."""

from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import HEADER, Engine, Fault
from .ports import CommandLayout, DoneLayout
from .regmap import Policy, Status
from .scratchpad import round_robin

__all__ = ["Dispatcher", "EngineLinkSignature", "ContextConfigLayout", "ContextStateLayout",
           "engine_types"]

_COUNTERS = ("cycles", "issued", "retired", "own_cycles", "harvest_cycles", "dep_wait",
             "engine_wait", "dma_cycles", "preempted")


def engine_types(config):
    """Engine numbering: MEs, then VEs, then DMA engines."""
    return [Engine.ME] * config.n_me + [Engine.VE] * config.n_ve + [Engine.DMA] * config.n_dma


class EngineLinkSignature(wiring.Signature):
    """The dispatcher's link to one engine: a µTOp command, its body words, and its retirement."""

    def __init__(self, config):
        super().__init__({
            "cmd": Out(stream.Signature(CommandLayout(config))),
            "instr": Out(stream.Signature(unsigned(64))),
            "done": In(stream.Signature(DoneLayout(config))),
        })


class ContextConfigLayout(data.StructLayout):
    def __init__(self, config):
        super().__init__({
            "prog_len": unsigned(17),
            "spad_base": unsigned(17), "spad_size": unsigned(17),
            "hbm_base": unsigned(32), "hbm_size": unsigned(33),
            "me_mask": unsigned(config.n_me), "ve_mask": unsigned(config.n_ve),
            "priority": unsigned(4),
        })


class ContextStateLayout(data.StructLayout):
    def __init__(self, config):
        super().__init__({
            "status": Status, "fault": Fault, "fault_pc": unsigned(17),
            **{name: unsigned(32) for name in _COUNTERS},
        })


def _first(m, value, name):
    """One-hot of the lowest set bit (0 if none)."""
    lowest = Signal(len(value), name=name)
    m.d.comb += lowest.eq(value & (~value + 1))
    return lowest


def _index(one_hot):
    """Index of the set bit of a one-hot value (0 if none)."""
    result = 0
    for i in range(len(one_hot)):
        result = result | Mux(one_hot[i], i, 0)
    return result


class Dispatcher(wiring.Component):
    """Fetches µTOps of up to ``n_ctx`` contexts and issues them to engines.

    Per context: a program counter walks the instruction memory header by header (a bad
    header or a µTOp past the program's end faults); each µTOp takes one of ``dep_window``
    window slots, with a *wait mask* of the slots it depends on, cleared as they retire.
    Slots are freed in order, so a µTOp enters only when the one ``dep_window`` earlier has
    retired. A slot is *ready* when its wait mask is empty; the oldest ready slot of each
    engine type is a candidate, and a context issues at most one µTOp per cycle, then
    streams its body from the instruction memory to the engine.

    Every cycle, contexts are visited in rotating order; each takes the oldest candidate
    whose engine type has a free engine it may use under ``policy`` (see regmap.Policy).

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
        #: Instruction memories (one per context), written by the host interface.
        self.imems = [memory.Memory(shape=unsigned(64), depth=config.imem_words, init=[])
                      for _ in range(config.n_ctx)]
        self._imem_writes = [imem.write_port() for imem in self.imems]
        self._fetch_ports = [imem.read_port(domain="comb") for imem in self.imems]
        self._body_ports = [imem.read_port(domain="comb") for imem in self.imems]
        super().__init__({
            "engines": Out(EngineLinkSignature(config)).array(n_engines),
            "ctx_config": In(ContextConfigLayout(config)).array(config.n_ctx),
            "ctx_state": Out(ContextStateLayout(config)).array(config.n_ctx),
            "policy": In(Policy),
            "time_slice": In(32),
            "start": In(config.n_ctx),
            "config_fault": In(config.n_ctx),
            "imem_we": In(1),
            "imem_ctx": In(range(config.n_ctx)),
            "imem_addr": In(range(config.imem_words)),
            "imem_data": In(64),
            "engine_busy_by_ctx": Out(32).array(n_engines, config.n_ctx),
            "engine_busy": Out(32).array(n_engines),
            # Engine e did something this cycle (see the watchdog below); while engine_abort[e]
            # is high the engine is held in reset.
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
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        C, W = cfg.n_ctx, cfg.dep_window
        types = self.types
        E = len(types)
        groups = {t: [e for e, et in enumerate(types) if et == t] for t in Engine}
        ctx_shape = range(C)
        policy = self.policy

        for c, imem in enumerate(self.imems):
            m.submodules[f"imem{c}"] = imem
            write = self._imem_writes[c]
            m.d.comb += [write.addr.eq(self.imem_addr), write.data.eq(self.imem_data),
                         write.en.eq(self.imem_we & (self.imem_ctx == c))]

        # --- engine bookkeeping -------------------------------------------------------------
        eng_busy = Signal(E)
        eng_ctx = [Signal(ctx_shape, name=f"eng{e}_ctx") for e in range(E)]
        eng_slot = [Signal(range(W), name=f"eng{e}_slot") for e in range(E)]
        # The running µTOp's sequence number and header address (for faults and the watchdog).
        eng_seq = [Signal(32, name=f"eng{e}_seq") for e in range(E)]
        eng_pc = [Signal(17, name=f"eng{e}_pc") for e in range(E)]
        done = [link.done for link in self.engines]
        m.d.comb += [d.ready.eq(1) for d in done]
        eng_done = Cat(d.valid for d in done)
        # Engines held in reset after their context was killed by the watchdog.
        eng_abort = Signal(E)
        abort_left = [Signal(range(self.flush_cycles[e] + 1), name=f"eng{e}_abort_left")
                      for e in range(E)]
        # The engine runs a µTOp of a context that does not own it, borrowed from its owner
        # under harvest: the owner may take it back (preempt) at any time.
        eng_borrowed = Signal(E)
        abort_end = Cat(eng_abort[e] & (abort_left[e] == 1) for e in range(E))
        eng_running = Signal(E)     # busy with a µTOp and not being aborted
        m.d.comb += [eng_running.eq(eng_busy & ~eng_abort)]
        m.d.comb += [self.engine_abort[e].eq(eng_abort[e]) for e in range(E)]
        m.d.comb += [self.engine_background[e].eq(eng_running[e] & eng_borrowed[e])
                     for e in range(E)]

        # --- per-context state ----------------------------------------------------------------
        ctxs = []
        for c in range(C):
            x = SimpleNamespace()
            x.cfg = self.ctx_config[c]
            x.state = self.ctx_state[c]
            x.status = Signal(Status, name=f"c{c}_status")
            x.running = x.status == Status.RUNNING
            x.pc = Signal(17, name=f"c{c}_pc")
            x.fetch_done = Signal(name=f"c{c}_fetch_done")
            x.seq_next = Signal(32, name=f"c{c}_seq_next")
            x.head = Signal(range(W), name=f"c{c}_head")
            x.count = Signal(range(W + 1), name=f"c{c}_count")
            x.valid = Signal(W, name=f"c{c}_valid")
            x.issued = Signal(W, name=f"c{c}_issued")
            x.retired = Signal(W, name=f"c{c}_retired")
            x.etype = [Signal(Engine, name=f"c{c}_s{s}_type") for s in range(W)]
            x.wait = [Signal(W, name=f"c{c}_s{s}_wait") for s in range(W)]
            x.eoo = Signal(W, name=f"c{c}_eoo")
            x.restartable = Signal(W, name=f"c{c}_restartable")
            x.hdr_pc = [Signal(17, name=f"c{c}_s{s}_pc") for s in range(W)]
            x.length = [Signal(8, name=f"c{c}_s{s}_len") for s in range(W)]
            x.seq = [Signal(32, name=f"c{c}_s{s}_seq") for s in range(W)]
            # Operator number: µTOps up to and including an eoo µTOp form one operator.
            x.op_next = Signal(8, name=f"c{c}_op_next")
            x.op_id = [Signal(8, name=f"c{c}_s{s}_op") for s in range(W)]
            x.fault_valid = Signal(name=f"c{c}_fault_valid")
            x.fault_seq = Signal(32, name=f"c{c}_fault_seq")
            x.fault_code = Signal(Fault, name=f"c{c}_fault_code")
            x.fault_pc = Signal(17, name=f"c{c}_fault_pc")
            x.st_active = Signal(name=f"c{c}_st_active")
            x.st_engine = Signal(range(E), name=f"c{c}_st_engine")
            x.st_addr = Signal(17, name=f"c{c}_st_addr")
            x.st_left = Signal(8, name=f"c{c}_st_left")
            x.counters = {name: Signal(32, name=f"c{c}_{name}") for name in _COUNTERS}
            x.me_used = Signal(32, name=f"c{c}_me_used")
            x.tokens = Signal(16, name=f"c{c}_tokens")
            x.killed = Signal(name=f"c{c}_killed")      # faulted by a watchdog: engines abort
            x.start = self.start[c]
            ctxs.append(x)

        # Retirements this cycle, per context and slot.
        for c, x in enumerate(ctxs):
            x.retiring = Signal(W, name=f"c{c}_retiring")
            x.retire_fault = Signal(Fault, name=f"c{c}_retire_fault")
            x.retire_fault_seq = Signal(32, name=f"c{c}_retire_fault_seq")
            x.retire_fault_pc = Signal(17, name=f"c{c}_retire_fault_pc")
            terms = []
            for s in range(W):
                hit = 0
                for e in range(E):
                    hit = hit | (eng_done[e] & eng_running[e] & (eng_ctx[e] == c)
                                 & (eng_slot[e] == s))
                terms.append(hit)
            # Several µTOps may fault in one cycle: keep the oldest (lowest sequence number).
            # Each step is a signal, so the chain stays linear in the number of engines.
            found, oldest = Const(0, 1), Const(0, 32)
            for e in range(E):
                faulting = (eng_done[e] & eng_running[e] & (eng_ctx[e] == c)
                            & (done[e].payload.fault != 0))
                better = Signal(name=f"c{c}_fault_from{e}")
                m.d.comb += better.eq(faulting & (~found | (eng_seq[e] < oldest)))
                with m.If(better):
                    m.d.comb += [x.retire_fault.eq(done[e].payload.fault),
                                 x.retire_fault_seq.eq(eng_seq[e]),
                                 x.retire_fault_pc.eq(eng_pc[e])]
                step_oldest = Signal(32, name=f"c{c}_fault_oldest{e}")
                step_found = Signal(name=f"c{c}_fault_found{e}")
                m.d.comb += [step_oldest.eq(Mux(better, eng_seq[e], oldest)),
                             step_found.eq(found | faulting)]
                oldest, found = step_oldest, step_found
            m.d.comb += [x.retiring.eq(Cat(terms) & x.running.replicate(W)),
                         self.retiring[c].eq(x.retiring.any())]

        # --- fetch --------------------------------------------------------------------------
        header_fields = {f.name: f for f in HEADER.fields}
        for c, x in enumerate(ctxs):
            port = self._fetch_ports[c]
            m.d.comb += port.addr.eq(x.pc)
            word = port.data
            length = word[header_fields["length"].lsb:][:8]
            deps = word[header_fields["deps"].lsb:][:header_fields["deps"].width]
            magic = word[:8]
            engine_of_magic = Signal(Engine, name=f"c{c}_hdr_type")
            good_magic = Signal(name=f"c{c}_hdr_magic_ok")
            for engine, value in HEADER.magic.items():
                with m.If(magic == value):
                    m.d.comb += [engine_of_magic.eq(engine), good_magic.eq(1)]
            bad_header = (~good_magic | ((word & Const(HEADER.reserved_mask, 64)) != 0)
                          | ((deps >> W) != 0) | (length > cfg.max_body))
            tail = Signal(range(W), name=f"c{c}_tail")
            m.d.comb += tail.eq(Mux(x.head + x.count >= W, x.head + x.count - W, x.head + x.count))
            can_fetch = x.running & ~x.fetch_done & ~x.fault_valid & (x.count < W)
            x.allocate = Signal(name=f"c{c}_allocate")
            x.fetch_fault = Signal(Fault, name=f"c{c}_fetch_fault")
            with m.If(can_fetch):
                with m.If(x.pc >= x.cfg.prog_len):
                    m.d.comb += x.fetch_fault.eq(Fault.FETCH_OOB)
                with m.Elif(bad_header):
                    m.d.comb += x.fetch_fault.eq(Fault.BAD_HEADER)
                with m.Elif(x.pc + 1 + length > x.cfg.prog_len):
                    m.d.comb += x.fetch_fault.eq(Fault.FETCH_OOB)
                with m.Else():
                    m.d.comb += x.allocate.eq(1)
            # Translate the dependency bits (distances) into a mask of live slots.
            live = x.valid & ~x.retired & ~x.retiring
            wait_new = 0
            for j in range(W):
                slot = Signal(range(W), name=f"c{c}_dep{j}_slot")
                m.d.comb += slot.eq(Mux(tail >= j + 1, tail - 1 - j, tail + W - 1 - j))
                wait_new = wait_new | Mux(deps[j] & live.bit_select(slot, 1), Const(1, W) << slot, 0)
            x.tail = tail
            x.tail_bit = Signal(W, name=f"c{c}_tail_bit")
            x.wait_new = Signal(W, name=f"c{c}_wait_new")
            m.d.comb += [x.tail_bit.eq(Const(1, W) << tail), x.wait_new.eq(wait_new)]
            with m.If(x.allocate):
                for s in range(W):
                    with m.If(tail == s):
                        m.d.sync += [x.etype[s].eq(engine_of_magic), x.hdr_pc[s].eq(x.pc),
                                     x.length[s].eq(length), x.seq[s].eq(x.seq_next),
                                     x.op_id[s].eq(x.op_next)]
                with m.If(word[header_fields["eoo"].lsb]):
                    m.d.sync += x.op_next.eq(x.op_next + 1)
                restartable = word[header_fields["restartable"].lsb]
                m.d.sync += [x.eoo.eq(Mux(word[header_fields["eoo"].lsb], x.eoo | x.tail_bit,
                                          x.eoo & ~x.tail_bit)),
                             x.restartable.eq(Mux(restartable, x.restartable | x.tail_bit,
                                                  x.restartable & ~x.tail_bit)),
                             x.pc.eq(x.pc + 1 + length), x.seq_next.eq(x.seq_next + 1)]
                with m.If(word[header_fields["eop"].lsb]):
                    m.d.sync += x.fetch_done.eq(1)

        # --- readiness and candidates ----------------------------------------------------------
        for c, x in enumerate(ctxs):
            eligible = Signal(W, name=f"c{c}_eligible")
            m.d.comb += eligible.eq(Cat(~x.fault_valid | (x.seq[s] < x.fault_seq) for s in range(W)))
            x.eligible = eligible
            ready = Signal(W, name=f"c{c}_ready")
            m.d.comb += ready.eq(Cat((x.wait[s] & ~x.retiring) == 0 for s in range(W))
                                 & x.valid & ~x.issued & eligible & x.running.replicate(W))
            x.ready = ready
            m.d.comb += self.ready_any[c].eq(ready.any())
            x.cand = {}
            x.cand_restartable = {}
            for t in Engine:
                of_type = Signal(W, name=f"c{c}_ready_{t.name}")
                m.d.comb += of_type.eq(ready & Cat(x.etype[s] == t for s in range(W)))
                pick = round_robin(m, of_type, x.head, W, f"c{c}_cand_{t.name}")
                age = Signal(range(W), name=f"c{c}_cand_{t.name}_age")
                slot = Signal(range(W), name=f"c{c}_cand_{t.name}_slot")
                m.d.comb += [slot.eq(_index(pick)),
                             age.eq(Mux(slot >= x.head, slot - x.head, slot + W - x.head))]
                x.cand[t] = (of_type.any() & ~x.st_active, slot, age)
                x.cand_restartable[t] = x.restartable.bit_select(slot, 1)
                if t == Engine.ME:
                    x.cand_op = Signal(8, name=f"c{c}_cand_me_op")
                    m.d.comb += x.cand_op.eq(Array(x.op_id)[slot])
                    # The candidate's operator already ended: its eoo µTOp was fetched
                    # and has retired (ME µTOps of an operator may retire out of order).
                    x.cand_op_ended = Signal(name=f"c{c}_cand_op_ended")
                    eoo_pending = Cat(x.valid[s] & ~x.retired[s] & ~x.retiring[s] & x.eoo[s]
                                      & (x.op_id[s] == x.cand_op) for s in range(W)).any()
                    m.d.comb += x.cand_op_ended.eq((x.op_next != x.cand_op) & ~eoo_pending)
                m.d.comb += self.candidate[c][t].eq(of_type.any())

        # --- policy state: temporal ---------------------------------------------------------------
        active_valid = Signal()
        active_ctx = Signal(ctx_shape)
        draining = Signal()
        next_ctx = Signal(ctx_shape)
        slice_count = Signal(32)
        busy_with = [Signal(name=f"busy_with{c}") for c in range(C)]
        for c in range(C):
            m.d.comb += busy_with[c].eq(Cat(eng_busy[e] & (eng_ctx[e] == c) for e in range(E)).any())
        running_mask = Cat(x.running for x in ctxs)
        m.d.comb += [self.ctx_on_any.eq(Cat(busy_with)),
                     self.ctx_on_me.eq(Cat(Cat(eng_busy[e] & (eng_ctx[e] == c)
                                               for e in groups[Engine.ME]).any()
                                           for c in range(C)))]
        best_tokens, best_ctx, best_valid = Const(0, 16), Const(0, ctx_shape), Const(0, 1)
        for c, x in enumerate(ctxs):
            candidate = x.running & ~(active_valid & (active_ctx == c))
            better = candidate & (~best_valid | (x.tokens > best_tokens))
            best_tokens = Mux(better, x.tokens, best_tokens)
            best_ctx = Mux(better, c, best_ctx)
            best_valid = best_valid | candidate
        active_running = active_valid & running_mask.bit_select(active_ctx, 1)
        want_switch = best_valid & (~active_running | (slice_count >= self.time_slice))
        with m.If(policy == Policy.TEMPORAL):
            with m.If(draining):
                with m.If(~Cat(busy_with).bit_select(active_ctx, 1) | ~active_valid):
                    m.d.sync += [draining.eq(0), active_valid.eq(1), active_ctx.eq(next_ctx),
                                 slice_count.eq(0)]
                    for c, x in enumerate(ctxs):
                        with m.If(next_ctx == c):
                            m.d.sync += x.tokens.eq(0)
            with m.Elif(want_switch):
                m.d.sync += [draining.eq(1), next_ctx.eq(best_ctx)]
            with m.Elif(active_running):
                m.d.sync += slice_count.eq(slice_count + 1)
            for c, x in enumerate(ctxs):
                with m.If(x.running & ~(active_valid & (active_ctx == c)) & ~(draining & (next_ctx == c))):
                    grown = x.tokens + x.cfg.priority + 1
                    m.d.sync += x.tokens.eq(Mux(grown > 0xFFFF, 0xFFFF, grown))
        temporal_ok = Cat(active_valid & ~draining & (active_ctx == c) for c in range(C))

        # --- policy state: v10 gang ------------------------------------------------------------------
        # The gang holder runs one ME operator on all MEs: only that operator's ME µTOps
        # issue until its eoo µTOp has retired and its ME work has drained.
        gang_valid = Signal()
        gang_ctx = Signal(ctx_shape)
        gang_op = Signal(8)
        gang_eoo_seen = Signal()
        me_busy_any = Cat(eng_busy[e] for e in groups[Engine.ME]).any()
        best_key, gang_winner, winner_valid = Const(0, 32), Const(0, ctx_shape), Const(0, 1)
        for c, x in enumerate(ctxs):
            # Operators gang in program order: a context bids with its oldest unfinished ME
            # operator only (starting a later one first could leave the earlier one, and
            # with it the gang, waiting for ever).
            unfinished_me = Signal(W, name=f"c{c}_unfinished_me")
            m.d.comb += unfinished_me.eq(x.valid & ~x.retired
                                         & Cat(x.etype[s] == Engine.ME for s in range(W)))
            oldest = round_robin(m, unfinished_me, x.head, W, f"c{c}_oldest_me")
            oldest_op = Signal(8, name=f"c{c}_oldest_me_op")
            for s in range(W):
                with m.If(oldest[s]):
                    m.d.comb += oldest_op.eq(x.op_id[s])
            wants = Signal(name=f"c{c}_gang_bid")
            m.d.comb += wants.eq(x.cand[Engine.ME][0] & (x.cand_op == oldest_op))
            key = x.me_used >> x.cfg.priority[:4]
            better = wants & (~winner_valid | (key < best_key))
            best_key = Mux(better, key, best_key)
            gang_winner = Mux(better, c, gang_winner)
            winner_valid = winner_valid | wants
        gang_ok = Cat((gang_valid & (gang_ctx == c) & ~gang_eoo_seen
                       & (ctxs[c].cand_op == gang_op))
                      | (~gang_valid & ~me_busy_any & winner_valid & (gang_winner == c))
                      for c in range(C))

        # --- engine ownership (harvest) -------------------------------------------------------------
        owner_of = {}
        for t in (Engine.ME, Engine.VE):
            for i, e in enumerate(groups[t]):
                owners = [ctxs[c].cfg.me_mask[i] if t == Engine.ME else ctxs[c].cfg.ve_mask[i]
                          for c in range(C)]
                owner_of[e] = owners
        # An engine owned by several contexts (oversubscribed) belongs to the lowest-numbered
        # one for harvesting; its owner "wants" it when it has a candidate of that type.
        owner_wants = Signal(E)
        owned_by_anyone = Signal(E)
        primary = {}
        for e, t in enumerate(types):
            if t == Engine.DMA:
                continue
            wanted = 0
            taken_by_lower = 0
            primary[e] = Signal(C, name=f"eng{e}_owner")
            for c in range(C):
                m.d.comb += primary[e][c].eq(owner_of[e][c] & ~taken_by_lower)
                taken_by_lower = taken_by_lower | owner_of[e][c]
                wanted = wanted | (primary[e][c] & ctxs[c].cand[t][0])
            m.d.comb += [owner_wants[e].eq(wanted), owned_by_anyone[e].eq(taken_by_lower)]

        # Preemption (harvest): an owner that wants an engine type and has no owned engine of
        # it free (or coming free) takes back one it lent. Only restartable µTOps are ever
        # lent, so the borrower's µTOp is flushed and issued again later: the owner waits
        # ``flush_cycles`` at most, whatever the borrower runs.
        preempt = Signal(E)
        for t in (Engine.ME, Engine.VE):
            taken = 0
            for e in groups[t]:
                relief = Cat((primary[e] == primary[other]) & (~eng_busy[other] | eng_abort[other])
                             for other in groups[t]).any()
                wanted = ((policy == Policy.HARVEST) & eng_running[e] & eng_borrowed[e]
                          & ~eng_done[e] & owner_wants[e] & ~relief)
                m.d.comb += preempt[e].eq(wanted & ~taken)
                taken = taken | wanted
        for e in range(E):
            with m.If(preempt[e]):
                m.d.sync += [eng_abort[e].eq(1), abort_left[e].eq(self.flush_cycles[e])]
        for c, x in enumerate(ctxs):
            x.preempt_bit = Signal(W, name=f"c{c}_preempt_bit")
            x.preempted_stream = Signal(name=f"c{c}_preempted_stream")
            hits = [preempt[e] & (eng_ctx[e] == c) for e in range(E)]
            m.d.comb += [
                x.preempt_bit.eq(Cat(Cat(hits[e] & (eng_slot[e] == s) for e in range(E)).any()
                                     for s in range(W))),
                x.preempted_stream.eq(x.st_active & Cat(hits[e] & (x.st_engine == e)
                                                        for e in range(E)).any()),
            ]

        # --- issue: contexts in rotating order, two passes over a static chain ----------------------
        rotation = Signal(ctx_shape)
        m.d.sync += rotation.eq(Mux(rotation == C - 1, 0, rotation + 1))
        claimed = Const(0, E)
        issue = {}
        for pass_index in range(2):
            for c, x in enumerate(ctxs):
                turn = (c >= rotation) if pass_index == 0 else (c < rotation)
                free = ~eng_busy & ~claimed
                options = []
                for t in Engine:
                    valid, slot, age = x.cand[t]
                    group = Const(sum(1 << e for e in groups[t]), E)
                    if t == Engine.ME:
                        owned = Cat(x.cfg.me_mask, Const(0, cfg.n_ve + cfg.n_dma))
                    elif t == Engine.VE:
                        owned = Cat(Const(0, cfg.n_me), x.cfg.ve_mask, Const(0, cfg.n_dma))
                    else:
                        owned = group
                    allowed = Signal(E, name=f"p{pass_index}c{c}_{t.name}_allowed")
                    with m.Switch(policy):
                        with m.Case(Policy.STATIC):
                            m.d.comb += allowed.eq(owned)
                        with m.Case(Policy.HARVEST):
                            # Others' engines only for restartable µTOps (see preemption).
                            lendable = Mux(x.cand_restartable[t], group, ~owned_by_anyone)
                            m.d.comb += allowed.eq(owned | (group & ~owner_wants & lendable))
                        with m.Case(Policy.TEMPORAL):
                            m.d.comb += allowed.eq(Mux(temporal_ok[c], group, 0))
                        with m.Case(Policy.V10):
                            if t == Engine.ME:
                                m.d.comb += allowed.eq(Mux(gang_ok[c], group, 0))
                            else:
                                m.d.comb += allowed.eq(group)
                    usable = free & allowed & group
                    preferred = usable & owned
                    choice = _first(m, Mux(preferred.any(), preferred, usable),
                                    f"p{pass_index}c{c}_{t.name}_choice")
                    options.append((t, valid & usable.any(), slot, age, choice))
                # Take the oldest option.
                take = Signal(E, name=f"p{pass_index}c{c}_take")
                take_slot = Signal(range(W), name=f"p{pass_index}c{c}_take_slot")
                chosen_t = Signal(Engine, name=f"p{pass_index}c{c}_type")
                best_age2, found2 = Const(W, range(W + 1)), Const(0, 1)
                for t, ok, slot, age, choice in options:
                    better = ok & (~found2 | (age < best_age2))
                    best_age2 = Mux(better, age, best_age2)
                    found2 = found2 | ok
                    with m.If(better):
                        m.d.comb += [take.eq(choice), take_slot.eq(slot), chosen_t.eq(t)]
                go = Signal(name=f"p{pass_index}c{c}_go")
                m.d.comb += go.eq(turn & found2 & x.running)
                taken = Signal(E, name=f"p{pass_index}c{c}_taken")
                m.d.comb += taken.eq(Mux(go, take, 0))
                claimed = claimed | taken
                issue.setdefault(c, []).append((go, take, take_slot, chosen_t))

        # --- issue effects ---------------------------------------------------------------------------
        cmd_valid = [0] * E
        cmd_ctx = [0] * E
        for c, x in enumerate(ctxs):
            go_any = Signal(name=f"c{c}_issue")
            engine_onehot = Signal(E, name=f"c{c}_issue_engine_onehot")
            slot = Signal(range(W), name=f"c{c}_issue_slot")
            etype = Signal(Engine, name=f"c{c}_issue_type")
            (go0, take0, slot0, t0), (go1, take1, slot1, t1) = issue[c]
            m.d.comb += [go_any.eq(go0 | go1),
                         engine_onehot.eq(Mux(go0, take0, take1)),
                         slot.eq(Mux(go0, slot0, slot1)),
                         etype.eq(Mux(go0, t0, t1))]
            engine = Signal(range(E), name=f"c{c}_issue_engine_index")
            m.d.comb += engine.eq(_index(engine_onehot))
            m.d.comb += [self.issue_valid[c].eq(go_any), self.issue_engine[c].eq(engine)]
            x.issue_now = go_any
            x.issue_bit = Signal(W, name=f"c{c}_issue_bit")
            m.d.comb += x.issue_bit.eq(Mux(go_any, Const(1, W) << slot, 0))
            x.issue_seq = Signal(32, name=f"c{c}_issue_seq")
            x.issue_pc = Signal(17, name=f"c{c}_issue_pc")
            for s in range(W):
                with m.If(slot == s):
                    m.d.comb += [x.issue_seq.eq(x.seq[s]), x.issue_pc.eq(x.hdr_pc[s])]
            with m.If(go_any):
                m.d.sync += [x.st_active.eq(1), x.st_engine.eq(engine),
                             x.counters["issued"].eq(x.counters["issued"] + 1)]
                for s in range(W):
                    with m.If(slot == s):
                        m.d.sync += [x.st_addr.eq(x.hdr_pc[s] + 1), x.st_left.eq(x.length[s])]
                with m.If((etype == Engine.ME) & (policy == Policy.V10) & ~gang_valid):
                    m.d.sync += [gang_valid.eq(1), gang_ctx.eq(c), gang_op.eq(x.cand_op),
                                 gang_eoo_seen.eq(x.cand_op_ended)]
            for e in range(E):
                hit = go_any & engine_onehot[e]
                cmd_valid[e] = cmd_valid[e] | hit
                cmd_ctx[e] = cmd_ctx[e] | Mux(hit, c, 0)
                borrowed = ((policy == Policy.HARVEST) & owned_by_anyone[e] & ~owner_of[e][c]
                            if e in owner_of else 0)
                with m.If(hit):
                    m.d.sync += [eng_ctx[e].eq(c), eng_slot[e].eq(slot),
                                 eng_seq[e].eq(x.issue_seq), eng_pc[e].eq(x.issue_pc),
                                 eng_borrowed[e].eq(borrowed)]
            x.issue_slot = slot

        for e, link in enumerate(self.engines):
            payload = link.cmd.payload
            sel = Signal(ctx_shape, name=f"eng{e}_cmd_ctx")
            m.d.comb += [sel.eq(cmd_ctx[e]), link.cmd.valid.eq(cmd_valid[e]), payload.ctx.eq(sel)]
            for c, x in enumerate(ctxs):
                with m.If(sel == c):
                    m.d.comb += [payload.spad_base.eq(x.cfg.spad_base),
                                 payload.spad_size.eq(x.cfg.spad_size),
                                 payload.hbm_base.eq(x.cfg.hbm_base),
                                 payload.hbm_size.eq(x.cfg.hbm_size)]
                    for s in range(W):
                        with m.If(x.issue_slot == s):
                            m.d.comb += payload.length.eq(x.length[s])
        issued_mask = Cat(cmd_valid)
        finished_mask = Cat(eng_done[e] & eng_running[e] for e in range(E))
        m.d.sync += eng_busy.eq((eng_busy & ~finished_mask & ~abort_end) | issued_mask)
        for e in range(E):
            with m.If(eng_abort[e]):
                m.d.sync += abort_left[e].eq(abort_left[e] - 1)
                with m.If(abort_left[e] == 1):
                    m.d.sync += eng_abort[e].eq(0)

        # --- body streaming ---------------------------------------------------------------------------
        for e, link in enumerate(self.engines):
            valid = 0
            for c, x in enumerate(ctxs):
                port = self._body_ports[c]
                streaming = x.st_active & (x.st_left != 0) & (x.st_engine == e)
                valid = valid | streaming
                with m.If(streaming):
                    m.d.comb += link.instr.payload.eq(port.data)
            m.d.comb += link.instr.valid.eq(valid)
        for c, x in enumerate(ctxs):
            port = self._body_ports[c]
            m.d.comb += port.addr.eq(x.st_addr)
            accepted = Signal(name=f"c{c}_word_accepted")
            for e, link in enumerate(self.engines):
                with m.If(x.st_engine == e):
                    m.d.comb += accepted.eq(link.instr.ready & x.st_active & (x.st_left != 0))
            with m.If(x.st_active & ~x.issue_now):
                with m.If(x.st_left == 0):
                    m.d.sync += x.st_active.eq(0)
                with m.Elif(accepted):
                    m.d.sync += [x.st_addr.eq(x.st_addr + 1), x.st_left.eq(x.st_left - 1)]
                    with m.If(x.st_left == 1):
                        m.d.sync += x.st_active.eq(0)
            with m.If(x.preempted_stream):     # the rest of the body goes with the µTOp
                m.d.sync += x.st_active.eq(0)

        # --- watchdogs -------------------------------------------------------------------------------
        # An engine that runs a µTOp and shows no progress for watchdog_cycles is stuck:
        # its context is killed. Progress is anything the engine does (an instruction
        # taken or executed, a memory request granted or answered, a retirement), so a
        # long µTOp that works never trips it, whoever's engine it runs on.
        eng_hung = Signal(E)
        for e in range(E):
            stuck = Signal(range(cfg.watchdog_cycles + 1), name=f"eng{e}_stuck")
            m.d.comb += eng_hung[e].eq(eng_running[e] & (stuck == cfg.watchdog_cycles))
            with m.If(~eng_running[e] | self.engine_progress[e] | eng_done[e]):
                m.d.sync += stuck.eq(0)
            with m.Elif(~eng_hung[e]):
                m.d.sync += stuck.eq(stuck + 1)
        # The NPU is stalled when no engine is busy and no context fetches, streams, issues
        # or retires while some context runs: every running context is stuck.
        stall = Signal(range(cfg.watchdog_cycles + 1))
        stall_expired = Signal()
        any_running = Cat(x.running for x in ctxs).any()
        activity = (eng_busy.any() | self.start.any() | self.config_fault.any()
                    | Cat(x.allocate | (x.fetch_fault != 0) | x.st_active | x.issue_now
                          | x.retiring.any() for x in ctxs).any())
        m.d.comb += stall_expired.eq(stall == cfg.watchdog_cycles)
        with m.If(~any_running | activity | stall_expired):
            m.d.sync += stall.eq(0)
        with m.Else():
            m.d.sync += stall.eq(stall + 1)

        # --- retirement, freeing, faults, completion, counters ------------------------------
        for c, x in enumerate(ctxs):
            # Slot bookkeeping: one assignment per register, so nothing overrides anything.
            retiring = x.retiring
            alloc_bit = Mux(x.allocate, x.tail_bit, 0)
            for s in range(W):
                m.d.sync += x.wait[s].eq(Mux(alloc_bit[s], x.wait_new, x.wait[s] & ~retiring))
            retired_next = x.retired | retiring
            head_bit = Signal(W, name=f"c{c}_head_bit")
            m.d.comb += head_bit.eq(Const(1, W) << x.head)
            free_head = x.valid.bit_select(x.head, 1) & retired_next.bit_select(x.head, 1)
            free_bit = Mux(free_head, head_bit, 0)
            m.d.sync += [x.valid.eq((x.valid & ~free_bit) | alloc_bit),
                         x.retired.eq(retired_next & ~free_bit & ~alloc_bit),
                         x.issued.eq((x.issued | x.issue_bit) & ~alloc_bit & ~free_bit
                                     & ~x.preempt_bit)]
            with m.If(free_head):
                m.d.sync += [x.head.eq(Mux(x.head == W - 1, 0, x.head + 1)),
                             x.count.eq(x.count + x.allocate - 1)]
            with m.Else():
                m.d.sync += x.count.eq(x.count + x.allocate)
            n_retiring = 0
            for s in range(W):
                n_retiring = n_retiring + retiring[s]
            m.d.sync += [x.counters["retired"].eq(x.counters["retired"] + n_retiring),
                         x.counters["preempted"].eq(x.counters["preempted"]
                                                    + x.preempt_bit.any())]
            # v10: the gang ends once the operator's eoo µTOp has retired and the holder's
            # ME work has drained (or the holder stopped running).
            holder = gang_valid & (gang_ctx == c)
            eoo_retiring = (retiring & x.eoo & Cat(x.op_id[s] == gang_op for s in range(W))).any()
            with m.If(holder & eoo_retiring):
                m.d.sync += gang_eoo_seen.eq(1)
            with m.If(holder & (((gang_eoo_seen | eoo_retiring) & ~self.ctx_on_me[c])
                                | ~x.running)):
                m.d.sync += gang_valid.eq(0)

            # Faults: keep the oldest in program order.
            new_fault = Signal(Fault, name=f"c{c}_new_fault")
            new_seq = Signal(32, name=f"c{c}_new_seq")
            new_pc = Signal(17, name=f"c{c}_new_pc")
            with m.If(x.retire_fault != 0):
                m.d.comb += [new_fault.eq(x.retire_fault), new_seq.eq(x.retire_fault_seq),
                             new_pc.eq(x.retire_fault_pc)]
            with m.Elif(x.fetch_fault != 0):
                m.d.comb += [new_fault.eq(x.fetch_fault), new_seq.eq(x.seq_next), new_pc.eq(x.pc)]
            fault_now = Signal(name=f"c{c}_fault_now")
            m.d.comb += fault_now.eq(x.running & (new_fault != 0)
                                     & (~x.fault_valid | (new_seq < x.fault_seq)))
            with m.If(fault_now):
                m.d.sync += [x.fault_valid.eq(1), x.fault_seq.eq(new_seq),
                             x.fault_code.eq(new_fault), x.fault_pc.eq(new_pc)]
            with m.If(x.fetch_fault != 0):
                m.d.sync += x.fetch_done.eq(1)

            pending = (x.valid & ~retired_next & (x.issued | x.eligible)).any() | x.st_active
            with m.If(x.running & (x.fetch_done | x.fault_valid) & ~pending & ~x.allocate
                      & (x.fetch_fault == 0)):
                # A fault taken in this very cycle (say by the eop µTOp) counts.
                m.d.sync += x.status.eq(Mux(x.fault_valid | fault_now, Status.FAULTED,
                                            Status.DONE))

            # Watchdog kill: fault with WATCHDOG at once, stop fetch, issue and streaming,
            # hold every engine running one of this context's µTOps in reset, and read
            # FAULTED only once they are all released (nothing of it is written after).
            mine = Cat(eng_running[e] & (eng_ctx[e] == c) for e in range(E))
            hung = Cat(eng_hung[e] & (eng_ctx[e] == c) for e in range(E))
            hung_pc = Signal(17, name=f"c{c}_hung_pc")
            m.d.comb += hung_pc.eq(Mux(x.count != 0, Array(x.hdr_pc)[x.head], x.pc))
            for e in reversed(range(E)):
                with m.If(hung[e]):
                    m.d.comb += hung_pc.eq(eng_pc[e])
            with m.If(x.running & ~x.killed & (hung.any() | stall_expired)):
                m.d.sync += [x.killed.eq(1), x.fault_valid.eq(1), x.fault_seq.eq(0),
                             x.fault_code.eq(Fault.WATCHDOG), x.fault_pc.eq(hung_pc),
                             x.fetch_done.eq(1), x.st_active.eq(0),
                             x.status.eq(Status.RUNNING)]     # not DONE, even this cycle
                for e in range(E):
                    with m.If(mine[e] & ~finished_mask[e]):
                        m.d.sync += [eng_abort[e].eq(1), abort_left[e].eq(self.flush_cycles[e])]
            aborting = Cat(eng_abort[e] & (eng_ctx[e] == c) for e in range(E)).any()
            with m.If(x.running & x.killed & ~aborting):
                m.d.sync += x.status.eq(Status.FAULTED)

            # Counters.
            own = 0
            harvest = 0
            dma = 0
            me_cycles = 0
            for e, t in enumerate(types):
                mine = eng_running[e] & (eng_ctx[e] == c)
                if t == Engine.DMA:
                    dma = dma + mine
                    continue
                i = groups[t].index(e)
                owned = x.cfg.me_mask[i] if t == Engine.ME else x.cfg.ve_mask[i]
                own = own + (mine & owned)
                harvest = harvest + (mine & ~owned)
                if t == Engine.ME:
                    me_cycles = me_cycles + mine
            unissued = (x.valid & ~x.issued & x.eligible).any()
            with m.If(x.running):
                m.d.sync += [
                    x.counters["cycles"].eq(x.counters["cycles"] + 1),
                    x.counters["own_cycles"].eq(x.counters["own_cycles"] + own),
                    x.counters["harvest_cycles"].eq(x.counters["harvest_cycles"] + harvest),
                    x.counters["dma_cycles"].eq(x.counters["dma_cycles"] + dma),
                    x.counters["dep_wait"].eq(x.counters["dep_wait"] + (unissued & ~x.ready.any())),
                    x.counters["engine_wait"].eq(x.counters["engine_wait"]
                                                 + (x.ready.any() & ~x.issue_now)),
                    x.me_used.eq(x.me_used + me_cycles),
                ]

            # Start, or a refused start (wins over everything above).
            with m.If(x.start | self.config_fault[c]):
                m.d.sync += [x.status.eq(Status.RUNNING), x.pc.eq(0), x.fetch_done.eq(0),
                             x.seq_next.eq(0), x.head.eq(0), x.count.eq(0), x.valid.eq(0),
                             x.issued.eq(0), x.retired.eq(0), x.fault_valid.eq(0),
                             x.fault_code.eq(0), x.fault_pc.eq(0), x.st_active.eq(0),
                             x.me_used.eq(0), x.tokens.eq(0), x.killed.eq(0),
                             x.op_next.eq(0)]
                m.d.sync += [counter.eq(0) for counter in x.counters.values()]
            with m.If(self.config_fault[c]):
                m.d.sync += [x.status.eq(Status.FAULTED), x.fault_valid.eq(1),
                             x.fault_code.eq(Fault.CONFIG)]

            m.d.comb += [x.state.status.eq(x.status), x.state.fault.eq(x.fault_code),
                         x.state.fault_pc.eq(x.fault_pc)]
            m.d.comb += [getattr(x.state, name).eq(x.counters[name]) for name in _COUNTERS]

        # Per-engine counters.
        for e in range(E):
            m.d.sync += self.engine_busy[e].eq(self.engine_busy[e] + eng_running[e])
            for c in range(C):
                with m.If(eng_running[e] & (eng_ctx[e] == c)):
                    m.d.sync += self.engine_busy_by_ctx[e][c].eq(self.engine_busy_by_ctx[e][c] + 1)
        return m
