"""The driver: configures, loads, runs and reads back a pNPU, only through its host interface.

A run is a *host script* (runtime.backends.script: register writes, memory writes, run,
reads), executed from reset by a backend: ``golden`` (the ISA's numpy model, no timing),
``perf`` (the golden model's data with the µTOp-level timing model's cycles), ``pysim`` (the
RTL in Amaranth's simulator) or ``verilator``. Every backend sees exactly the
same operations, so results and cycle counts compare one to one, and every run reads back
the same RunResult.
"""

from dataclasses import dataclass, field

import numpy as np

from isa.config import NPUConfig
from isa.encoding import Fault, program_hbm_words
from isa.golden import Segment
from isa.regmap import (CONTEXT, ENGINE, Access, HostError, Policy, Status, activity_fields,
                        register_address)
from runtime.backends import script as ops

__all__ = ["Driver", "RunResult", "ContextResult", "RequestResult", "DriverError", "BACKENDS",
           "TIMED_BACKENDS",
           "POLICIES", "make_backend", "check_placement"]

#: Backend names accepted everywhere a backend can be chosen.
BACKENDS = ("golden", "perf", "pysim", "verilator")
#: The backends with a clock: every one but the golden model.
TIMED_BACKENDS = ("perf", "pysim", "verilator")
#: Sharing policies by name, in POLICY register order.
POLICIES = tuple(policy.name.lower() for policy in Policy)


class DriverError(ValueError):
    """A request the NPU cannot carry out; the message names the value and the limit."""


def _overlap(a, b):
    """Whether two (first, count) ranges share a location."""
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _words(values, what, ndim=1):
    """Values as int64, each a 32-bit word (signed or unsigned): never truncated silently."""
    array = np.asarray(values)
    if array.size and (array.dtype == bool or not np.issubdtype(array.dtype, np.integer)):
        raise DriverError(f"{what} must be integers, not {array.dtype}")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < -(1 << 31) or high >= 1 << 32:
            raise DriverError(f"{what}: {low if low < -(1 << 31) else high} does not fit in a "
                              f"32-bit word")
    array = array.astype(np.int64)
    return np.atleast_2d(array) if ndim == 2 else array


@dataclass
class ContextResult:
    """A context after a run, as its registers tell it; the golden backend adds the
    fault explained in words and, when it checks them, races and restart hazards."""
    status: Status
    fault: Fault
    fault_pc: int
    counters: dict
    fault_detail: str = ""
    races: list = field(default_factory=list)              # isa.golden.Race
    restart_hazards: list = field(default_factory=list)    # isa.golden.RestartHazard

    @property
    def cycles(self):
        return self.counters["CYCLES"]


@dataclass
class RunResult:
    cycles: int                       # cycles the run took (until no context was running)
    timed_out: bool
    contexts: list                    # ContextResult per loaded context
    engines: list                     # dict of counters per engine (MEs, VEs, DMAs)
    spad: dict = field(default_factory=dict)    # (row, count) -> array
    hbm: dict = field(default_factory=dict)     # (addr, count) -> array
    trace: list = field(default_factory=list)   # per cycle, when the backend traces
    #: With timeline=True (Driver.run, Driver.serve): (cycle, engine, activity, pc) at the
    #: start and at every change of what an engine runs (hw.npu's activity port): activity 0
    #: idle or c + 1 for context c, pc the header address of the µTOp it runs.
    timeline: list | None = None
    timed: bool = True                # False on the golden backend: no cycles, no timing counters

    @property
    def makespan(self):
        return max((c.cycles for c in self.contexts), default=0)

    def busy_intervals(self):
        """The timeline as (engine, context, first cycle, end cycle) per stretch an engine
        ran one context's µTOps, in time order; the last stretch ends at ``cycles``."""
        return [(engine, ctx, start, end) for engine, (ctx, _), start, end
                in self._intervals(lambda activity, pc: activity)]

    def utop_runs(self):
        """The timeline as (engine, context, pc, first cycle, end cycle) per run of a µTOp
        (pc: its header address), in time order. A µTOp preempted and issued again runs
        more than once; the runs before the last were flushed."""
        return [(engine, ctx, pc, start, end) for engine, (ctx, pc), start, end
                in self._intervals(lambda activity, pc: (activity, pc))]

    def _intervals(self, key):
        """(engine, (context, pc), first, end) per stretch in which ``key(activity, pc)`` of
        an engine stays the same and the engine is not idle."""
        if self.timeline is None:
            raise ValueError("no timeline: run or serve with timeline=True on a timed backend")
        open_, intervals = {}, []
        ends = [(self.cycles, e, 0, 0) for e in sorted({e for _, e, _, _ in self.timeline})]
        for cycle, engine, activity, pc in list(self.timeline) + ends:
            value = key(activity, pc) if activity else None
            if engine in open_:
                if open_[engine][1] == value:
                    continue
                start, held, what = open_.pop(engine)
                if cycle > start:
                    intervals.append((engine, what, start, cycle))
            if activity:
                open_[engine] = (cycle, value, (activity - 1, pc))
        return sorted(intervals, key=lambda i: (i[2], i[0]))


@dataclass
class RequestResult:
    """One request of a stream (Driver.serve); cycles count from the stream's start."""
    ctx: int
    offset: int                       # its DOORBELL value (added to HBM_BASE)
    arrival: int | None = None        # when it arrived at the host (None: it never did)
    refused: HostError | None = None  # its doorbell was refused (e.g. CONTEXT_FAULTED)
    rung: int | None = None           # the hardware's stamp: when its doorbell was written
    end: int | None = None            # ... and when it ended (None: it did not)
    faulted: bool = False
    output: np.ndarray | None = None  # the words of its output range, read when it ended

    @property
    def latency(self):
        """End minus arrival at the host: waiting in the host's queue and the NPU's, and
        running."""
        return None if self.end is None else self.end - self.arrival


def _place_program(config, size, taken):
    """The highest line-aligned base of ``size`` HBM words overlapping none of ``taken``
    (Segments), or None."""
    line = config.hbm_words_per_cycle
    end = config.hbm_words
    while True:
        base = (end - size) // line * line
        if base < 0:
            return None
        clashes = [t for t in taken if Segment(base, size).overlaps(t)]
        if not clashes:
            return base
        end = min(t.base for t in clashes)


def check_placement(config, who, spad, hbm, me_mask, ve_mask, priority, others,
                    error=DriverError):
    """Raise ``error`` naming ``who`` for settings this NPU cannot hold: a segment that runs
    past the end of its memory or overlaps one of ``others`` (name -> (spad, hbm)), an
    engine mask naming engines it does not have, a priority outside 0..15."""
    for name, segment, total in (("scratchpad", spad, config.spad_rows),
                                 ("HBM", hbm, config.hbm_words)):
        if (not _is_int(segment.base) or not _is_int(segment.size) or segment.base < 0
                or segment.size < 0 or segment.base + segment.size > total):
            raise error(f"{who}: {name} segment base={segment.base!r} size={segment.size!r} "
                        f"does not fit in {total}")
    for other, (other_spad, other_hbm) in others.items():
        for name, mine, theirs in (("scratchpad", spad, other_spad), ("HBM", hbm, other_hbm)):
            if mine.overlaps(theirs):
                raise error(f"{who}: {name} segment base={mine.base} size={mine.size} overlaps "
                            f"{other}'s (base={theirs.base} size={theirs.size}); tenants' "
                            f"segments must be disjoint")
    for name, mask, count in (("ME", me_mask, config.n_me), ("VE", ve_mask, config.n_ve)):
        if not _is_int(mask) or not 0 <= mask < 1 << count:
            raise error(f"{who}: {name} mask {mask!r} names engines this NPU does not have "
                        f"({count})")
    if not _is_int(priority) or not 0 <= priority <= 15:
        raise error(f"{who}: priority must be 0..15, not {priority!r}")


def make_backend(name, config, **options):
    """A backend by name; ``options`` are the backend's own (e.g. vcd, trace, progress)."""
    if name == "golden":
        from runtime.backends.golden import GoldenBackend
        try:
            return GoldenBackend(config, **options)
        except ValueError as error:
            raise DriverError(str(error)) from None
    if name == "perf":
        from runtime.backends.perf.backend import PerfBackend
        try:
            return PerfBackend(config, **options)
        except ValueError as error:
            raise DriverError(str(error)) from None
    if name == "pysim":
        from runtime.backends.pysim import PysimBackend
        return PysimBackend(config, **options)
    if name == "verilator":
        from runtime.backends.verilator import VerilatorBackend
        from runtime.backends.verilog import ToolError
        try:
            return VerilatorBackend(config, **options)
        except ToolError as error:
            raise DriverError(str(error)) from None
    raise DriverError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


class Driver:
    """Builds a host script for one run of the NPU and executes it on a backend."""

    def __init__(self, config: NPUConfig, backend="pysim", **options):
        self.config = config
        self.backend = make_backend(backend, config, **options) if isinstance(backend, str) else backend
        self.script = []
        self.loaded = []
        self.segments = {}            # ctx -> (spad, hbm) of every loaded context
        self.programs = {}            # ctx -> the HBM words its program occupies (Segment)
        self.reserved = []            # HBM Segments no program may be placed in

    # --- setup ------------------------------------------------------------------------------

    def _check_context(self, ctx):
        if not _is_int(ctx) or not 0 <= ctx < self.config.n_ctx:
            raise DriverError(f"context {ctx!r} does not exist; this NPU has contexts 0.."
                              f"{self.config.n_ctx - 1}")

    def _csr(self, name, value, **where):
        self.script.append(ops.CsrWrite(register_address(name, **where), int(value)))

    def set_policy(self, policy):
        try:
            policy = Policy[policy.upper()] if isinstance(policy, str) else Policy(policy)
        except (KeyError, ValueError):
            raise DriverError(f"unknown policy {policy!r}; expected one of "
                              f"{', '.join(p.name.lower() for p in Policy)}") from None
        self._csr("POLICY", policy)

    def set_time_slice(self, cycles):
        if not _is_int(cycles) or not 1 <= cycles < 1 << 32:
            raise DriverError(f"time slice must be a number of cycles from 1 to 2^32-1, "
                              f"not {cycles!r}")
        self._csr("TIME_SLICE", cycles)

    def reserve_hbm(self, segment: Segment):
        """Keep programs placed by `load_context` out of ``segment`` (say, a vNPU's whole HBM
        segment when its requests see windows of it)."""
        for owner, program in self.programs.items():
            if segment.overlaps(program):
                raise DriverError(f"cannot reserve HBM words {segment.base}..{segment.base + segment.size - 1}"
                                  f": context {owner}'s program is there")
        self.reserved.append(segment)

    def load_context(self, ctx, program, spad: Segment, hbm: Segment, *, me_mask=None,
                     ve_mask=None, priority=0, prog_base=None):
        """Program and configure context ``ctx`` (masks default to every engine).

        The program (64-bit words) is written to HBM, two words each, low half first, from
        ``prog_base``: by default the highest place at a line boundary outside every loaded
        context's segments and programs and every reserved range. A data segment must not
        overlap any program: the dispatcher fetches programs while contexts run."""
        cfg = self.config
        self._check_context(ctx)
        words = []
        for i, word in enumerate(program):
            if not _is_int(word) or not 0 <= word < 1 << 64:
                raise DriverError(f"context {ctx}: program word {i} is {word!r}, not a 64-bit "
                                  f"unsigned integer")
            words.append(int(word))
        me_mask = (1 << cfg.n_me) - 1 if me_mask is None else me_mask
        ve_mask = (1 << cfg.n_ve) - 1 if ve_mask is None else ve_mask
        check_placement(cfg, f"context {ctx}", spad, hbm, me_mask, ve_mask, priority,
                        {f"context {other}": segments for other, segments in
                         self.segments.items() if other != ctx})
        programs = {other: segment for other, segment in self.programs.items() if other != ctx}
        for other, segment in programs.items():
            if hbm.overlaps(segment):
                raise DriverError(f"context {ctx}: HBM segment base={hbm.base} size={hbm.size} "
                                  f"overlaps context {other}'s program (HBM words "
                                  f"{segment.base}..{segment.base + segment.size - 1})")
        taken = [hbm] + [h for other, (_, h) in self.segments.items() if other != ctx] \
            + list(programs.values()) + self.reserved
        size = 2 * len(words)
        if prog_base is None:
            prog_base = _place_program(cfg, size, taken)
            if prog_base is None:
                raise DriverError(f"context {ctx}: no room in HBM for its program of "
                                  f"{len(words)} words ({size} HBM words, from a multiple of "
                                  f"{cfg.hbm_words_per_cycle}): segments, other programs and "
                                  f"reserved ranges leave no free range that large")
        else:
            line = cfg.hbm_words_per_cycle
            if not _is_int(prog_base) or prog_base < 0 or prog_base % line \
                    or prog_base + size > cfg.hbm_words:
                raise DriverError(f"context {ctx}: program base {prog_base!r} must be a "
                                  f"multiple of {line} (an HBM line) with its {size} HBM words "
                                  f"inside HBM's {cfg.hbm_words}")
            clash = next((t for t in taken if Segment(prog_base, size).overlaps(t)), None)
            if clash is not None:
                raise DriverError(f"context {ctx}: program at HBM {prog_base}..{prog_base + size - 1} "
                                  f"overlaps HBM words {clash.base}..{clash.base + clash.size - 1} "
                                  f"(a data segment, another program or a reserved range)")
        self.load_hbm(prog_base, program_hbm_words(words))
        for name, value in (("PROG_BASE", prog_base), ("PROG_LEN", len(words)),
                            ("SPAD_BASE", spad.base),
                            ("SPAD_SIZE", spad.size), ("HBM_BASE", hbm.base),
                            ("HBM_SIZE", hbm.size), ("ME_MASK", me_mask), ("VE_MASK", ve_mask),
                            ("PRIORITY", priority)):
            self._csr(name, value, ctx=ctx)
        self.segments[ctx] = (spad, hbm)
        self.programs[ctx] = Segment(prog_base, size)
        if ctx not in self.loaded:
            self.loaded.append(ctx)

    def write_spad(self, row, rows):
        """Write physical scratchpad rows starting at ``row`` (short rows are zero-padded)."""
        cfg = self.config
        rows = _words(rows, "scratchpad values", ndim=2)
        if rows.shape[1] > cfg.ve_lanes:
            raise DriverError(f"rows of {rows.shape[1]} values do not fit in {cfg.ve_lanes} lanes")
        if not _is_int(row) or row < 0 or row + len(rows) > cfg.spad_rows:
            raise DriverError(f"scratchpad rows {row}..{row + len(rows) - 1} are outside 0.."
                              f"{cfg.spad_rows - 1}")
        for i, values in enumerate(rows):
            padded = np.zeros(cfg.ve_lanes, dtype=np.int64)
            padded[:len(values)] = values
            self.script.append(ops.SpadWrite(row + i, tuple(int(v) for v in padded)))

    def _hbm_words(self, address, words):
        words = _words(words, "HBM values").reshape(-1)
        last = self.config.hbm_words - 1
        if not _is_int(address) or address < 0 or address + len(words) > last + 1:
            raise DriverError(f"HBM words {address}..{address + len(words) - 1} are outside 0.."
                              f"{last}")
        return words

    def load_hbm(self, address, words):
        """Copy HBM words starting at ``address`` through the back door (``HbmLoad``): in no
        cycles, as a host copies a model's image into device memory before a run."""
        words = self._hbm_words(address, words)
        self.script.append(ops.HbmLoad(address, np.asarray(words, dtype=np.int64)))

    def write_hbm(self, address, words):
        """Write HBM words starting at ``address`` through the host's HBM port, a line per
        accepted request (partial lines are masked), competing with the DMA engines."""
        cfg = self.config
        words = self._hbm_words(address, words)
        per_line = cfg.hbm_words_per_cycle
        position = address
        while position < address + len(words):
            line, offset = divmod(position, per_line)
            take = min(per_line - offset, address + len(words) - position)
            values = [0] * per_line
            mask = 0
            for j in range(take):
                values[offset + j] = int(words[position - address + j])
                mask |= 1 << (offset + j)
            self.script.append(ops.HbmWrite(line, tuple(values), mask))
            position += take

    # --- running ------------------------------------------------------------------------------

    def _contexts(self, contexts):
        contexts = self.loaded if contexts is None else list(contexts)
        if not contexts:
            raise DriverError("no context to run: load one with load_context() first")
        for c in contexts:
            self._check_context(c)
            if c not in self.loaded:
                raise DriverError(f"context {c} was not loaded; loaded: {self.loaded}")
        if len(set(contexts)) != len(contexts):
            raise DriverError(f"contexts {contexts} name a context more than once")
        return contexts

    def _check_reads(self, max_cycles, read_spad, read_hbm):
        if not _is_int(max_cycles) or max_cycles < 1:
            raise DriverError(f"max_cycles must be a positive integer, not {max_cycles!r}")
        cfg = self.config
        for what, ranges, total in (("scratchpad rows", read_spad, cfg.spad_rows),
                                    ("HBM words", read_hbm, cfg.hbm_words)):
            for first, count in ranges:
                if (not _is_int(first) or not _is_int(count) or first < 0 or count < 1
                        or first + count > total):
                    raise DriverError(f"cannot read {count!r} {what} from {first!r}: the "
                                      f"memory has {total}")

    def run(self, *, contexts=None, max_cycles=1_000_000, read_spad=(), read_hbm=(),
            timeline=False):
        """Start ``contexts`` (default: every loaded one), run until none is running (or
        ``max_cycles``), then read status, counters and the requested memory. With
        ``timeline`` the result's ``timeline`` says which µTOp each engine ran when."""
        contexts = self._contexts(contexts)
        self._check_reads(max_cycles, read_spad, read_hbm)
        self._check_timeline(timeline)
        script = list(self.script)
        script.append(ops.CsrWrite(register_address("START"), sum(1 << c for c in contexts)))
        script.append(ops.Run(max_cycles, timeline))
        tail, reads = self._readback(contexts, read_spad, read_hbm)
        results = iter(self.backend.execute(script + tail))
        cycles, timed_out, *events = next(results)
        run = self._result(results, cycles, timed_out, contexts, reads, read_spad, read_hbm)
        if timeline:
            run.timeline = self._timeline(events[0])
        return run

    def _timeline(self, events):
        """The backend's (cycle, engine, activity port field) events as RunResult.timeline."""
        ctx_bits = activity_fields(self.config)[0]
        return [(cycle, engine, value & ((1 << ctx_bits) - 1), value >> ctx_bits)
                for cycle, engine, value in events]

    def _check_timeline(self, timeline):
        if timeline and self.backend.name == "golden":
            raise DriverError(f"the golden backend has no time, hence no timeline: use one of "
                              f"{', '.join(TIMED_BACKENDS)}")

    def serve(self, arrivals, *, offsets=None, outputs=None, after=None, contexts=None,
              max_cycles=1_000_000, read_spad=(), read_hbm=(), timeline=False):
        """Hand the loaded contexts requests over time, free-running on the backend as a
        host driver would (runtime.backends.script.Serve).

        ``arrivals`` are (cycle, context) pairs in time order, cycles counted from the start
        of the stream; with ``after[i]`` set, request i arrives instead when request
        ``after[i]`` (an earlier one) completes (closed loop; its cycle is ignored). A request
        waits in the host's queue of its context until the context holds fewer than
        ``queue_depth`` + 1 rung and not completed, so the hardware never refuses one as
        QUEUE_FULL; then its DOORBELL is written with its offset (``offsets``, default 0:
        added to HBM_BASE while it runs). ``outputs[i]`` is an (address, count) HBM range
        (or None) the host reads as soon as it sees request i completed. Returns (RunResult,
        RequestResult per request); rung and end cycles are the hardware's stamps.

        The host polls completions every poll interval (16 cycles) and at each timed
        arrival; its bus operations take cycles, and its reads share HBM with the engines,
        as a real host's would. A context's requests must not write an output range that
        one of its next ``queue_depth`` + 1 requests also writes (it could run before the
        host reads). Stamps count cycles modulo 2^31: a stream must end within 2^31
        cycles. With ``timeline`` the run's ``timeline`` says which context each engine ran
        when (pysim and verilator)."""
        cfg = self.config
        contexts = self._contexts(contexts)
        self._check_reads(max_cycles, read_spad, read_hbm)
        self._check_timeline(timeline)
        try:
            arrivals = [(cycle, c) for cycle, c in arrivals]
        except (TypeError, ValueError):
            raise DriverError("arrivals must be (cycle, context) pairs") from None
        if not arrivals:
            raise DriverError("no requests to serve: give at least one (cycle, context)")
        n = len(arrivals)
        offsets = [0] * n if offsets is None else list(offsets)
        outputs = [None] * n if outputs is None else list(outputs)
        after = [None] * n if after is None else list(after)
        for what, values in (("offsets", offsets), ("outputs", outputs), ("after", after)):
            if len(values) != n:
                raise DriverError(f"{len(values)} {what} for {n} requests")
        previous = 0
        for index, ((cycle, c), offset, output, before) in enumerate(
                zip(arrivals, offsets, outputs, after)):
            if c not in contexts:
                raise DriverError(f"request {index}: context {c!r} is not one of {contexts}")
            if not _is_int(offset) or not 0 <= offset < 1 << 32:
                raise DriverError(f"request {index}: HBM offset {offset!r} is not a 32-bit "
                                  f"unsigned value")
            segment = self.segments[c][1]
            window = Segment(segment.base + offset, segment.size)
            for owner, program in self.programs.items():
                if window.overlaps(program):
                    raise DriverError(
                        f"request {index}: with offset {offset} context {c}'s HBM window "
                        f"(base={window.base} size={window.size}) covers context {owner}'s "
                        f"program (HBM words {program.base}..{program.base + program.size - 1})")
            if output is not None:
                self._check_reads(max_cycles, (), [output])
            if before is not None:
                if not _is_int(before) or not 0 <= before < index:
                    raise DriverError(f"request {index}: after={before!r} must name an earlier "
                                      f"request (0..{index - 1})")
                continue
            if not _is_int(cycle) or cycle < previous:
                raise DriverError(f"request {index}: cycle {cycle!r} must be an integer, not "
                                  f"before the timed request ahead of it ({previous})")
            previous = cycle
        if previous + max_cycles >= 1 << 31:
            raise DriverError(f"a stream of {previous} cycles plus max_cycles={max_cycles} "
                              f"does not fit the 2^31-cycle stamps")
        capacity = cfg.queue_depth + 1
        mine = {c: [i for i, (_, d) in enumerate(arrivals) if d == c] for c in contexts}
        for c, indexes in mine.items():
            for k, i in enumerate(indexes):
                for j in indexes[k + 1:k + 1 + capacity]:
                    if outputs[i] and outputs[j] and _overlap(outputs[i], outputs[j]):
                        raise DriverError(
                            f"requests {i} and {j} of context {c} write the same HBM words, "
                            f"and {j} may run before the host reads {i}'s: give a context's "
                            f"requests at least {capacity + 1} output slots in turn")
        host_error = register_address("HOST_ERROR")
        per_line = cfg.hbm_words_per_cycle
        order = {c: k for k, c in enumerate(contexts)}
        requests = []
        for (cycle, c), offset, output, before in zip(arrivals, offsets, outputs, after):
            lines = (0, 0)
            if output is not None:
                first = output[0] // per_line
                lines = (first, (output[0] + output[1] - 1) // per_line - first + 1)
            requests.append(ops.Request(order[c], int(offset), 0 if before is not None
                                        else int(cycle), before, lines))
        serve = ops.Serve(host_error, tuple(ops.ServeContext(
            register_address("DOORBELL", ctx=c), register_address("COMPLETION", ctx=c),
            capacity) for c in contexts), tuple(requests), max_cycles, bool(timeline))
        # Setup must have been accepted before the stream (HOST_ERROR keeps the first
        # refusal): read it, then clear it for the doorbells.
        script = list(self.script) + [ops.CsrRead(host_error), ops.CsrWrite(host_error, 0),
                                      serve]
        tail, reads = self._readback(contexts, read_spad, read_hbm)
        results = iter(self.backend.execute(script + tail))
        setup_error = next(results)
        if setup_error:
            raise DriverError(f"the NPU refused a host write: {HostError(setup_error & 0xFF).name} "
                              f"at register address 0x{setup_error >> 32:x}")
        mark, cycles, busy, served, events = next(results)
        run = self._result(results, cycles, busy, contexts, reads, read_spad, read_hbm)
        run.timeline = None if events is None else self._timeline(events)

        def since_mark(stamp):
            return (stamp - mark) % (1 << 31)

        results = []
        for (_, c), offset, output, (arrival, error, entry, words) in zip(
                arrivals, offsets, outputs, served):
            request = RequestResult(c, offset, arrival, HostError(error) if error else None)
            if entry >> 63:
                request.rung = since_mark((entry >> 31) & (2**31 - 1))
                request.end = since_mark(entry & (2**31 - 1))
                request.faulted = bool(entry >> 62 & 1)
                if output is not None:
                    skip = output[0] % per_line
                    request.output = np.array(words[skip:skip + output[1]], dtype=np.int64)
            results.append(request)
        return run, results

    def _hbm_reads(self, ranges):
        """Host operations reading the HBM lines that hold ``ranges`` ((address, count))."""
        per_line = self.config.hbm_words_per_cycle
        return [ops.HbmRead(line) for address, count in ranges
                for line in range(address // per_line, (address + count - 1) // per_line + 1)]

    def _hbm_values(self, results, ranges):
        """The words of ``ranges`` from the results of `_hbm_reads`, one array per range."""
        per_line = self.config.hbm_words_per_cycle
        values = []
        for address, count in ranges:
            first, last = address // per_line, (address + count - 1) // per_line
            lines = np.concatenate([next(results) for _ in range(first, last + 1)])
            offset = address - first * per_line
            values.append(lines[offset:offset + count].astype(np.int64))
        return values

    def _readback(self, contexts, read_spad, read_hbm):
        """Host operations that read every context's and engine's registers and the
        requested memory after a run, and the keys of the register reads."""
        cfg = self.config
        script, reads = [], []
        for c in contexts:
            for register in CONTEXT:
                if register.access in (Access.RO, Access.RW):
                    reads.append(("ctx", c, register.name))
        n_engines = cfg.n_me + cfg.n_ve + cfg.n_dma
        for e in range(n_engines):
            for register in ENGINE[:4] + ENGINE[4:4 + cfg.n_ctx]:
                reads.append(("engine", e, register.name))
        for kind, index, name in reads:
            where = {"ctx": index} if kind == "ctx" else {"engine": index}
            script.append(ops.CsrRead(register_address(name, **where)))
        script.append(ops.CsrRead(register_address("HOST_ERROR")))
        for row, count in read_spad:
            script += [ops.SpadRead(r) for r in range(row, row + count)]
        script += self._hbm_reads(read_hbm)
        return script, reads

    def _result(self, results, cycles, timed_out, contexts, reads, read_spad, read_hbm):
        cfg = self.config
        values = {}
        for key in reads:
            values[key] = next(results)
        context_results = []
        details = getattr(self.backend, "context_details", {})
        for c in contexts:
            counters = {r.name: values[("ctx", c, r.name)] for r in CONTEXT
                        if ("ctx", c, r.name) in values}
            outcome = details.get(c)
            context_results.append(ContextResult(
                Status(counters.pop("STATUS")), Fault(counters.pop("FAULT")),
                counters.pop("FAULT_PC"), counters,
                fault_detail=outcome.fault_detail if outcome else "",
                races=list(outcome.races) if outcome else [],
                restart_hazards=list(outcome.restart_hazards) if outcome else []))
        host_error = next(results)
        if host_error:
            raise DriverError(f"the NPU refused a host write: {HostError(host_error & 0xFF).name} "
                              f"at register address 0x{host_error >> 32:x}")
        n_engines = cfg.n_me + cfg.n_ve + cfg.n_dma
        engines = []
        for e in range(n_engines):
            engines.append({name: values[("engine", e, name)]
                            for kind, index, name in reads if kind == "engine" and index == e})
        result = RunResult(cycles, timed_out, context_results, engines,
                           trace=list(getattr(self.backend, "trace_events", [])),
                           timed=getattr(self.backend, "timed", True))
        for row, count in read_spad:
            result.spad[(row, count)] = np.array([next(results) for _ in range(count)],
                                                 dtype=np.int64)
        for key, values in zip(read_hbm, self._hbm_values(results, read_hbm)):
            result.hbm[tuple(key)] = values
        return result
