"""golden backend: host scripts executed by the ISA's golden model (numpy), no RTL.

It reads the same register writes as the hardware: the host interface's refusals
(HOST_ERROR), START (a context with invalid settings faults CONFIG), doorbells, the
request queue (QUEUE_FULL) and completions. It models what a program computes, not when: a
started context, or a request, runs to its end at once, so `Run` waits 0 cycles, CYCLE and
every timing counter read 0, completion stamps are 0, and ISSUED and RETIRED count the
µTOps that completed (the RTL also counts one that faulted in an engine). What it adds is
the detail the RTL has no register for: each context's fault explained in words, and (with
``check_races``) its races and the µTOps flagged restartable that are not
(`context_details`, per context, after `execute`).
"""

import numpy as np

from isa.encoding import Fault, program_from_hbm_words
from isa.golden import ContextOutcome, ContextSpec, GoldenNPU, Segment
from isa.regmap import (CONTEXT, CONTEXT_BASE, CONTEXT_STRIDE, GLOBAL, ID_VALUE, Access,
                        HostError, Status)
from . import script as ops

__all__ = ["GoldenBackend"]

_SETTINGS = ("PROG_BASE", "PROG_LEN", "SPAD_BASE", "SPAD_SIZE", "HBM_BASE", "HBM_SIZE", "ME_MASK", "VE_MASK",
             "PRIORITY")


class _Context:
    def __init__(self):
        self.settings = dict.fromkeys(_SETTINGS, 0)
        self.status, self.fault, self.fault_pc = Status.IDLE, Fault.NONE, 0
        self.retired = self.completed = 0
        self.pending = []          # doorbell offsets of requests not started
        self.completions = []


class GoldenBackend:
    """Executes host scripts on ``GoldenNPU(config)``, from a fresh NPU each time."""

    name = "golden"
    timed = False

    def __init__(self, config, *, check_races=False, progress=None, trace=False, vcd=None):
        if trace or vcd:
            raise ValueError("the golden backend has no cycles to trace or dump as a waveform: "
                             "use pysim or verilator")
        self.config, self.check_races = config, check_races
        #: After `execute`: ctx -> the golden model's ContextOutcome of its last run.
        self.context_details = {}

    def execute(self, script):
        cfg = self.config
        self.npu = GoldenNPU(cfg, check_races=self.check_races)
        self.contexts = [_Context() for _ in range(cfg.n_ctx)]
        self.registers = {"POLICY": 0, "TIME_SLICE": 4096, "HOST_ERROR": 0}   # reset values
        self.context_details = {}
        results = []
        for op in script:
            self._op(op, results)
        return results

    def _op(self, op, results):
        """Execute one host operation, appending its result (if it has one)."""
        per_line = self.config.hbm_words_per_cycle
        match op:
            case ops.CsrWrite(address, value):
                self._write(address, value)
            case ops.CsrRead(address):
                results.append(self._read(address))
            case ops.SpadWrite(row, values):
                self.npu.spad[row] = np.asarray(values, np.int64).astype(np.uint32).view(np.int32)
            case ops.SpadRead(row):
                results.append([int(v) for v in self.npu.spad[row]])
            case ops.HbmWrite(line, values, mask):
                for j, value in enumerate(values):
                    if mask >> j & 1:
                        self.npu.hbm[line * per_line + j] = np.int64(value).astype(np.uint32).view(np.int32)
            case ops.HbmLoad(address, words):
                self.npu.hbm[address:address + len(words)] = \
                    np.asarray(words, np.int64).astype(np.uint32).view(np.int32)
            case ops.HbmRead(line):
                results.append([int(v) for v in self.npu.hbm[line * per_line:(line + 1) * per_line]])
            case ops.Run(timeline=timeline):
                if timeline:
                    raise ValueError("the golden backend has no time, hence no timeline")
                results.append((0, False))
            case ops.Serve():
                results.append(self._serve(op))
            case _:
                raise ValueError(f"the {self.name} backend cannot execute {op!r}")

    # --- registers ----------------------------------------------------------------------------

    def _where(self, address):
        """(context or None, Register) at ``address``, or (None, None)."""
        if address < CONTEXT_BASE:
            return None, next((r for r in GLOBAL if r.offset == address), None)
        c, offset = divmod(address - CONTEXT_BASE, CONTEXT_STRIDE)
        if c < self.config.n_ctx:
            return c, next((r for r in CONTEXT if r.offset == offset), None)
        return None, None

    def _refuse(self, code, address):
        if not self.registers["HOST_ERROR"]:
            self.registers["HOST_ERROR"] = int(code) | address << 32

    def _write(self, address, value):
        cfg = self.config
        c, register = self._where(address)
        if register is None or register.access not in (Access.RW, Access.WO):
            self._refuse(HostError.UNMAPPED, address)
            return
        name = register.name
        if name == "HOST_ERROR":
            self.registers[name] = 0
            return
        width = cfg.n_ctx if name == "START" else register.width(cfg)
        if value >> width or (name == "TIME_SLICE" and value == 0):
            self._refuse(HostError.VALUE_RANGE, address)
        elif name == "START":
            started = [i for i in range(cfg.n_ctx) if value >> i & 1]
            if any(not self._valid(self.contexts[i], 0) for i in started):
                self._refuse(HostError.BAD_CONTEXT, address)
            for i in started:
                self.contexts[i].pending.clear()      # START drops the queued requests
                self._start(i, 0)
        elif name == "DOORBELL":
            context = self.contexts[c]
            if context.status == Status.FAULTED:
                self._refuse(HostError.CONTEXT_FAULTED, address)
            elif len(context.pending) >= cfg.queue_depth:
                self._refuse(HostError.QUEUE_FULL, address)
            else:
                context.pending.append(value)
                self._take(c)
        elif c is None:
            self.registers[name] = value
        else:
            self.contexts[c].settings[name] = value

    def _take(self, c):
        """Run the queued requests of a free context while their ends find room among the
        completions (queue_depth + 1 of them), as the RTL takes them."""
        context = self.contexts[c]
        while (context.pending and context.status != Status.FAULTED
               and len(context.completions) < self.config.queue_depth + 1):
            self._start(c, context.pending.pop(0))
            context.completed += 1
            context.completions.append(1 << 63 | int(context.status == Status.FAULTED) << 62)

    def _valid(self, context, offset):
        cfg, s = self.config, context.settings
        return (s["PROG_BASE"] % cfg.hbm_words_per_cycle == 0
                and s["PROG_BASE"] + 2 * s["PROG_LEN"] <= cfg.hbm_words
                and s["SPAD_BASE"] + s["SPAD_SIZE"] <= cfg.spad_rows
                and s["HBM_BASE"] + offset + s["HBM_SIZE"] <= cfg.hbm_words)

    def _start(self, c, offset):
        """Run context ``c`` (a request's HBM ``offset``) to its end; invalid settings
        fault CONFIG."""
        context, s = self.contexts[c], self.contexts[c].settings
        if not self._valid(context, offset):
            context.status, context.fault, context.fault_pc = Status.FAULTED, Fault.CONFIG, 0
            context.retired = 0
            self.context_details[c] = ContextOutcome(
                Fault.CONFIG, 0, f"settings invalid: program at HBM {s['PROG_BASE']} of "
                f"{s['PROG_LEN']} words, scratchpad {s['SPAD_BASE']}+{s['SPAD_SIZE']}, HBM "
                f"{s['HBM_BASE']}+{offset}+{s['HBM_SIZE']} (memories: "
                f"{self.config.spad_rows} rows, {self.config.hbm_words} words; programs start "
                f"at a multiple of {self.config.hbm_words_per_cycle} words)")
            return
        # The program as the hardware fetches it: 64-bit words from HBM, low half first.
        program = program_from_hbm_words(
            self.npu.hbm[s["PROG_BASE"]:s["PROG_BASE"] + 2 * s["PROG_LEN"]])
        spec = ContextSpec(program, Segment(s["SPAD_BASE"], s["SPAD_SIZE"]),
                           Segment(s["HBM_BASE"] + offset, s["HBM_SIZE"]))
        [outcome] = self.npu.run([spec])
        context.fault, context.fault_pc = outcome.fault, outcome.fault_pc or 0
        context.status = Status.FAULTED if outcome.fault else Status.DONE
        context.retired = outcome.utops_retired
        self.context_details[c] = outcome

    def _serve(self, op):
        """The Serve operation without time: each request arrives (timed ones in their
        order, closed-loop ones when the request before them completes), is rung and runs at
        once; refusals and faults end what would have followed."""
        if op.timeline:
            raise ValueError("the golden backend has no time, hence no timeline")
        per_line = self.config.hbm_words_per_cycle
        requests = op.requests
        served = [[None, 0, 0, [0] * (r.lines[1] * per_line)] for r in requests]
        followers = {}
        for index, request in enumerate(requests):
            if request.after is not None:
                followers.setdefault(request.after, []).append(index)
        arrivals = [(i, r.cycle) for i, r in enumerate(requests) if r.after is None]
        while arrivals:
            index, when = arrivals.pop(0)
            request, result = requests[index], served[index]
            result[0] = when
            context = op.contexts[request.context]
            self._write(context.doorbell, request.offset)
            error = self.registers["HOST_ERROR"]
            if error:
                self.registers["HOST_ERROR"] = 0
                result[1] = error & 0xFF
                continue
            result[2] = entry = self._read(context.completion)
            first, count = request.lines
            result[3] = [int(v) for v in self.npu.hbm[first * per_line:(first + count) * per_line]]
            if entry >> 62 & 1:
                continue
            arrivals[:0] = [(f, when) for f in followers.get(index, [])]
        return 0, 0, False, [tuple(r) for r in served], None

    def _read(self, address):
        cfg = self.config
        c, register = self._where(address)
        if register is None or register.access == Access.WO:
            return 0
        name = register.name
        if c is None:
            if name == "ID":
                return ID_VALUE
            if name == "SHAPE":
                return (cfg.n_ctx | cfg.n_me << 8 | cfg.n_ve << 16 | cfg.n_dma << 24
                        | cfg.array_rows << 32 | cfg.array_cols << 40 | cfg.ve_lanes << 48)
            if name == "STATUS":
                return sum(int(x.status) << 2 * i for i, x in enumerate(self.contexts))
            return self.registers.get(name, 0)       # CYCLE: no time in this model
        context = self.contexts[c]
        if name in context.settings:
            return context.settings[name]
        if name == "COMPLETION":
            if not context.completions:
                return 0
            entry = context.completions.pop(0)
            self._take(c)
            return entry
        if name == "PENDING":
            return len(context.pending)
        return {"STATUS": int(context.status), "FAULT": int(context.fault),
                "FAULT_PC": context.fault_pc, "ISSUED": context.retired,
                "RETIRED": context.retired, "COMPLETED": context.completed}.get(name, 0)
