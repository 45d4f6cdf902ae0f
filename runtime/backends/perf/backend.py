"""perf backend: host scripts on the golden model for data and the µTOp-level timing model
(pnpu.py) for time; no RTL.

Everything the golden backend computes stays as it is (memories, faults, refusals); what
the timing model adds is the clock: `Run` waits the cycles the contexts take, CYCLE and
every counter read what the hardware's would (STALL, which counts scratchpad and HBM
refusals, reads 0: the model has no bank conflicts), completion stamps are the cycles the
requests ended, and a `Serve` can record a timeline. The host's own operations take the
cycles they take on the RTL backends (a register access one cycle), so a run's cycle
counts compare one to one with pysim's and Verilator's.
"""

from isa.encoding import Engine, Fault
from isa.regmap import ENGINE, ENGINE_BASE, ENGINE_STRIDE, Policy, Status
from .. import script as ops
from ..golden import GoldenBackend
from .pnpu import PNPU, parse_program

__all__ = ["PerfBackend"]

#: Fetch faults: the timing model finds them itself, from the program's words.
_FETCH_FAULTS = (Fault.BAD_HEADER, Fault.FETCH_OOB)


class PerfBackend(GoldenBackend):
    """Executes host scripts with the golden model's data and the timing model's cycles."""

    name = "perf"
    timed = True

    def __init__(self, config, *, poll=16, progress=None, trace=False, vcd=None):
        if trace or vcd:
            raise ValueError("the perf backend models µTOps, not signals: it has no dispatch "
                             "trace or waveform (use pysim or verilator)")
        super().__init__(config)
        self.poll = poll
        self.progress = progress

    def execute(self, script):
        self.cycle = 0                  # the host's clock: cycles since reset
        self.pnpu = None
        self.timed_contexts = {}
        return super().execute(script)

    def _model(self):
        if self.pnpu is None:
            self.pnpu = PNPU(self.config, Policy(self.registers["POLICY"]),
                             self.registers["TIME_SLICE"])
        return self.pnpu

    def _op(self, op, results):
        match op:
            case ops.Run(max_cycles):
                self.cycle += 1                       # the START takes effect
                model = self._model()
                model.advance(self.cycle)
                limit = self.cycle + max_cycles + self.poll
                end = model.run(limit)
                waited = -(-(end - self.cycle) // self.poll) * self.poll if end > self.cycle else 0
                busy = model.busy()
                if busy:
                    waited = -(-max_cycles // self.poll) * self.poll
                self.cycle += waited
                model.advance(self.cycle)
                results.append((waited, model.busy()))
            case ops.HbmLoad():
                super()._op(op, results)              # the host's copy takes no cycles
            case ops.Serve():
                raise ValueError("the perf backend does not serve request streams yet")
            case _:
                super()._op(op, results)
                self.cycle += 1

    # --- contexts in time ---------------------------------------------------------------------

    def _start(self, c, offset):
        super()._start(c, offset)
        context, settings = self.contexts[c], self.contexts[c].settings
        model = self._model()
        if context.fault == Fault.CONFIG:
            self.timed_contexts.pop(c, None)
            return
        words = self._program_words(settings)
        program = parse_program(words, self.config)
        engine_fault = None
        if context.fault != Fault.NONE and context.fault not in _FETCH_FAULTS:
            index = next(i for i, u in enumerate(program.utops) if u.pc == context.fault_pc)
            engine_fault = (index, context.fault)
        registers = dict(settings, HBM_BASE=settings["HBM_BASE"] + offset)
        self.timed_contexts[c] = model.start(c, program, registers, self.cycle, engine_fault)

    def _program_words(self, settings):
        from isa.encoding import program_from_hbm_words
        base, length = settings["PROG_BASE"], settings["PROG_LEN"]
        return program_from_hbm_words(self.npu.hbm[base:base + 2 * length])

    def _read(self, address):
        model = self.pnpu
        if address >= ENGINE_BASE and model is not None:
            e, offset = divmod(address - ENGINE_BASE, ENGINE_STRIDE)
            register = next((r for r in ENGINE if r.offset == offset), None)
            if e < len(model.engines) and register is not None:
                return self._engine_counter(model.engines[e], register.name)
        c, register = self._where(address)
        if register is None or model is None:
            return super()._read(address)
        name = register.name
        if c is None:
            if name == "CYCLE":
                return self.cycle
            if name == "STATUS":
                return sum(int(self._status(i)) << 2 * i for i in range(self.config.n_ctx))
            return super()._read(address)
        timed = self.timed_contexts.get(c)
        if timed is None:
            return super()._read(address)
        if name == "STATUS":
            return int(self._status(c))
        if name in timed.counters:
            return timed.counters[name]
        return super()._read(address)

    def _status(self, c):
        timed = self.timed_contexts.get(c)
        if timed is not None and timed.status == Status.RUNNING:
            return Status.RUNNING
        return self.contexts[c].status

    @staticmethod
    def _engine_counter(engine, name):
        if name.startswith("BUSY_CTX"):
            return engine.busy_ctx[int(name[len("BUSY_CTX"):])]
        return {"BUSY": engine.busy, "STALL": 0, "DONE": engine.done, "WORK": engine.work}[name]
