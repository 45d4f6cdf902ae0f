"""perf backend: host scripts on the golden model for data and the µTOp-level timing model
(pnpu.py) for time; no RTL.

Everything the golden backend computes stays as it is (memories, faults, refusals); what
the timing model adds is the clock. `Run` waits the cycles the contexts take; CYCLE, STATUS
and the counters read what the hardware's would (STALL, which counts scratchpad and HBM
refusals, reads 0: the model has no bank conflicts); requests queue behind their
DOORBELL, start when their context is free and post COMPLETION entries stamped with the
cycles of the hardware's; a `Serve` is the host loop of the RTL backends, step for step,
and can record a timeline. The host's operations take the cycles they take on the RTL
backends (a register access one cycle, an HBM line burst its latency), so cycle counts
compare one to one with pysim's and Verilator's (`neu10 validate` measures how closely).
"""

import hashlib
from collections import deque

import numpy as np

from isa.encoding import Fault, program_from_hbm_words
from isa.regmap import ENGINE, ENGINE_BASE, ENGINE_STRIDE, HostError, Policy, Status
from .. import script as ops
from ..host_loop import serve_loop
from ..golden import GoldenBackend
from .hbm_arbiter import Stream
from .pnpu import PNPU, parse_program

__all__ = ["PerfBackend"]

#: Fetch faults: the timing model finds them itself, from the program's words.
_FETCH_FAULTS = (Fault.BAD_HEADER, Fault.FETCH_OOB)


class PerfBackend(GoldenBackend):
    """Executes host scripts with the golden model's data and the timing model's cycles."""

    name = "perf"
    timed = True

    def __init__(self, config, *, poll=16, progress=None, trace=False, vcd=None, replay=False):
        if trace or vcd:
            raise ValueError("the perf backend models µTOps, not signals: it has no dispatch "
                             "trace or waveform (use pysim or verilator)")
        super().__init__(config)
        self.poll = poll
        self.progress = progress
        #: ``replay``: a request's data depends only on its program and what the host
        #: loaded into its HBM window (true of compiled models: they read no location of
        #: an earlier run before writing it). Then the golden model runs each (program,
        #: window contents) once per process, and a request run again replays the words
        #: it wrote (``_Replay``): serving full-size models costs time, not recomputation.
        self.replay = _REPLAYS.setdefault(config, _Replay()) if replay else None

    def execute(self, script):
        self.cycle = 0                  # the host's clock: cycles since reset
        self.model = PNPU(self.config, Policy(0), 4096)      # the registers' reset values
        self.model.on_done = self._ended
        self.timed = {}                 # ctx -> the timing model's context of its last run
        self.requests = {c: deque() for c in range(self.config.n_ctx)}   # (offset, arrival)
        self.request = {}               # ctx -> arrival cycle of the request it runs
        self.finished = {c: deque() for c in range(self.config.n_ctx)}   # (readable, entry)
        self.free_at = {}               # ctx -> first cycle a request may be taken
        self.launch = None              # the cycle a start takes effect in (_start)
        self.loads = []                 # (first word, end, digest) of the host's HBM loads
        self.replayed = {}              # (ctx, offset) -> the golden outcome of its run
        return super().execute(script)

    # --- time ---------------------------------------------------------------------------------

    def _advance(self, cycle):
        """Run the model through every cycle before ``cycle``."""
        self.model.advance(cycle)

    def _op(self, op, results):
        self._advance(self.cycle)
        match op:
            case ops.Run(max_cycles, timeline):
                mark = self.cycle
                if timeline:
                    self.model.timeline = []
                self.cycle += 1                       # the START takes effect
                self._advance(self.cycle)
                waited = 0
                while self._busy() and waited < max_cycles:
                    step = self.poll
                    self._advance(self.cycle + step)
                    self.cycle += step
                    waited += step
                    if self.progress and waited % 4096 < step:
                        self.progress(waited)
                results.append((waited, self._busy())
                               + ((self._end_timeline(mark),) if timeline else ()))
            case ops.HbmLoad(address, words):
                super()._op(op, results)              # the host's copy takes no cycles
                if self.replay is not None:
                    digest = hashlib.blake2b(np.ascontiguousarray(words, np.int64).tobytes(),
                                             digest_size=16).digest()
                    self.loads.append((address, address + len(words), digest))
                    self.replayed.clear()
            case ops.HbmRead(line):
                results.append(self._hbm_burst(line, 1))
            case ops.Serve():
                results.append(self._serve(op))
            case ops.HbmWrite():
                super()._op(op, results)
                self.cycle += 1
                self.loads.append((0, self.config.hbm_words, None))   # no replay past it
                self.replayed.clear()
            case _:
                super()._op(op, results)
                self.cycle += 1

    def _busy(self):
        """The NPU's busy line: a context runs, or one that can run has a request queued."""
        return self.model.busy() or any(
            queue and self.contexts[c].status != Status.FAULTED
            for c, queue in self.requests.items())

    # --- contexts and requests ------------------------------------------------------------------

    def _write(self, address, value):
        c, register = self._where(address)
        if register is not None and register.name == "POLICY" and c is None:
            self.model.policy = Policy(value) if value < len(Policy) else self.model.policy
            self.model.wake()
        if register is not None and register.name == "TIME_SLICE" and c is None and value:
            self.model.time_slice = value
            self.model.wake()
        if register is not None and register.name == "START":
            self.launch = self.cycle + 1
            for i in range(self.config.n_ctx):
                if value >> i & 1:
                    self.requests[i].clear()
        if register is not None and register.name == "DOORBELL" and c is not None:
            self._doorbell(c, address, value, register.width(self.config))
            return
        super()._write(address, value)

    def _doorbell(self, c, address, value, width):
        if value >> width:
            self._refuse(HostError.VALUE_RANGE, address)
        elif self._status(c) == Status.FAULTED:
            self._refuse(HostError.CONTEXT_FAULTED, address)
        elif len(self.requests[c]) >= self.config.queue_depth:
            self._refuse(HostError.QUEUE_FULL, address)
        else:
            self.requests[c].append((value, self.cycle))
            self._take_request(c, self.cycle + 1)

    def _take(self, c):
        """The golden backend runs queued requests at once; here they wait for time."""

    def _take_request(self, c, cycle):
        """Context c takes its oldest request in ``cycle`` (or as soon as it is free)."""
        if not self.requests[c] or self._status(c) in (Status.RUNNING, Status.FAULTED):
            return
        if c in self.request or len(self.finished[c]) >= self.config.queue_depth + 1:
            return
        cycle = max(cycle, self.free_at.get(c, 0), self.model.now)
        offset, arrival = self.requests[c].popleft()
        self.request[c] = arrival
        self.launch = cycle + 1
        self._start(c, offset)
        if self.contexts[c].fault == Fault.CONFIG:           # refused at once
            self._post(c, cycle, arrival, faulted=True)

    def _ended(self, c, cycle):
        """The model's context c ended in ``cycle`` (its status changes at that edge)."""
        if c in self.request:
            self._post(c, cycle + 1, self.request[c],
                       faulted=self.model.contexts[c].status == Status.FAULTED)
            self.free_at[c] = cycle + 2
            self._take_request(c, cycle + 2)

    def _post(self, c, stamp, arrival, faulted):
        self.request.pop(c, None)
        entry = 1 << 63 | int(faulted) << 62 | (arrival & (2**31 - 1)) << 31 | stamp & (2**31 - 1)
        self.finished[c].append((stamp + 1, entry))
        self.contexts[c].completed += 1

    def _start(self, c, offset):
        """A START or a request: the golden model runs it now (or its run is replayed),
        the timing model from ``self.launch``."""
        if self.replay is None or not self._replayed(c, offset):
            super()._start(c, offset)
        context, settings = self.contexts[c], self.contexts[c].settings
        if context.fault == Fault.CONFIG:
            self.timed.pop(c, None)
            return
        base, length = settings["PROG_BASE"], settings["PROG_LEN"]
        program = parse_program(program_from_hbm_words(self.npu.hbm[base:base + 2 * length]),
                                self.config)
        engine_fault = None
        if context.fault != Fault.NONE and context.fault not in _FETCH_FAULTS:
            index = next(i for i, u in enumerate(program.utops) if u.pc == context.fault_pc)
            engine_fault = (index, context.fault, self.context_details[c].fault_step)
        registers = dict(settings, HBM_BASE=settings["HBM_BASE"] + offset)
        self.model.start(c, program, registers, self.launch, engine_fault)
        self.timed[c] = self.launch

    def _replayed(self, c, offset):
        """Run request ``offset`` of context c from the replay memo if it can be: again in
        this script (nothing to write: its words are there), or with the same program and
        window contents in an earlier one (write the words it wrote then). Otherwise run
        the golden model, remembering what it wrote; False when nothing was replayed."""
        context, s = self.contexts[c], self.contexts[c].settings
        if not self._valid(context, offset) or (c, offset) in self.replayed and \
                self.replayed[c, offset] is None:
            return False
        first = s["HBM_BASE"] + offset
        end = first + s["HBM_SIZE"]
        if (c, offset) in self.replayed:
            outcome = self.replayed[c, offset]
        else:
            loads = tuple((a - first, b - first, d) for a, b, d in self.loads
                          if a < end and first < b)
            if any(d is None for _, _, d in loads):
                self.replayed[c, offset] = None
                return False
            base, length = s["PROG_BASE"], s["PROG_LEN"]
            program = hashlib.blake2b(self.npu.hbm[base:base + 2 * length].tobytes(),
                                      digest_size=16).digest()
            key = (program, s["SPAD_SIZE"], s["HBM_SIZE"], loads)
            entry = self.replay.get(key)
            if entry is None:
                before = self.npu.hbm[first:end].copy()
                super()._start(c, offset)
                changed = np.flatnonzero(self.npu.hbm[first:end] != before).astype(np.int64)
                entry = self.replay.put(key, changed, self.npu.hbm[first:end][changed],
                                        self.context_details[c])
                self.replayed[c, offset] = entry[2]
                return True
            changed, values, outcome = entry
            self.npu.hbm[first + changed] = values
            self.replayed[c, offset] = outcome
        # The golden backend's bookkeeping of a run, as _start does it.
        context.fault, context.fault_pc = outcome.fault, outcome.fault_pc or 0
        context.status = Status.FAULTED if outcome.fault else Status.DONE
        context.retired = outcome.utops_retired
        self.context_details[c] = outcome
        return True

    def _status(self, c):
        timed = self.model.contexts[c]
        if any(x[1] == c for x in self.model.scheduled) or (
                timed is not None and timed.status == Status.RUNNING):
            return Status.RUNNING
        return self.contexts[c].status

    def _read(self, address):
        model = self.model
        if address >= ENGINE_BASE:
            e, offset = divmod(address - ENGINE_BASE, ENGINE_STRIDE)
            register = next((r for r in ENGINE if r.offset == offset), None)
            if e < len(model.engines) and register is not None:
                return _engine_counter(model.engines[e], register.name)
        c, register = self._where(address)
        if register is None:
            return super()._read(address)
        name = register.name
        if c is None:
            if name == "CYCLE":
                return self.cycle
            if name == "STATUS":
                return sum(int(self._status(i)) << 2 * i for i in range(self.config.n_ctx))
            return super()._read(address)
        if name == "STATUS":
            return int(self._status(c))
        if name == "PENDING":
            return len(self.requests[c])
        if name == "COMPLETION":
            finished = self.finished[c]
            if not finished or finished[0][0] > self.cycle:
                return 0
            entry = finished.popleft()[1]
            self._take_request(c, self.cycle + 1)
            return entry
        timed = model.contexts[c]
        if timed is not None and name in timed.counters and c in self.timed:
            return timed.counters[name]
        return super()._read(address)

    # --- the host's loop ------------------------------------------------------------------------

    def _hbm_burst(self, first, count):
        """HBM lines first.. through the host's port: a request each cycle the port takes
        one, the lines collected as they arrive (as the RTL backends' harnesses do)."""
        cfg = self.config
        done = []
        self.model.hbm.add(Stream(cfg.n_dma, self.cycle, count, done=done.append))
        self.model.wake()
        while not done:
            self._advance(max(self.cycle + 1, (self.model.hbm.next_event() or self.cycle) + 1))
            self.cycle = self.model.now
        self.cycle = max(self.cycle, done[0] + cfg.hbm_latency + 1)
        per_line = cfg.hbm_words_per_cycle
        return [int(v) for v in self.npu.hbm[first * per_line:(first + count) * per_line]]

    def _serve(self, op):
        """The Serve operation (runtime/backends/script.py): the host loop of host_loop.py,
        in the same cycles as on the RTL backends."""
        mark = self.cycle
        self.model.timeline = [] if op.timeline else None
        loop = serve_loop(op, self.poll, self.config.hbm_words_per_cycle)
        reply = None
        while True:
            try:
                step = loop.send(reply)
            except StopIteration as done:
                served = done.value
                break
            self._advance(self.cycle)
            match step:
                case ("cycle",):
                    reply = self.cycle
                case ("write", address, value):
                    reply = self._write(address, value)
                    self.cycle += 1
                case ("read", address):
                    reply = self._read(address)
                    self.cycle += 1
                case ("burst", first, count):
                    reply = self._hbm_burst(first, count) if count else []
                case ("wait", cycles):
                    self._advance(self.cycle + cycles)
                    self.cycle += cycles
                    reply = None
        timeline = self._end_timeline(mark) if op.timeline else None
        return mark, self.cycle - mark, self._busy(), served, timeline

    def _end_timeline(self, mark):
        """Stop recording the timeline; its events, cycles counted from ``mark``."""
        timeline = [(0, e, 0) for e in range(len(self.model.engines))] + [
            (cycle - mark, e, value) for cycle, e, value in self.model.timeline if cycle >= mark]
        self.model.timeline = None
        return timeline


class _Replay:
    """What golden runs wrote, by (program, segment sizes, what the host loaded into the
    HBM window): changed word offsets and their values, and the run's outcome."""

    def __init__(self):
        self.entries = {}

    def get(self, key):
        return self.entries.get(key)

    def put(self, key, changed, values, outcome):
        self.entries[key] = (changed, values.copy(), outcome)
        return self.entries[key]


#: Per config, the replay memo of this process (shared by every perf backend with replay).
_REPLAYS = {}


def _engine_counter(engine, name):
    if name.startswith("BUSY_CTX"):
        return engine.busy_ctx[int(name[len("BUSY_CTX"):])]
    return {"BUSY": engine.busy, "STALL": 0, "DONE": engine.done, "WORK": engine.work}[name]
