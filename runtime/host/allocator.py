"""The allocator: how many matrix and vector engines a tenant's vNPU gets.

After Neu10's pay-as-you-go allocation. The input is a *profile*: the busy time of a
model's work on each engine type, in engine-cycles, either estimated by the compiler from
the program (``estimate``) or measured by a run (``measured``: the engines' BUSY
counters). With n_me MEs and n_ve VEs the model's latency is bounded by the busier type:

    latency(n_me, n_ve) = max(ME_busy / n_me, VE_busy / n_ve)

and the tenant pays ``price_me * n_me + price_ve * n_ve`` per cycle. The rule:

- with a **budget** (the most the tenant pays per cycle): the (n_me, n_ve) of lowest
  latency whose price fits the budget; ties go to the cheaper one;
- with a **latency target** (cycles): the cheapest (n_me, n_ve) that meets it; ties go to
  the faster one.

Every engine type the model uses gets at least one engine. The optimum balances the two
terms, n_me / n_ve ~ ME_busy / VE_busy: an ME-heavy model gets more MEs than VEs, a
VE-heavy one the reverse, for the same budget.
"""

from dataclasses import dataclass

from isa.encoding import Engine, decode_header, decode_instr
from isa.golden import loop_operands
from runtime.backends.perf.engine_timing import ve_rows

__all__ = ["AllocationError", "Allocation", "Profile", "allocate", "estimate", "measured"]


class AllocationError(ValueError):
    """No allocation satisfies the request; the message names the budget or target."""


@dataclass(frozen=True)
class Profile:
    """Busy engine-cycles of one inference per engine type."""
    me: int
    ve: int
    dma: int


@dataclass(frozen=True)
class Allocation:
    n_me: int
    n_ve: int
    latency: float               # the busy-time bound, cycles
    price: float                 # per cycle


#: Cycles the engines spend beyond the rows they stream, calibrated against the BUSY
#: counters of runs of the four models (sim_tests/test_models.py holds estimate and
#: measurement within 10%): an ME µTOp starts and retires in about 8 cycles, and each `mm`
#: waits for its weight tile (array_rows rows, loaded by the `ldw` before it, which a
#: short mm cannot hide). A VE issues one row per cycle, back to back while instructions
#: are independent; a row is written VE_WRITE_CYCLES after it issues, and an instruction
#: that reads a row inside the span the pending writes cover waits until the pipeline
#: is empty (hw/vector_engine.py keeps one such span), as do vsetq and vsetvl. A VE µTOp
#: takes VE_UTOP_CYCLES beyond its last write to start and retire, a `loop` a cycle.
ME_UTOP_CYCLES, VE_WRITE_CYCLES, VE_UTOP_CYCLES = 8, 5, 4

#: Loop iterations a VE estimate follows one by one before it extends the last one's
#: timing to the rest (the pipeline reaches its steady pattern within a few iterations).
_LOOP_ITERATIONS_FOLLOWED = 4


class _VectorTiming:
    """When a VE's instructions issue and its writes land (cycles from the µTOp's start)."""

    def __init__(self):
        self.issue_free = 0        # the issue stage takes the next instruction's rows from here
        self.empty = 0             # every write issued so far has landed
        self.span = None           # (lo, hi): the rows the pending writes cover

    def run(self, instr, config, dst_offset=0, src_offset=0):
        name = instr.op.mnemonic
        if name in ("vsetq", "vsetvl"):
            self.issue_free = self.empty = max(self.issue_free, self.empty)
            self.span = None
            return
        args = loop_operands(instr, dst_offset, src_offset)
        rows, reads, writes = ve_rows(name, args, config)
        start = self.issue_free
        if self.span is not None and start >= self.empty:
            self.span = None
        if self.span is not None and any(lo <= self.span[1] and self.span[0] <= hi
                                         for lo, hi in reads):
            start, self.span = self.empty, None
        self.issue_free = start + rows
        self.empty = max(self.empty, start + rows + VE_WRITE_CYCLES)
        if writes is not None:
            self.span = writes if self.span is None else \
                (min(self.span[0], writes[0]), max(self.span[1], writes[1]))

    def run_loop(self, loop, body, config):
        count, d_stride, s_stride = loop.args["count"], loop.args["dst_stride"], loop.args["src_stride"]
        self.issue_free += 1
        followed = min(count, _LOOP_ITERATIONS_FOLLOWED)       # count >= 1
        for t in range(followed):
            before = self.issue_free
            for instr in body:
                self.run(instr, config, t * d_stride, t * s_stride)
        rest = count - followed
        if rest:
            step = self.issue_free - before
            self.issue_free += rest * step
            self.empty += rest * step
            if self.span is not None:
                reach = rest * d_stride
                self.span = (self.span[0] + min(0, reach), self.span[1] + max(0, reach))

    def cycles(self):
        return max(self.issue_free, self.empty) + VE_UTOP_CYCLES


def estimate(words, config):
    """The compiler's profile of a program: rows streamed per engine type, the systolic
    array's fill per ME µTOp, the calibrated overheads above, and the HBM latency per DMA
    instruction."""
    busy = {Engine.ME: 0, Engine.VE: 0, Engine.DMA: 0}
    pc = 0
    while pc < len(words):
        header, length = decode_header(words[pc])
        body = [decode_instr(w, header.engine) for w in words[pc + 1:pc + 1 + length]]
        pc += 1 + length
        cycles = 0
        if header.engine == Engine.ME:
            cycles = config.array_rows + config.array_cols + ME_UTOP_CYCLES
            repeat = 1                   # an mmloop's count, for the mm of its pair
            for i in body:
                if i.op.mnemonic == "mmloop":
                    repeat = i.args["count"]
                elif i.op.mnemonic == "mm":
                    cycles += repeat * (i.args["m"] + config.array_rows)
                    repeat = 1
        elif header.engine == Engine.VE:
            timing, index = _VectorTiming(), 0
            while index < len(body):
                instr = body[index]
                if instr.repeats:                # a loop
                    timing.run_loop(instr, body[index + 1:index + 1 + instr.repeats], config)
                    index += 1 + instr.repeats
                else:
                    timing.run(instr, config)
                    index += 1
            cycles = timing.cycles()
        else:
            cycles = sum(i.args["rows"] + config.hbm_latency for i in body if "rows" in i.args)
        busy[header.engine] += cycles
    return Profile(busy[Engine.ME], busy[Engine.VE], busy[Engine.DMA])


def measured(run, config):
    """The profile a run measured: the sum of each engine type's BUSY counters."""
    engines = run.engines
    me = sum(e["BUSY"] for e in engines[:config.n_me])
    ve = sum(e["BUSY"] for e in engines[config.n_me:config.n_me + config.n_ve])
    dma = sum(e["BUSY"] for e in engines[config.n_me + config.n_ve:])
    return Profile(me, ve, dma)


def allocate(profile, config, *, price_me=1.0, price_ve=1.0, budget=None, latency_target=None):
    """Pick (n_me, n_ve) for ``profile`` by the rule in this module's docstring."""
    if (budget is None) == (latency_target is None):
        raise AllocationError("give exactly one of budget (price per cycle) or latency_target")
    for name, value in (("price_me", price_me), ("price_ve", price_ve)):
        if not value > 0:
            raise AllocationError(f"{name} must be positive, not {value!r}")
    options = []
    for n_me in range(1 if profile.me else 0, config.n_me + 1):
        for n_ve in range(1 if profile.ve else 0, config.n_ve + 1):
            if n_me + n_ve == 0:
                continue
            latency = max(profile.me / n_me if n_me else 0, profile.ve / n_ve if n_ve else 0)
            options.append(Allocation(n_me, n_ve, latency, price_me * n_me + price_ve * n_ve))
    if budget is not None:
        fits = [a for a in options if a.price <= budget]
        if not fits:
            cheapest = min(options, key=lambda a: a.price)
            raise AllocationError(f"budget {budget:g} per cycle buys no vNPU for this model; "
                                  f"the cheapest ({cheapest.n_me} ME, {cheapest.n_ve} VE) costs "
                                  f"{cheapest.price:g}")
        return min(fits, key=lambda a: (a.latency, a.price))
    meets = [a for a in options if a.latency <= latency_target]
    if not meets:
        fastest = min(options, key=lambda a: a.latency)
        raise AllocationError(f"latency target {latency_target:g} cycles is out of reach; the "
                              f"whole NPU needs {fastest.latency:.0f} cycles of busy time")
    return min(meets, key=lambda a: (a.price, a.latency))
