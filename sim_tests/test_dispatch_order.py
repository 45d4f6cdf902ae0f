"""Dispatcher guarantees (pysim, tiny): who runs next and for how long under the temporal
policy (ageing tokens, the time slice), how v10 shares the MEs by priority, and which fault a
context reports when several of its µTOps fault."""

import pytest
from amaranth.sim import Simulator

from isa.config import NPUConfig
from isa.regmap import Status
from isa.asm import assemble
from isa.encoding import Fault
from isa.golden import ContextSpec, GoldenNPU, Segment
from hw.dispatcher.temporal_policy import TemporalPolicy
from runtime.apps import mix
from runtime.host.device import Device
from runtime.host.driver import Driver

TINY = NPUConfig.preset("tiny")
VES, DMAS = (2, 3), (4,)            # engine numbers on tiny: ME0 ME1 VE0 VE1 DMA0


# --- temporal policy: ageing -----------------------------------------------------------------

def token_order(priorities, turns):
    """The contexts the temporal policy runs, turn by turn, when every context always has
    work and every turn lasts one time slice (the unit of time below).

    The rule (hw/dispatcher/temporal_policy.py, regmap.Policy.TEMPORAL): while a context waits for the NPU
    (running, neither the active context nor the one being switched to) its tokens grow by
    ``priority + 1`` per cycle; when the slice ends, the waiting context with the most
    tokens runs next (ties: the lowest context number) and its tokens restart from 0.
    """
    waiting_since = [0] * len(priorities)
    active, order = None, []
    for turn in range(turns):
        tokens = {c: (p + 1) * (turn - waiting_since[c])
                  for c, p in enumerate(priorities) if c != active}
        best = max(tokens, key=lambda c: (tokens[c], -c))
        if active is not None:
            waiting_since[active] = turn
        order.append(best)
        active = best
    return order


def ve_program(n_utops, rows=4):
    """``n_utops`` independent VE µTOps (rows 64.. of the segment, inputs at row 0)."""
    lines = []
    for i in range(n_utops):
        lines += [".ve" + (" eop" if i == n_utops - 1 else ""),
                  f"    vaddi {64 + (i % 8) * 8}, 0, 1, {rows}"]
    return "\n".join(lines) + "\n"


def service_turns(trace):
    """[(context, first issue cycle)] for each maximal run of issues by one context."""
    turns = []
    for event in trace:
        for c, _ in event["issues"]:
            if not turns or turns[-1][0] != c:
                turns.append((c, event["cycle"]))
    return turns


@pytest.mark.parametrize("priorities, expected", [
    # Equal priorities: plain round robin, so no context waits more than two turns.
    ((0, 0, 0), [0, 1, 2, 0, 1, 2, 0]),
    # Context 2 ages three times as fast and runs every other turn; the priority-0 contexts
    # still get the NPU, alternating, since each gains a token per waiting cycle.
    ((0, 0, 2), [0, 2, 1, 2, 0, 2, 1, 2]),
], ids=["equal-priorities", "one-urgent-context"])
def test_temporal_ageing_decides_who_runs_next(priorities, expected):
    assert token_order(priorities, len(expected)) == expected     # the rule, as documented
    time_slice = 16
    device = Device(TINY, "pysim", "temporal", time_slice=time_slice, trace=True)
    vnpus = mix.place_tenants(device, [(TINY.n_me, TINY.n_ve)] * len(priorities), priorities)
    # Work for more turns than `expected` gives it: 4 µTOps fit in one turn today (2 VEs,
    # 16-cycle slices); room for 6 in case engines get faster.
    driver = device.driver({vnpu.name: assemble(ve_program(6 * expected.count(c) + 2))
                            for c, vnpu in enumerate(vnpus)})
    result = driver.run(max_cycles=5_000)
    assert not result.timed_out
    assert [r.status for r in result.contexts] == [Status.DONE] * len(priorities)
    turns = service_turns(result.trace)
    # Compare the turns taken while every context still had work (the rule's premise).
    first_done = min(r.cycles for r in result.contexts)
    contended = [c for c, cycle in turns if cycle < first_done]
    assert contended[:len(expected)] == expected, f"turns (context, cycle) {turns}, first " \
                                                  f"context done after {first_done} cycles"
    # Turns are whole slices (a switch waits for the slice, then drains the engines).
    starts = [cycle for _, cycle in turns[:len(expected)]]
    assert all(b - a > time_slice for a, b in zip(starts, starts[1:])), turns


def temporal_turns(time_slice, drain, cycles=120):
    """Drive the temporal policy block with two running contexts of priority 0 that always
    have work: the active context keeps its engines busy while it may issue and for
    ``drain`` cycles after. Returns, per cycle, which context may issue (0: none)."""
    dut = TemporalPolicy(TINY)
    allowed = []

    async def testbench(ctx):
        ctx.set(dut.enabled, 1)
        ctx.set(dut.time_slice, time_slice)
        ctx.set(dut.running, 0b11)
        in_flight = [0, 0]          # cycles each context's µTOps still run on engines
        for _ in range(cycles):
            ok = ctx.get(dut.ok)
            for c in range(2):
                if ok >> c & 1:
                    in_flight[c] = drain
            ctx.set(dut.on_engines, sum(1 << c for c in range(2) if in_flight[c]))
            allowed.append(ok)
            await ctx.tick()
            for c in range(2):
                if not ok >> c & 1 and in_flight[c]:
                    in_flight[c] -= 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return allowed


def runs(values):
    """[(value, length)] of the maximal runs of equal values."""
    out = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return [tuple(r) for r in out]


@pytest.mark.parametrize("time_slice", [1, 5, 16])
@pytest.mark.parametrize("drain", [0, 3])
def test_temporal_turns_last_exactly_the_time_slice(time_slice, drain):
    """isa/SPEC.md, sharing policies: while another context waits, the active one may issue
    in exactly TIME_SLICE + 1 consecutive cycles; the switch cycle follows the drain, and
    the next context issues from the cycle after it."""
    turns = runs(temporal_turns(time_slice, drain))
    issuing = [(ok, n) for ok, n in turns if ok][:-1]          # the last one is cut off
    gaps = [n for ok, n in turns[1:-1] if not ok]               # after the start-up cycles
    assert len(issuing) >= 3 and [ok for ok, _ in issuing[:4]] == [1, 2, 1, 2][:len(issuing[:4])]
    lengths = [n for _, n in issuing]
    assert lengths == [time_slice + 1] * len(lengths), (
        f"TIME_SLICE={time_slice}: turns of {lengths} cycles, the spec gives "
        f"TIME_SLICE + 1 = {time_slice + 1} (a turn ends in the cycle its count reaches "
        f"TIME_SLICE: is the slice compared with > instead of >=?)")
    assert gaps == [drain + 1] * len(gaps), (
        f"{drain} cycles of drain: {gaps} cycles between turns, the spec gives drain + 1 = "
        f"{drain + 1}")


# --- v10 policy: priority-weighted ME time -----------------------------------------------------

@pytest.mark.parametrize("priorities, ratio", [((0, 1), 2.0), ((2, 0), 0.25)],
                         ids=["priority-1-gets-twice", "priority-2-gets-four-times"])
def test_v10_shares_the_mes_by_priority(priorities, ratio):
    """isa/SPEC.md, sharing policies: the gang goes to the least ``me_used >> PRIORITY``, so
    two contexts that always have ME work receive ME time in the ratio 2^(p1 - p0) (up to
    one operator). Both run the same program of one-µTOp operators on the whole NPU; their
    shares are counted while both still run."""
    device = Device(TINY, "pysim", "v10", trace=True)
    vnpus = mix.place_tenants(device, [(TINY.n_me, TINY.n_ve)] * 2, priorities)
    words = assemble(mix.me_heavy_program(TINY, n_ops=12, per_op=1, rows=16))
    result = device.driver({vnpu.name: words for vnpu in vnpus}).run(max_cycles=20_000)
    assert not result.timed_out
    assert [r.status for r in result.contexts] == [Status.DONE] * 2
    both_running = min(r.cycles for r in result.contexts)
    me_time = [sum(1 for event in result.trace
                   if event["cycle"] < both_running and event["ctx_on_me"] >> c & 1)
               for c in range(2)]
    assert min(me_time) > 0
    measured = me_time[1] / me_time[0]
    assert abs(measured - ratio) <= 0.15 * ratio, (
        f"priorities {priorities}: ME cycles {me_time} while both ran, ratio {measured:.2f}; "
        f"the spec gives 2^(p1 - p0) = {ratio} (is PRIORITY ignored in the gang's fairness key?)")


# --- precise faults ------------------------------------------------------------------------------

# µTOp A (header at word 0, older): a VE loop whose destination walks out of the 256-row
# segment in iteration 16 (SPAD_OOB after ~140 cycles). µTOp B (word 3, younger,
# independent): a DMA load from outside the HBM segment (HBM_OOB at once).
OLDER_FAULTS_LAST = """
.ve
    loop 40, 1, 8, 0
    vaddi 128, 0, 1, 8
.dma eop
    dload 0, 5000, 1
"""

# µTOp A (word 0, older): 16 rows of work, then SPAD_OOB (~25 cycles). µTOp B (word 3,
# younger, issued before A faults): 64 rows from HBM (~75 cycles), then HBM_OOB.
OLDER_FAULTS_FIRST = """
.ve
    vaddi 0, 0, 1, 16
    vaddi 250, 0, 1, 10
.dma eop
    dload 64, 0, 64
    dload 0, 5000, 1
"""


#: Context 0's segments as mixes place them: 1/n_ctx of each memory, from 0.
SEGMENTS = Segment(0, TINY.spad_rows // TINY.n_ctx), Segment(0, TINY.hbm_words // TINY.n_ctx)


@pytest.mark.parametrize("source, a_engines, b_engines", [
    (OLDER_FAULTS_LAST, VES, DMAS),
    (OLDER_FAULTS_FIRST, VES, DMAS),
], ids=["older-faults-last", "older-faults-first"])
def test_the_oldest_fault_is_reported_whatever_faults_first(source, a_engines, b_engines):
    words = assemble(source)
    spad, hbm = SEGMENTS
    [expected] = GoldenNPU(TINY).run([ContextSpec(words, spad, hbm)])
    assert (expected.fault, expected.fault_pc) == (Fault.SPAD_OOB, 0)    # A's header
    driver = Driver(TINY)
    driver.load_context(0, words, spad, hbm)
    result = driver.run(max_cycles=5_000)
    assert not result.timed_out
    [context] = result.contexts
    # Both µTOps issued and both retired with their fault, in the intended order in time.
    assert context.counters["ISSUED"] == context.counters["RETIRED"] == 2
    busy_a = sum(result.engines[e]["BUSY"] for e in a_engines)
    busy_b = sum(result.engines[e]["BUSY"] for e in b_engines)
    if source is OLDER_FAULTS_LAST:
        assert busy_a > busy_b + 50, (busy_a, busy_b)
    else:
        assert busy_b > busy_a + 30, (busy_a, busy_b)
    assert (context.status, context.fault, context.fault_pc) == \
        (Status.FAULTED, expected.fault, expected.fault_pc), \
        f"reported {context.fault.name} at word {context.fault_pc}; golden: " \
        f"{expected.fault.name} at word {expected.fault_pc} (the older µTOp)"


@pytest.mark.parametrize("rows", range(10, 19))
def test_the_oldest_fault_wins_when_two_fault_in_the_same_cycle(rows):
    """µTOp A (VE, word 0) faults SPAD_OOB after ``rows`` rows of work; µTOp B (DMA, word
    3) faults HBM_OOB after a 8-row load: for one of these counts (14 on tiny) both faults
    reach the dispatcher in the same cycle, and the older one must still win."""
    words = assemble(f".ve\n vaddi 0, 0, 1, {rows}\n vaddi 250, 0, 1, 10\n"
                     ".dma eop\n dload 64, 0, 8\n dload 0, 5000, 1\n")
    spad, hbm = SEGMENTS
    [expected] = GoldenNPU(TINY).run([ContextSpec(words, spad, hbm)])
    driver = Driver(TINY)
    driver.load_context(0, words, spad, hbm)
    [context] = driver.run(max_cycles=5_000).contexts
    assert (context.status, context.fault, context.fault_pc) == \
        (Status.FAULTED, expected.fault, expected.fault_pc) == (Status.FAULTED, Fault.SPAD_OOB, 0)
