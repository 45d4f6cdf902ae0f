"""How long one µTOp keeps its engine: the matrix, vector and DMA engines' pipelines at
the granularity of instructions (never of rows or MACs), as hw/ builds them.

Every figure is a cycle offset from the µTOp's *issue* (the cycle the dispatcher hands it
to the engine; the engine shows it running from the next cycle) to its *retirement* (the
cycle the engine reports it done; the engine is free from the next cycle). The rules,
read from the RTL and held to it by the validation (`neu10 validate`):

- **Front end** (hw/utop_front_end.py, the body FIFO in hw/npu.py): the body streams into
  the engine's FIFO one word per cycle from issue + 1; the first instruction is in the
  engine's instruction register at issue + ``FIRST_INSTRUCTION``; an instruction leaves
  the register when the engine takes it, and the next is there two cycles later (the
  register refills the cycle after it empties). A µTOp retires once its last instruction
  has left and its pipelines are empty.
- **Vector engine**: an instruction is taken when the issue stage takes its last row of
  the one before (rows issue one per cycle); a row that writes lands
  ``VE_WRITE_LATENCY`` cycles after it issues (one fewer without a write); an instruction
  that reads a row covered by the writes still pending waits until the pipeline is empty,
  as do ``vsetq`` and ``vsetvl``.
- **Matrix engine**: ``ldw`` loads k rows one per cycle into the idle weight buffer (free
  two cycles after its last request); ``mm`` streams m rows once the streamer is free and
  the weights it multiplies have arrived; a row's result is written ``array_rows +
  array_cols + 4`` cycles after it enters. An ``ldw`` waits until the rows that used its
  buffer have left the array; an instruction that reads rows an ``mm`` is still writing
  waits for those writes. The writer's reads of old rows (``acc``) yield the port to
  weight loads.
- **DMA engine**: a load requests its HBM lines one per cycle as HBM grants them (the
  ``HbmArbiter``, shared with the other DMA engines and program fetch); its rows are written ``hbm_latency + 4`` cycles after the last line
  is granted; a load may start once the earlier loads have requested every line, a store
  or gather once everything before it is done. A store reads its rows and emits their
  lines from three cycles after it starts.

What is not modelled (the validation measures what it costs): scratchpad bank conflicts
between engines and the priority of owners' traffic over borrowed engines' (harvest),
the matrix engine's output-FIFO credits when the writer is held up, a `dgather` row that
straddles two HBM lines (rows are taken as aligned), the hazard of two `acc` rows for
the same destination back to back, and which row of a faulting `dgather` faults (the
first is assumed).
"""

import math
from dataclasses import dataclass

from isa.encoding import Engine
from isa.golden import loop_operands
from .hbm_arbiter import Stream

__all__ = ["FIRST_INSTRUCTION", "VE_WRITE_LATENCY", "DmaJob", "UTopTiming", "faulting_timing",
           "me_timing", "stream_end", "utop_timing", "ve_rows", "ve_timing"]

#: Cycles from a µTOp's issue to its first instruction in the engine's register: the body
#: word is written into the engine's FIFO at issue + 1, read out two cycles later, held a
#: cycle in the register.
FIRST_INSTRUCTION = 4
#: Cycles from the issue of a VE row that reads and writes the scratchpad to the cycle
#: its write has landed (a cycle less without a read, and without a write).
VE_WRITE_LATENCY = 5
#: Cycles from a dgather's start to the first row's index in the engine (a scratchpad
#: read): a gather whose index is outside the segment faults then.
_GATHER_INDEX_CYCLES = 4
#: Loop iterations followed one by one before the rest repeat the last one's step (the
#: pipelines reach their steady pattern within a few iterations).
_LOOP_ITERATIONS_FOLLOWED = 4


@dataclass(frozen=True)
class UTopTiming:
    """When a µTOp retires, counted from its issue, the rows (ME), rows (VE) or words (DMA)
    its engine works on (the engine's WORK counter), and the engine's state after it that
    the next µTOp's timing depends on (the VE's span of pending writes)."""
    retire: int
    work: int
    state: tuple | None = None


def stream_end(length):
    """The first cycle (from issue) at which the context may issue its next µTOp: the body
    streamer hands over one body word per cycle from issue + 1 (an empty body still takes
    that cycle)."""
    return max(length, 1) + 1


def _overlaps(span, lo, hi):
    """Rows lo..hi (inclusive) meet the half-open span (a, b)."""
    return span is not None and lo <= hi and lo < span[1] and span[0] <= hi


def _merge(span, lo, hi):
    return (lo, hi + 1) if span is None else (min(span[0], lo), max(span[1], hi + 1))


# --- vector engine ------------------------------------------------------------------------------

def ve_rows(name, args, config):
    """(rows issued, rows read as inclusive (lo, hi) spans, rows written (lo, hi) or None)."""
    if name.startswith("vpool"):
        reads = [(args["src"], args["src"] + (args["kh"] - 1) * args["pitch"] + args["kw"] - 1)]
        return args["kh"] * args["kw"], reads, (args["dst"], args["dst"])
    if name == "vldlut":
        return config.lut_rows, [(args["src"], args["src"] + config.lut_rows - 1)], None
    if name == "vld":
        return 1, [(args["src"], args["src"])], None
    if name == "vst":
        return 1, [], (args["dst"], args["dst"])
    n = args["n"]
    if name in ("vrsum", "vrmax", "vrmin"):
        return n, [(args["src"], args["src"] + (n - 1) * args["stride"])], (args["dst"],) * 2
    if "src" in args:                       # vrq, vrqr, vlut, vlsum, vlmax, vlmin
        return n, [(args["src"], args["src"] + n - 1)], (args["dst"], args["dst"] + n - 1)
    reads = [(args["a"], args["a"] + n - 1)]                  # the ALU operations
    if "b" in args:
        reads.append((args["b"], args["b"] + n - 1))
    return n, reads, (args["dst"], args["dst"] + n - 1)


class _VectorPipeline:
    """The vector engine's sequencer and issue stage, one instruction at a time.

    ``span`` is the engine's register of the rows its pending writes cover (half-open): an
    instruction that writes sets it when nothing is pending and widens it otherwise, so an
    instruction that makes the pipeline pending without writing (vld, vldlut) leaves the
    span as the engine last had it, from an earlier µTOp too: the engine's state
    (``span`` in, ``span`` out)."""

    def __init__(self, config, span=(0, 0)):
        self.config = config
        self.ready = FIRST_INSTRUCTION   # the next instruction is in the register
        self.issue_free = 0              # the issue stage takes an instruction from here
        self.empty = 0                   # every row issued so far has retired
        self.span = span
        self.rows = 0

    def run(self, instr, dst_offset=0, src_offset=0):
        name = instr.op.mnemonic
        if name == "loop":
            self.ready += 2
            return
        if name in ("vsetq", "vsetvl"):
            self.ready = max(self.ready, self.empty) + 2
            return
        take = max(self.ready, self.issue_free)
        args = loop_operands(instr, dst_offset, src_offset)
        rows, reads, writes = ve_rows(name, args, self.config)
        if take < self.empty and any(_overlaps(self.span, lo, hi) for lo, hi in reads):
            take = self.empty
        if writes is not None:
            self.span = _merge(self.span, *writes) if take < self.empty else \
                (writes[0], writes[1] + 1)
        last = take + rows
        self.issue_free = last
        # A row that reads the scratchpad executes a cycle later than one that does not
        # (vst); one that writes retires a cycle after it executes.
        latency = VE_WRITE_LATENCY - (not reads) - (writes is None)
        self.empty = max(self.empty, last + latency)
        self.ready = take + 2
        self.rows += rows

    def shift(self, cycles, reach):
        """Move the pipeline on by ``cycles`` (loop iterations not followed), its pending
        writes by ``reach`` rows."""
        self.ready += cycles
        self.issue_free += cycles
        self.empty += cycles
        self.span = (self.span[0] + min(0, reach), self.span[1] + max(0, reach))

    def idle(self):
        """Every row issued so far has retired from here."""
        return self.empty

    def retire(self):
        return max(self.empty, self.ready - 1)


def _loop_body(body, index):
    """The instructions the `loop` or `mmloop` at ``index`` repeats; None for another
    instruction or a malformed loop (the engine faults at it)."""
    instr = body[index]
    n = instr.repeats
    inner = body[index + 1:index + 1 + n]
    if not n or len(inner) < n or any(i.repeats for i in inner) or (
            instr.op.mnemonic == "mmloop" and [i.op.mnemonic for i in inner] != ["ldw", "mm"]):
        return None
    return inner


def _body_loops(body):
    """(instruction, None) for plain ones, (loop, its body) for loops and mmloops, up to a
    malformed loop (a µTOp that faults there runs what comes before it)."""
    index = 0
    while index < len(body):
        instr = body[index]
        if instr.op.mnemonic not in ("loop", "mmloop"):
            yield instr, None
            index += 1
            continue
        inner = _loop_body(body, index)
        if inner is None:
            return
        yield instr, inner
        index += 1 + len(inner)


def ve_timing(body, config, state=(0, 0)):
    """Retirement offset and rows of a VE µTOp on an engine in ``state``."""
    pipeline = _VectorPipeline(config, state)
    for instr, loop_body in _body_loops(body):
        if loop_body is None:
            pipeline.run(instr)
            continue
        pipeline.run(instr)                                # the loop word itself
        rows_before = pipeline.rows
        d, s = instr.args["dst_stride"], instr.args["src_stride"]
        count = instr.args["count"]
        followed = min(count, _LOOP_ITERATIONS_FOLLOWED)
        before = pipeline.ready
        for t in range(followed):
            before = pipeline.ready
            for inner in loop_body:
                pipeline.run(inner, t * d, t * s)
        rest = count - followed
        if rest:
            per_iteration = (pipeline.rows - rows_before) // followed
            pipeline.shift(rest * (pipeline.ready - before), rest * d)
            pipeline.rows += rest * per_iteration
    return UTopTiming(pipeline.retire(), pipeline.rows, pipeline.span)


# --- matrix engine ------------------------------------------------------------------------------

class _MatrixPipeline:
    """The matrix engine's sequencer, weight loader, streamer and writer."""

    def __init__(self, config):
        self.lag = config.array_rows + config.array_cols + 2   # row issue -> writer's read
        self.drain = config.array_rows + config.array_cols + 1  # row issue -> out of the array
        self.ready = FIRST_INSTRUCTION
        self.load_free = 0               # the loader takes an ldw from here
        self.current = 0                 # the weight buffer the next mm multiplies
        self.stream_free = 0
        self.stream_buffer = 0
        self.drained = [0, 0]            # per buffer: its rows have left the array
        self.writer_free = 0             # the writer takes the next row from here
        self.pending_clear = 0           # every write of an mm has landed
        self.span = None
        self.writes = []                 # per mm: [rows arrive, first read, last read, acc]
        self.issued = []                 # [first, last]: cycles the streamer issues rows
        self.credits = config.array_rows + config.array_cols + 8     # output FIFO depth
        self.rows = 0

    def _wait_writes(self, cycle, lo, hi):
        if cycle >= self.pending_clear:
            self.span = None
            return cycle
        if _overlaps(self.span, lo, hi):
            return self.pending_clear
        return cycle

    def _hold(self, first, last):
        """The loader holds the writer's read port in cycles first..last: if the writer
        has an ``acc`` row to read by then, it and every row after it wait until the port
        is free; if the rows issued meanwhile run the streamer out of output-FIFO credits,
        the streamer waits too."""
        held_from, previous_end = None, None
        for segment in self.writes:            # [arrives, first read, last read, acc]
            if held_from is not None:
                rows = segment[2] - segment[1]
                segment[1] = max(segment[0], previous_end + 1)
                segment[2] = segment[1] + rows
            elif segment[3] and max(first, segment[1]) <= segment[2]:
                held_from = max(first, segment[1])
                segment[2] += last - held_from + 1
            previous_end = segment[2]
        if held_from is None:
            return
        self.writer_free = previous_end + 1
        self.pending_clear = max(self.pending_clear, previous_end + 3)
        # Rows between issue and their write when the writer resumes: the FIFO's credits.
        window = (held_from - self.lag - 1, last + 2)
        in_flight = sum(max(0, min(b, window[1]) - max(a, window[0]) + 1) for a, b in self.issued)
        stall = in_flight - self.credits
        if stall > 0 and self.stream_free > first:
            self.stream_free += stall
            self.issued[-1][1] += stall

    def ldw(self, src, k):
        nxt = 1 - self.current
        start = max(self.ready, self.load_free, self.drained[nxt])
        if self.stream_free > start and self.stream_buffer == nxt:
            start = self.stream_free
        start = self._wait_writes(start, src, src + k - 1)
        self.load_free = start + k + 2
        self._hold(start + 1, start + k)
        self.current = nxt
        self.ready = start + 2

    def mm(self, src, dst, m, acc):
        start = max(self.ready, self.stream_free, self.load_free)
        start = self._wait_writes(start, src, src + m - 1)
        first, last = start + 1, start + m
        self.stream_free = last + 1
        self.stream_buffer = self.current
        self.drained[self.current] = last + self.drain
        begin = max(first + self.lag, self.writer_free)
        end = begin + m - 1
        self.writer_free = end + 1
        self.pending_clear = max(self.pending_clear, end + 3)
        self.span = _merge(self.span, dst, dst + m - 1)
        self.writes = [w for w in self.writes if w[2] >= start] + [[first + self.lag, begin, end, acc]]
        self.issued = [w for w in self.issued if w[1] >= start - self.lag - 8] + [[first, last]]
        self.ready = start + 2
        self.rows += m

    def idle(self):
        """The loader, the streamer and the writer are done from here."""
        return max(self.load_free, self.stream_free, self.pending_clear)

    def retire(self):
        return max(self.idle(), self.ready - 1)


def me_timing(body, config):
    """Retirement offset and rows streamed of an ME µTOp."""
    pipeline = _MatrixPipeline(config)
    for instr, pair in _body_loops(body):
        if pair is None:
            args = instr.args
            if instr.op.mnemonic == "ldw":
                pipeline.ldw(args["src"], args["k"])
            else:
                pipeline.mm(args["src"], args["dst"], args["m"], args["acc"])
            continue
        pipeline.ready += 2                          # the mmloop word leaves the register
        ldw, mm = pair
        for t in range(instr.args["count"]):
            pipeline.ldw(ldw.args["src"] + t * instr.args["w_stride"], ldw.args["k"])
            pipeline.mm(mm.args["src"] + t * instr.args["x_stride"], mm.args["dst"],
                        mm.args["m"], mm.args["acc"] or t > 0)
    return UTopTiming(pipeline.retire(), pipeline.rows)


# --- DMA engine ---------------------------------------------------------------------------------

def _lines(first, rows, hstride, span, words):
    """HBM lines a strided copy touches: row r spans words first + r*hstride onwards; the
    offsets within a line repeat with a period of words / gcd(hstride, words) rows."""
    def lines(r):
        return ((first + r * hstride) % words + span + words - 1) // words
    period = words // math.gcd(hstride % words, words) if hstride % words else 1
    if rows <= period:
        return sum(lines(r) for r in range(rows))
    whole, rest = divmod(rows, period)
    return whole * sum(lines(r) for r in range(period)) + sum(lines(r) for r in range(rest))


class DmaJob:
    """A DMA µTOp from its issue to its retirement: instructions in order, each copy one
    stream of HBM line requests on the engine's port of ``hbm`` (an HbmArbiter), so
    copies of several engines (and program fetch) share HBM as the RTL's arbiter shares
    it. ``retired(cycle, words)`` is called once the retirement cycle is known. With
    ``stop``, instruction number ``stop`` (of a body of ``length`` words) faults."""

    def __init__(self, body, config, issue, port, hbm, hbm_base, retired, stop=None, length=0):
        self.body, self.config, self.port, self.hbm = body, config, port, hbm
        self.stop, self.body_words = stop, length     # a fault at instruction ``stop``
        self.hbm_base, self.retired = hbm_base, retired
        self.ready = issue + FIRST_INSTRUCTION
        self.exec_free = self.tail_free = issue   # all done / the last job's lines asked
        self.after_load = True    # the last job was a load or gather (or there was none)
        self.length, self.packed, self.hstride = config.ve_lanes, False, config.ve_lanes
        self.moved = self.index = 0
        self.copy = None          # (name, rows, start) of the copy in flight
        self.stream = None
        self._next()

    def _next(self):
        cfg = self.config
        while self.index < len(self.body):
            if self.index == self.stop:
                # The faulting instruction faults in the register, or a gather once it has
                # its first row's index (taken to be the row that faults).
                at = self.ready + (_GATHER_INDEX_CYCLES
                                   if self.body[self.index].op.mnemonic == "dgather" else 0)
                drained = at + self.body_words - (self.index + 1) + 1
                self.retired(max(self.exec_free, drained), self.moved)
                return
            instr = self.body[self.index]
            self.index += 1
            name = instr.op.mnemonic
            if name in ("dcfg", "dbase"):
                take = max(self.ready, self.tail_free if self.after_load else self.exec_free)
                if name == "dcfg":
                    self.length, self.packed = instr.args["len"], bool(instr.args["i8"])
                    self.hstride = instr.args["hstride"]
                self.ready = take + 2
                continue
            span = (self.length + 3) // 4 if self.packed else self.length
            rows = instr.args["rows"]
            self.moved += rows * span
            words = cfg.hbm_words_per_cycle
            if name == "dgather":      # rows taken as aligned to lines
                lines = -(-span // words)
            else:
                lines = _lines(self.hbm_base + instr.args["hbm"], rows, self.hstride, span, words)
            if name == "dstore":
                start = max(self.ready, self.exec_free)
                first = start + 3
            else:
                start = max(self.ready, self.tail_free if self.after_load and name == "dload"
                            else self.exec_free)
                first = start + (_GATHER_INDEX_CYCLES - 1 if name == "dgather" else 1)
            self.ready = start + 2
            if name == "dgather":
                # A row of indices (a scratchpad read) serves ve_lanes rows: each group of
                # rows requests its lines once its indices are in.
                group = min(rows, cfg.ve_lanes)
                self.copy = (name, rows - group, lines)
                self.stream = Stream(self.port, first, group * lines, done=self._copied)
            else:
                self.copy = (name, 0, lines)
                self.stream = Stream(self.port, first, lines, done=self._copied)
            self.hbm.add(self.stream)
            return
        self.retired(max(self.exec_free, self.ready - 1), self.moved)

    def _copied(self, last):
        name, rows_left, lines = self.copy
        if rows_left:                  # the gather's next group, after its indices
            group = min(rows_left, self.config.ve_lanes)
            self.copy = (name, rows_left - group, lines)
            self.stream = Stream(self.port, last + _GATHER_INDEX_CYCLES - 1, group * lines,
                                 done=self._copied)
            self.hbm.add(self.stream)
            return
        if name == "dstore":
            self.exec_free = self.tail_free = last + 2
        else:
            self.exec_free = max(self.exec_free, last + self.config.hbm_latency + 4)
            self.tail_free = last + 2
        self.after_load = name != "dstore"
        self._next()


def _steps(body):
    """A body's instructions in the order an engine runs them, loop iterations one by one:
    (instruction, the position of its word, its iteration, its loop or None). A malformed
    loop runs on as plain instructions (it faults on the way: see ``faulting_timing``)."""
    index = 0
    while index < len(body):
        instr = body[index]
        yield instr, index, 0, None
        inner = _loop_body(body, index)
        if inner is None:
            index += 1
            continue
        for t in range(instr.args["count"]):
            for k, inner_instr in enumerate(inner):
                yield inner_instr, index + 1 + k, t, instr
        index += 1 + len(inner)


def faulting_timing(engine, body, config, stop, length, state=(0, 0)):
    """An ME or VE µTOp of ``length`` body words whose instruction number ``stop`` (in the
    order they run) faults: the ones before it run; it faults when it reaches the
    instruction register; the engine then takes the rest of the body unread, a word a
    cycle, and retires once its pipelines are empty."""
    pipeline = _MatrixPipeline(config) if engine == Engine.ME else _VectorPipeline(config, state)
    for step, (instr, position, t, loop) in enumerate(_steps(body)):
        if step == stop:
            taken = position + 1 if loop is None or t == 0 else \
                body.index(loop) + 1 + loop.repeats
            retire = max(pipeline.idle(), pipeline.ready + length - taken + 1)
            return UTopTiming(retire, pipeline.rows, getattr(pipeline, "span", None))
        name, args = instr.op.mnemonic, instr.args
        if engine == Engine.VE:
            if loop is None:
                pipeline.run(instr)
            else:
                pipeline.run(instr, t * loop.args["dst_stride"], t * loop.args["src_stride"])
        elif name == "mmloop":
            pipeline.ready += 2
        elif name == "ldw":
            pipeline.ldw(args["src"] + (t * loop.args["w_stride"] if loop else 0), args["k"])
        else:
            pipeline.mm(args["src"] + (t * loop.args["x_stride"] if loop else 0), args["dst"],
                        args["m"], args["acc"] or (loop is not None and t > 0))
    # The faulting word did not decode: it is the word after the ones that did.
    retire = max(pipeline.idle(), pipeline.ready + length - (len(body) + 1) + 1)
    return UTopTiming(retire, pipeline.rows, getattr(pipeline, "span", None))


def utop_timing(engine, body, config, state=(0, 0)):
    """The ME or VE timing of a body on an engine in ``state`` (a DMA µTOp is a ``DmaJob``:
    its time depends on HBM)."""
    return me_timing(body, config) if engine == Engine.ME else ve_timing(body, config, state)
