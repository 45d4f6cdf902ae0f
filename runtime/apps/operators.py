"""What each µTOp, operator and tenant cost in a run, measured on the pNPU's activity port.

The port (hw.npu, isa.regmap.activity_fields) tells, every cycle, which context's µTOp
each engine runs and that µTOp's header address; a backend records it as a timeline
(Driver.run / Driver.serve with ``timeline=True``) and RunResult.utop_runs() turns it into
runs of µTOps. From them:

- per operator of a compiled model (the compiler's operators: a layer, an activation, a
  residual add; Graph.ops), its *cycles*, from its first µTOp's start to its last µTOp's
  end (operators overlap, so these add up to more than the run), its *engine-cycles* per
  engine type, and the *HBM bytes* its DMA µTOps copied (isa.encoding.dma_words, 4 bytes an
  HBM word, for each run of a DMA µTOp that was not flushed);
- per request of a context: its µTOps that were *preempted* (harvest takes a borrowed
  engine back; the µTOp runs again from its start) and the engine-cycles of the runs that
  were flushed. A µTOp runs once per request unless preempted, so each run of a µTOp
  before its last one in a request is a flushed one.
"""

from collections import defaultdict
from dataclasses import asdict, dataclass

from isa.encoding import Engine, decode_program, dma_words

#: Bytes of an HBM word (32 bits).
HBM_WORD_BYTES = 4

__all__ = ["HBM_WORD_BYTES", "OperatorProfile", "UtopTable", "utop_table", "operator_profiles",
           "operator_spans", "flushed_runs", "format_operators", "program_fetch_bytes"]


@dataclass(frozen=True)
class UtopTable:
    """A program's µTOps by header address: engine, HBM words copied (DMA), operator index;
    and the operators as (kind, name)."""
    engine: dict
    hbm_words: dict
    operator: dict
    operators: tuple


def utop_table(config, words, ops=(), op_ends=()):
    """The UtopTable of program ``words`` (``ops``, ``op_ends``: a Graph's operators and the
    µTOps emitted when each ended; without them, the whole program is one operator)."""
    engine, moved, operator = {}, {}, {}
    ops, ends = (list(ops), list(op_ends)) if ops else ([("program", "program")], [])
    pc, op = 0, 0
    for index, utop in enumerate(decode_program(list(words))):
        if isinstance(utop, int):
            break                          # raw words past the last µTOp: never run
        while op < len(ends) and ends[op] <= index:
            op += 1
        engine[pc] = utop.engine
        moved[pc] = dma_words(utop.body, config) if utop.engine == Engine.DMA else 0
        operator[pc] = min(op, len(ops) - 1)     # past the last operator: counted in it
        pc += 1 + len(utop.body)
    return UtopTable(engine, moved, operator, tuple(ops))


def program_fetch_bytes(config, words):
    """Bytes the prefetcher reads from HBM to run a program once: its lines (isa/SPEC.md,
    "Instruction fetch": two HBM words a program word, from a line boundary)."""
    line = config.hbm_words_per_cycle
    return -(-2 * len(words) // line) * line * HBM_WORD_BYTES


def flushed_runs(runs):
    """The runs (engine, ctx, pc, first, end) that were flushed, of one run of each
    context's program (a request, or a `neu10 run`): for each µTOp, every run but its last."""
    last = {}
    for run in runs:
        key = run[1:3]
        if key not in last or run[3] > last[key][3]:
            last[key] = run
    return [run for run in runs if run is not last[run[1:3]]]


def _kind(engine):
    return {Engine.ME: "me", Engine.VE: "ve", Engine.DMA: "dma"}[Engine(engine)]


@dataclass
class OperatorProfile:
    index: int
    kind: str
    name: str
    utops: int                     # its µTOps in the program
    runs: int                      # µTOp runs seen (preempted ones run more than once)
    cycles: int                    # first µTOp start to last µTOp end, summed over requests
    engine_cycles: dict            # "me"/"ve"/"dma" -> cycles its µTOps ran, flushed included
    flushed_engine_cycles: int
    hbm_bytes: int                 # bytes its DMA µTOps copied

    def to_dict(self):
        return asdict(self)


def operator_profiles(table, requests):
    """Per operator of ``table`` (a UtopTable), from ``requests``: for each run of the
    program (one request, or a whole `neu10 run`), its µTOp runs (engine, ctx, pc, first,
    end). Operators that never ran are listed with zeros."""
    utops = defaultdict(int)
    for pc, op in table.operator.items():
        utops[op] += 1
    profiles = [OperatorProfile(i, kind, name, utops[i], 0, 0, {"me": 0, "ve": 0, "dma": 0},
                                0, 0) for i, (kind, name) in enumerate(table.operators)]
    for runs in requests:
        flushed = {id(run) for run in flushed_runs(runs)}
        for run in runs:
            _, _, pc, first, end = run
            if pc not in table.operator:
                continue
            profile = profiles[table.operator[pc]]
            profile.runs += 1
            profile.engine_cycles[_kind(table.engine[pc])] += end - first
            if id(run) in flushed:
                profile.flushed_engine_cycles += end - first
            else:
                profile.hbm_bytes += table.hbm_words[pc] * HBM_WORD_BYTES
        for index, (first, end) in operator_spans(table, runs).items():
            profiles[index].cycles += end - first
    return profiles


def operator_spans(table, runs):
    """{operator index: (first cycle, end cycle)} over one run of the program: from its
    first µTOp's start to its last one's end."""
    spans = {}
    for _, _, pc, first, end in runs:
        if pc in table.operator:
            op = table.operator[pc]
            lo, hi = spans.get(op, (first, end))
            spans[op] = (min(lo, first), max(hi, end))
    return spans


def format_operators(profiles, limit=12):
    """A table of the operators with the most engine-cycles (all of them in --json)."""
    ranked = sorted((p for p in profiles if p.runs), key=lambda p: -sum(p.engine_cycles.values()))
    total = sum(sum(p.engine_cycles.values()) for p in ranked) or 1
    lines = [f"  {'operator':<28} {'kind':<11} {'µTOps':>6} {'cycles':>9} {'ME cyc':>9} "
             f"{'VE cyc':>9} {'DMA cyc':>9} {'share':>6} {'HBM bytes':>11} {'flushed':>8}"]
    for p in ranked[:limit]:
        e = p.engine_cycles
        lines.append(f"  {p.name[:28]:<28} {p.kind[:11]:<11} {p.utops:>6} {p.cycles:>9} "
                     f"{e['me']:>9} {e['ve']:>9} {e['dma']:>9} "
                     f"{sum(e.values()) / total:>6.1%} {p.hbm_bytes:>11} "
                     f"{p.flushed_engine_cycles:>8}")
    if len(ranked) > limit:
        lines.append(f"  ... and {len(ranked) - limit} more operators (--json lists them all)")
    return "\n".join(lines)
