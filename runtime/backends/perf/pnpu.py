"""The pNPU's timing at µTOp granularity: the dispatcher's rules cycle by cycle, evaluated
only at the cycles where something happens, and each µTOp's time on its engine from
engine_timing.

The dispatcher is modelled as hw/dispatcher builds it:

- **Fetch**: a context's prefetcher requests one HBM line of its program per cycle from
  the cycle after START (as HBM's arbiter grants them, beside the DMA engines and the
  host), as far as its instruction buffer has room above the oldest µTOp in its window; a
  line is visible ``hbm_latency + 2`` cycles after its grant. A µTOp
  is taken into the window (one per cycle, ``dep_window`` slots, freed in order, one per
  cycle) once its header and body are visible; it is ready the cycle after it is taken
  and after the last µTOp it depends on retired.
- **Issue**: every cycle, contexts in rotating order (the cycle number modulo ``n_ctx``)
  each issue their oldest candidate (the oldest ready µTOp of each engine type, none
  while the previous body is still streamed) to a free engine the policy allows, an
  owned one first, else the lowest-numbered. An engine runs the µTOp from the next cycle
  to its retirement and is free the cycle after.
- **Policies** (isa/SPEC.md, *Sharing policies*): ``static``, ``harvest`` with preemption
  (the borrowed µTOp's engine is held in reset two cycles; the µTOp is issued again),
  ``temporal`` with its tokens, time slice and drain, and ``v10`` with its ME gangs.

Faults come from the golden model: a fetch fault stops fetch at its header; a µTOp that
faults in an engine runs up to the instruction that faults (engine_timing), and younger
µTOps no longer issue once it has retired. Not modelled: the watchdogs (a hung engine
cannot happen in a model) and what engine_timing leaves out.
"""

from dataclasses import dataclass, field

from isa.encoding import DecodeError, Engine, Fault, decode_header, decode_instr
from isa.regmap import Policy, Status, activity_fields
from .engine_timing import DmaJob, faulting_timing, stream_end, utop_timing
from .hbm_arbiter import HbmArbiter, Stream

__all__ = ["PNPU", "Program", "parse_program"]

_FLUSH_CYCLES = 2            # an engine preempted under harvest is held in reset so long
_NEVER = 1 << 62
#: HBM's arbitration pointer in cycle 0 of a run (it steps every cycle from reset).
HBM_POINTER_OFFSET = 0


@dataclass(frozen=True, eq=False)
class _UTop:
    pc: int
    engine: Engine
    length: int
    deps: tuple
    eoo: bool
    eop: bool
    restartable: bool
    body: tuple
    words: tuple                    # the body's words: the key of its timing


@dataclass(eq=False)
class Program:
    """A program as the timing model runs it: its µTOps up to the `eop` one, or up to the
    first that cannot be fetched (``fetch_fault`` at word ``fault_pc``)."""
    utops: list
    length: int                     # PROG_LEN in words
    fetch_fault: Fault = Fault.NONE
    fault_pc: int = 0


def parse_program(words, config):
    """The µTOps of ``words`` as fetch takes them: up to and including the `eop` µTOp, or
    up to a bad header or a µTOp past the program's end (a fetch fault)."""
    utops, pc = [], 0
    while True:
        if pc >= len(words):
            return Program(utops, len(words), Fault.FETCH_OOB, pc)
        try:
            header, length = decode_header(words[pc], config)
        except DecodeError:
            return Program(utops, len(words), Fault.BAD_HEADER, pc)
        if pc + 1 + length > len(words):
            return Program(utops, len(words), Fault.FETCH_OOB, pc)
        body = []
        for word in words[pc + 1:pc + 1 + length]:
            try:
                body.append(decode_instr(word, header.engine))
            except DecodeError:
                break                  # an illegal word: the µTOp runs up to it
        utops.append(_UTop(pc, header.engine, length, header.deps, header.eoo, header.eop,
                           header.restartable, tuple(body), tuple(words[pc + 1:pc + 1 + length])))
        pc += 1 + length
        if header.eop:
            return Program(utops, len(words))


class _Slot:
    __slots__ = ("utop", "index", "taken", "deps", "issued", "retired", "op")

    def __init__(self, utop, index, taken, deps, op):
        self.utop, self.index, self.taken, self.deps, self.op = utop, index, taken, deps, op
        self.issued = False
        self.retired = None          # the cycle it retired


#: The per-context counters the model keeps (the register map's names).
COUNTERS = ("CYCLES", "ISSUED", "RETIRED", "OWN_CYCLES", "HARVEST_CYCLES", "DEP_WAIT",
            "ENGINE_WAIT", "DMA_CYCLES", "PREEMPTED", "FETCHED")


@dataclass(eq=False)
class _Context:
    program: Program
    start: int                       # the cycle of the START (it runs from the next)
    settings: dict                   # its registers
    engine_fault: tuple | None       # (µTOp index, Fault, step) the golden model found
    window: list = field(default_factory=list)
    next_utop: int = 0
    stream_free: int = 0
    keep_since: int = 0              # the oldest µTOp kept in the buffer is so since
    line_requests: list = field(default_factory=list)     # cycle each line was granted
    lines_asked: int = 0
    fetch_stream: Stream | None = None
    fetch_done: bool = False
    fault: Fault = Fault.NONE
    fault_pc: int = 0
    fault_index: int | None = None   # µTOps from this index on are no longer eligible
    fetch_fault_at: int | None = None
    status: Status = Status.RUNNING
    end: int | None = None
    op_next: int = 0
    me_used: int = 0                 # ME engine-cycles of µTOps that stopped running
    tokens: int = 0
    counters: dict = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    @property
    def running(self):
        return self.status == Status.RUNNING


class _Engine:
    __slots__ = ("type", "index", "slot", "ctx", "issued", "retire", "free", "borrowed",
                 "abort_end", "stopped", "busy", "done", "work", "busy_ctx", "state")

    def __init__(self, type_, index, n_ctx):
        self.type, self.index = type_, index
        self.slot = self.ctx = self.issued = self.retire = self.abort_end = None
        self.stopped = None          # the cycle its last µTOp retired or was preempted
        self.free = 0                # issue allowed from this cycle
        self.borrowed = False
        self.busy = self.done = self.work = 0
        self.busy_ctx = [0] * n_ctx
        self.state = (0, 0)          # what engine_timing carries from µTOp to µTOp

    def busy_at(self, t):
        """The engine table's busy bit in cycle t."""
        return ((self.slot is not None and self.issued < t) or self.abort_end is not None
                or self.stopped == t)


class PNPU:
    """The pNPU's dispatcher and engines in time. ``start`` a context at a cycle, then
    ``advance`` to a cycle (or ``run`` until idle); cycles are counted from reset."""

    def __init__(self, config, policy=Policy.HARVEST, time_slice=4096):
        self.config = config
        self.policy = Policy(policy)
        self.time_slice = time_slice
        types = [Engine.ME] * config.n_me + [Engine.VE] * config.n_ve + [Engine.DMA] * config.n_dma
        self.engines = [_Engine(t, i, config.n_ctx) for i, t in enumerate(types)]
        self.groups = {t: [e for e in self.engines if e.type == t] for t in Engine}
        self.contexts = [None] * config.n_ctx
        #: HBM's ports: the DMA engines', the host's, each context's program fetch.
        self.hbm = HbmArbiter(config.n_dma + 1 + config.n_ctx, HBM_POINTER_OFFSET)
        self.now = 0                 # the next cycle to evaluate
        self.quiet = 0               # nothing happens before this cycle (from the last look)
        self._timing = {}
        self._owners = {}            # engine index -> its primary owner (harvest)
        # temporal
        self.active = None
        self.draining = False
        self.next_active = None
        self.slice_count = 0
        self.scheduled = []          # (cycle, ctx, ...) of starts to come
        #: Called with (context, cycle) when a context's run ends (DONE or FAULTED).
        self.on_done = None
        # v10
        self.gang = None             # [ctx, op, eoo_seen]
        #: (cycle, engine, value) at every change of what an engine runs, while recorded.
        self.timeline = None
        self._ctx_bits = activity_fields(config)[0]

    # --- host side ------------------------------------------------------------------------

    def start(self, c, program, settings, cycle, engine_fault=None):
        """Context ``c`` receives its start in ``cycle`` (a START, or a request taken) and
        runs from the next. ``settings`` are its registers (HBM_BASE, ME_MASK, VE_MASK,
        PRIORITY); ``engine_fault`` the (µTOp index, Fault, instruction number) of the µTOp
        that faults in an engine, from the golden model."""
        if cycle < self.now:
            raise ValueError(f"cannot start context {c} in cycle {cycle}: the model is at "
                             f"cycle {self.now}")
        self.scheduled.append((cycle, c, program, dict(settings), engine_fault))
        self.wake()

    def _apply_starts(self, t):
        for entry in [x for x in self.scheduled if x[0] == t]:
            self.scheduled.remove(entry)
            _, c, program, settings, engine_fault = entry
            self.contexts[c] = _Context(program, t, settings, engine_fault, keep_since=t + 1)
            self._owners = {}
            for e in self.engines:
                if e.type == Engine.DMA:
                    continue
                key = "ME_MASK" if e.type == Engine.ME else "VE_MASK"
                i = self.groups[e.type].index(e)
                self._owners[e.index] = next((k for k, x in enumerate(self.contexts)
                                              if x is not None and x.settings[key] >> i & 1), None)

    def busy(self):
        return (bool(self.scheduled) or any(x is not None and x.running for x in self.contexts)
                or any(e.slot is not None or e.abort_end is not None for e in self.engines))

    def run(self, limit):
        """Advance until nothing runs (or to ``limit``); returns the first idle cycle."""
        while self.busy() and self.now < limit:
            self.advance(min(limit, self._next_event() + 1))
        return self.now

    def advance(self, cycle):
        """Evaluate every cycle before ``cycle``."""
        while self.now < cycle:
            t = self.now
            if t < self.quiet:               # known to be quiet: nothing to evaluate
                nxt = min(cycle, self.quiet)
                self._skip(t, nxt)
                self.now = nxt
                continue
            if self.scheduled:
                self._apply_starts(t)
            happened = self._cycle(t)
            if happened:
                nxt = self.quiet = t + 1
            else:
                self.quiet = max(t + 1, self._next_event())
                nxt = min(self.quiet, cycle)
                if nxt > t + 1:
                    self._skip(t + 1, nxt)
            self.now = nxt

    def wake(self):
        """Something from outside (a start, the host's HBM traffic, a register) changes what
        the next cycles do: evaluate them."""
        self.quiet = self.now

    def me_used(self, c, t):
        """Context c's ME engine-cycles up to cycle t (exclusive)."""
        used = self.contexts[c].me_used
        return used + sum(t - e.issued - 1 for e in self.groups[Engine.ME]
                          if e.slot is not None and e.ctx == c and e.issued < t - 1)

    # --- one cycle --------------------------------------------------------------------------

    def _cycle(self, t):
        self.hbm.advance(t + 1)
        happened = False
        retiring = {}
        for e in self.engines:
            if e.abort_end == t:
                e.abort_end = None
                self._activity(t + 1, e, 0)
                happened = True
            if e.slot is not None and e.retire == t:
                retiring.setdefault(e.ctx, []).append(e.slot)
                self._retire(e, t)
                happened = True
        for context in self.contexts:
            if context is not None and context.running:
                happened |= self._fetch(context, t)
        candidates = {c: self._candidates(x, t) for c, x in enumerate(self.contexts)
                      if x is not None and x.running}
        wants = self._owner_wants(candidates) if self.policy == Policy.HARVEST else set()
        issued = self._issue(t, candidates, wants)
        happened |= bool(issued)
        if self.policy == Policy.HARVEST:
            happened |= self._preempt(t, wants)
        elif self.policy == Policy.TEMPORAL:
            happened |= self._temporal(t)
        elif self.policy == Policy.V10:
            happened |= self._v10(t, candidates, issued, retiring)
        for c, context in enumerate(self.contexts):
            if context is not None and context.running:
                self._wait_counters(context, t, c in {i for i, _, _ in issued}, 1)
                happened |= self._complete(context, t)
        return happened

    def _retire(self, e, t):
        slot, context = e.slot, self.contexts[e.ctx]
        slot.retired = t
        context.counters["RETIRED"] += 1
        e.done += 1
        self._stop(e, t)
        fault = context.engine_fault
        if fault is not None and slot.index == fault[0] and context.fault == Fault.NONE:
            context.fault, context.fault_pc = fault[1], slot.utop.pc
            context.fault_index = slot.index + 1
            self._fetch_stopped(context, t)

    def _stop(self, e, t):
        """Engine e stops running its µTOp after cycle t (retired or preempted)."""
        context, run = self.contexts[e.ctx], t - e.issued
        e.busy += run
        e.busy_ctx[e.ctx] += run
        if e.type == Engine.DMA:
            context.counters["DMA_CYCLES"] += run
        elif e.index in self._owned(context, e.type):
            context.counters["OWN_CYCLES"] += run
        else:
            context.counters["HARVEST_CYCLES"] += run
        if e.type == Engine.ME:
            context.me_used += run
        e.slot, e.stopped, e.free = None, t, t + 1
        self._activity(t + 1, e, 0)

    def _fetch(self, context, t):
        cfg, program, window = self.config, context.program, context.window
        happened = False
        if context.fetch_stream is None:
            self._prefetch(context, t - 1)
        if not context.fetch_done and context.fault == Fault.NONE and len(window) < cfg.dep_window:
            if context.next_utop < len(program.utops):
                utop = program.utops[context.next_utop]
                if self._visible(context, utop.pc + 1 + utop.length) <= t:
                    index = context.next_utop
                    live = {s.index: s for s in window if s.retired is None or s.retired > t}
                    deps = [live[index - d] for d in utop.deps if index - d in live
                            and live[index - d].retired is None]
                    window.append(_Slot(utop, index, t, deps, context.op_next))
                    context.op_next += utop.eoo
                    context.next_utop += 1
                    if utop.eop:
                        self._fetch_stopped(context, t)
                    happened = True
            elif (program.fault_pc >= program.length
                  or self._visible(context, program.fault_pc + 1) <= t):
                self._fetch_stopped(context, t)      # a fetch fault: stop at this header
                context.fault, context.fault_pc = program.fetch_fault, program.fault_pc
                context.fault_index = context.next_utop
                context.fetch_fault_at = t           # recorded at this edge: done after it
                happened = True
        if window and window[0].retired is not None and window[0].retired <= t:
            window.pop(0)
            context.keep_since = t + 1
            self._prefetch(context, t)
            happened = True
        return happened

    def _prefetch(self, context, t):
        """Ask HBM for every program line the instruction buffer has room for: one per
        cycle from the cycle after START, each once the oldest µTOp kept leaves room."""
        cfg = self.config
        K = cfg.prog_words_per_line
        if context.window:
            keep = context.window[0].utop.pc
        elif context.next_utop < len(context.program.utops):
            keep = context.program.utops[context.next_utop].pc
        else:
            keep = context.program.fault_pc
        lines = min(-(-context.program.length // K), (keep + cfg.imem_words) // K)
        more = lines - context.lines_asked
        if more <= 0:
            return
        context.lines_asked = lines
        stream = context.fetch_stream
        if stream is not None and stream in self.hbm.streams:
            stream.left += more
            return
        context.fetch_stream = Stream(cfg.n_dma + 1 + self.contexts.index(context),
                                      max(t + 1, context.keep_since), more,
                                      granted=context.line_requests.extend)
        self.hbm.add(context.fetch_stream)

    def _visible(self, context, end_word):
        """The first cycle in which program words below ``end_word`` are all visible
        (_NEVER while a line they need is not granted yet)."""
        K = self.config.prog_words_per_line
        need = min(-(-end_word // K), -(-context.program.length // K))
        if need == 0:
            return context.start + 1
        if need > len(context.line_requests):
            return _NEVER
        return context.line_requests[need - 1] + self.config.hbm_latency + 2

    def _visible_event(self, context, end_word):
        """When the words below ``end_word`` will be visible, if HBM's requesters stay."""
        visible = self._visible(context, end_word)
        K = self.config.prog_words_per_line
        need = min(-(-end_word // K), -(-context.program.length // K))
        stream = context.fetch_stream
        if visible == _NEVER and stream is not None and stream in self.hbm.streams:
            missing = need - len(context.line_requests)
            if missing <= stream.left:
                return self.hbm.when(stream, missing) + self.config.hbm_latency + 2
        return visible

    def _fetch_stopped(self, context, t):
        """Fetch ends in cycle t: no line is requested after it."""
        context.fetch_done = True
        if context.fetch_stream is not None:
            self.hbm.cancel(context.fetch_stream)
        context.counters["FETCHED"] = len(context.line_requests)

    def _candidates(self, context, t):
        """Per engine type, the oldest ready slot (none while a body streams)."""
        result = {}
        if context.stream_free > t:
            return result
        for slot in self._waiting(context, t):
            if slot.utop.engine not in result and self._ready(slot, t):
                result[slot.utop.engine] = slot
        return result

    @staticmethod
    def _waiting(context, t):
        """The slots taken before cycle t, eligible, not issued: oldest first."""
        for slot in context.window:
            if (slot.issued or slot.retired is not None or slot.taken >= t
                    or context.fault_index is not None and slot.index >= context.fault_index):
                continue
            yield slot

    @staticmethod
    def _ready(slot, t):
        return all(d.retired is not None and d.retired < t for d in slot.deps)

    # --- issue --------------------------------------------------------------------------------

    def _owned(self, context, type_):
        if type_ == Engine.DMA:
            return ()
        mask = context.settings["ME_MASK" if type_ == Engine.ME else "VE_MASK"]
        return [e.index for i, e in enumerate(self.groups[type_]) if mask >> i & 1]

    def _owner_wants(self, candidates):
        """Engines whose primary owner has a candidate of their type (harvest)."""
        return {e for e, owner in self._owners.items()
                if owner is not None and self.engines[e].type in candidates.get(owner, {})}

    def _allowed(self, c, type_, slot, t, wants):
        group = [e.index for e in self.groups[type_]]
        policy = self.policy
        if policy == Policy.TEMPORAL:          # only the active context issues, to any engine
            return group if (self.active == c and not self.draining) else []
        if type_ == Engine.DMA:
            return group
        if policy == Policy.STATIC:
            return self._owned(self.contexts[c], type_)
        if policy == Policy.HARVEST:
            owned = self._owned(self.contexts[c], type_)
            return [e for e in group if e in owned or (
                e not in wants and (slot.utop.restartable or self._owners.get(e) is None))]
        return group if type_ != Engine.ME or self._me_ok(c, slot, t) else []

    def _issue(self, t, candidates, wants):
        C = self.config.n_ctx
        claimed, issued = set(), []
        for k in range(C):
            c = (t + k) % C
            if not candidates.get(c):
                continue
            context = self.contexts[c]
            best = None
            for type_, slot in candidates[c].items():
                allowed = self._allowed(c, type_, slot, t, wants)
                usable = [e for e in self.groups[type_]
                          if e.free <= t and e.index not in claimed and e.index in allowed]
                if usable and (best is None or (slot.index, type_) < (best[1].index, best[0])):
                    owned = self._owned(context, type_)
                    best = (type_, slot, ([e for e in usable if e.index in owned] or usable)[0])
            if best is None:
                continue
            _, slot, engine = best
            claimed.add(engine.index)
            self._dispatch(c, context, slot, engine, t)
            issued.append((c, slot, engine))
        return issued

    def _dispatch(self, c, context, slot, engine, t):
        utop = slot.utop
        slot.issued = True
        engine.slot, engine.ctx, engine.issued = slot, c, t
        engine.borrowed = (self.policy == Policy.HARVEST and self._owners.get(engine.index) is not None
                           and engine.index not in self._owned(context, utop.engine))
        context.stream_free = t + stream_end(utop.length)
        context.counters["ISSUED"] += 1
        self._activity(t + 1, engine, c + 1 | utop.pc << self._ctx_bits)
        fault = context.engine_fault
        stop = fault[2] if fault is not None and fault[0] == slot.index else None
        if utop.engine == Engine.DMA:
            engine.retire = None
            engine.free = _NEVER

            def retired(cycle, words, engine=engine, slot=slot):
                if engine.slot is slot:
                    engine.retire, engine.free = max(cycle, t + 1), max(cycle, t + 1) + 1
                    engine.work += words
            DmaJob(utop.body, self.config, t, self.groups[Engine.DMA].index(engine), self.hbm,
                   context.settings["HBM_BASE"], retired, stop, utop.length)
            return
        if stop is not None:
            timing = faulting_timing(utop.engine, list(utop.body), self.config, stop,
                                     utop.length, engine.state)
        else:
            key = (utop.engine, utop.words, engine.state)
            timing = self._timing.get(key)
            if timing is None:
                timing = self._timing[key] = utop_timing(utop.engine, list(utop.body),
                                                         self.config, engine.state)
        if utop.engine == Engine.VE:
            engine.state = timing.state
        engine.retire = t + max(timing.retire, 1)
        engine.free = engine.retire + 1
        engine.work += timing.work

    def _preempt(self, t, wants):
        happened = False
        for type_ in (Engine.ME, Engine.VE):
            for e in self.groups[type_]:
                if not (e.slot is not None and e.issued < t and e.abort_end is None
                        and e.borrowed and e.retire != t and e.index in wants):
                    continue
                owner = self._owners[e.index]
                if any(self._owners.get(o.index) == owner and (not o.busy_at(t) or o.abort_end is not None)
                       for o in self.groups[type_]):
                    continue                      # the owner has an engine coming free
                slot, context = e.slot, self.contexts[e.ctx]
                slot.issued = False
                context.counters["PREEMPTED"] += 1
                context.stream_free = min(context.stream_free, t + 1)
                self._stop(e, t)
                e.abort_end, e.free = t + _FLUSH_CYCLES, t + _FLUSH_CYCLES + 1
                e.state = (0, 0)                  # the reset clears the engine's registers
                self._activity(t + 1, e, 0)
                happened = True
                break                             # one per engine type per cycle
        return happened

    # --- temporal (PREMA-like) -------------------------------------------------------------------

    def _temporal_best(self):
        best = None
        for c, x in enumerate(self.contexts):
            if x is not None and x.running and self.active != c:
                if best is None or x.tokens > self.contexts[best].tokens:
                    best = c
        return best

    def _temporal(self, t):
        """One cycle of the temporal policy's state (hw/dispatcher/temporal_policy.py)."""
        best = self._temporal_best()
        active = self.contexts[self.active] if self.active is not None else None
        active_running = active is not None and active.running
        happened = False
        if self.draining:
            on_engines = active is not None and any(
                e.busy_at(t) and e.ctx == self.active for e in self.engines if e.slot is not None
                or e.stopped == t)
            if not on_engines:
                self.draining, self.active, self.slice_count = False, self.next_active, 0
                self.contexts[self.active].tokens = 0
                happened = True
        elif best is not None and (not active_running or self.slice_count >= self.time_slice):
            self.draining, self.next_active = True, best
            happened = True
        elif active_running:
            self.slice_count += 1
        self._grow_tokens(1)
        return happened

    def _grow_tokens(self, cycles):
        for c, x in enumerate(self.contexts):
            if (x is not None and x.running and self.active != c
                    and not (self.draining and self.next_active == c)):
                x.tokens = min(0xFFFF, x.tokens + cycles * (x.settings["PRIORITY"] + 1))

    # --- v10 --------------------------------------------------------------------------------------

    def _me_ok(self, c, slot, t):
        if self.gang is not None:
            holder, op, eoo_seen = self.gang
            return holder == c and not eoo_seen and slot.op == op
        if any(e.busy_at(t) for e in self.groups[Engine.ME]):
            return False
        return self._v10_winner(t) == c

    def _v10_bids(self, t):
        """Contexts whose ME candidate belongs to their oldest unfinished ME operator."""
        bids = {}
        for c, x in enumerate(self.contexts):
            if x is None or not x.running:
                continue
            slot = self._candidates(x, t).get(Engine.ME)
            if slot is None:
                continue
            oldest = next(s for s in x.window if s.utop.engine == Engine.ME
                          and (s.retired is None or s.retired >= t))
            if slot.op == oldest.op:
                bids[c] = self.me_used(c, t) >> x.settings["PRIORITY"]
        return bids

    def _v10_winner(self, t):
        bids = self._v10_bids(t)
        return min(bids, key=lambda c: (bids[c], c)) if bids else None

    def _v10(self, t, candidates, issued, retiring):
        happened = False
        if self.gang is None:
            for c, slot, engine in issued:
                if engine.type == Engine.ME:
                    x = self.contexts[c]
                    ended = x.op_next != slot.op and not any(
                        s.utop.eoo and s.op == slot.op and (s.retired is None or s.retired > t)
                        for s in x.window)
                    self.gang = [c, slot.op, ended]
                    return True
            return False
        holder, op, eoo_seen = self.gang
        x = self.contexts[holder]
        eoo_retiring = any(s.utop.eoo and s.op == op for s in retiring.get(holder, ()))
        if eoo_retiring:
            self.gang[2] = True
            happened = True
        on_me = any(e.busy_at(t) and e.ctx == holder for e in self.groups[Engine.ME])
        if ((eoo_seen or eoo_retiring) and not on_me) or x is None or not x.running:
            self.gang = None
            happened = True
        return happened

    # --- completion and accounting ----------------------------------------------------------------

    def _complete(self, context, t):
        if not (context.fetch_done or context.fault != Fault.NONE) or context.stream_free > t:
            return False
        if context.fetch_fault_at == t:
            return False
        for slot in context.window:
            if slot.retired is not None and slot.retired <= t:
                continue
            if slot.issued or context.fault_index is None or slot.index < context.fault_index:
                return False
        context.status = Status.FAULTED if context.fault != Fault.NONE else Status.DONE
        context.end = t
        context.counters["CYCLES"] = t - context.start
        if self.on_done is not None:
            self.on_done(self.contexts.index(context), t)
        return True

    def _wait_counters(self, context, t, issued, cycles):
        """DEP_WAIT (µTOps waiting, none ready) and ENGINE_WAIT (one ready, none issued)
        over ``cycles`` cycles like cycle t."""
        waiting = list(self._waiting(context, t))
        ready = any(self._ready(slot, t) for slot in waiting)
        if ready and not issued:
            context.counters["ENGINE_WAIT"] += cycles
        elif waiting and not ready:
            context.counters["DEP_WAIT"] += cycles

    def _skip(self, first, end):
        """Cycles first .. end - 1, in which nothing happens: counters and policy state."""
        cycles = end - first
        for c, context in enumerate(self.contexts):
            if context is not None and context.running:
                self._wait_counters(context, first, False, cycles)
        if self.policy == Policy.TEMPORAL:
            active = self.contexts[self.active] if self.active is not None else None
            if not self.draining and active is not None and active.running:
                self.slice_count += cycles
            self._grow_tokens(cycles)

    def _activity(self, cycle, engine, value):
        if self.timeline is not None:
            self.timeline.append((cycle, engine.index, value))

    def _next_event(self):
        """The earliest cycle from ``now`` on at which something may happen."""
        t = self.now
        times = [t + (1 << 40)] + [x[0] for x in self.scheduled]
        hbm = self.hbm.next_event()
        if hbm is not None:
            times.append(hbm)
        for e in self.engines:
            if e.slot is not None and e.retire is not None:
                times.append(e.retire)
            if e.abort_end is not None:
                times.append(e.abort_end)
        for context in self.contexts:
            if context is None or not context.running:
                continue
            times.append(context.stream_free)
            if not context.fetch_done and context.fault == Fault.NONE:
                program = context.program
                if context.next_utop < len(program.utops):
                    utop = program.utops[context.next_utop]
                    times.append(self._visible_event(context, utop.pc + 1 + utop.length))
                else:
                    times.append(self._visible_event(context, program.fault_pc + 1))
        if self.policy == Policy.TEMPORAL and not self.draining and self.active is not None:
            times.append(t + max(0, self.time_slice - self.slice_count))
        return max(t, min(x for x in times if x >= t) if any(x >= t for x in times) else t)
