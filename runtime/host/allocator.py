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
#: short mm cannot hide); a VE instruction passes a pipeline of about 4 cycles before the
#: next may start, and a VE µTOp takes about 2 cycles to start and retire.
ME_UTOP_CYCLES, VE_INSTRUCTION_CYCLES, VE_UTOP_CYCLES = 8, 4, 2


def _ve_cycles(instr, config):
    args, name = instr.args, instr.op.mnemonic
    if name.startswith("vpool"):
        rows = args["kh"] * args["kw"]
    elif name == "vldlut":
        rows = config.lut_rows
    else:
        rows = args.get("n", 1)
    return rows + VE_INSTRUCTION_CYCLES


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
            cycles = VE_UTOP_CYCLES
            index = 0
            while index < len(body):
                instr = body[index]
                if instr.repeats:                # a loop
                    span = body[index + 1:index + 1 + instr.repeats]
                    cycles += instr.args["count"] * sum(_ve_cycles(i, config) for i in span)
                    index += 1 + instr.repeats
                    continue
                cycles += _ve_cycles(instr, config)
                index += 1
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
