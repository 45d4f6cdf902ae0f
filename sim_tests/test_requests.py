"""Requests on the hardware: doorbell queues, automatic restarts, completion stamps, faults mid-stream."""

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.regmap import HostError, register_address
from isa.asm import assemble
from isa.golden import Segment
from runtime.backends import script as ops
from runtime.host.driver import Driver, DriverError

TINY = NPUConfig.preset("tiny")
# One request: load the 4 words at HBM 0 of the segment, add 1, store them at HBM 16.
PROGRAM = assemble("""
load:   .dma
            dload 0, 0, 1
add:    .ve deps(load)
            vaddi 0, 0, 1, 1
store:  .dma deps(add) eop
            dstore 16, 0, 1
""")
SLOT = 64            # HBM words per request slot: the offset a doorbell gives a request


def driver(backend="pysim", contexts=(0, 1)):
    d = Driver(TINY, backend)
    for c in contexts:
        d.load_context(c, PROGRAM, Segment(64 * c, 64), Segment(1024 * c, 32))
        for slot in range(2):
            d.write_hbm(1024 * c + slot * SLOT, [100 * c + 10 * slot + i for i in range(4)])
    return d


def outputs(run, c):
    return [list(run.hbm[(1024 * c + slot * SLOT + 16, 4)]) for slot in range(2)]


def reads(contexts=(0, 1)):
    return [(1024 * c + slot * SLOT + 16, 4) for c in contexts for slot in range(2)]


def test_requests_run_in_order_each_on_its_own_input():
    arrivals = [(0, 0), (0, 1), (5, 0), (40, 1), (41, 0)]
    offsets = [0, 0, SLOT, SLOT, 0]
    run, requests = driver().serve(arrivals, offsets=offsets, read_hbm=reads())
    assert not run.timed_out
    for c in (0, 1):
        assert outputs(run, c) == [[100 * c + i + 1 for i in range(4)],
                                   [100 * c + 10 + i + 1 for i in range(4)]]
    for request in requests:
        assert request.refused is None and not request.faulted
        assert request.rung >= request.arrival          # the host's writes take cycles
        assert request.latency > 0
    # A context runs one request at a time, in arrival order: each ends after the one before,
    # and no sooner than the quickest request of the same program runs from its doorbell.
    quickest = min(r.end - r.rung for r in requests)
    for c in (0, 1):
        mine = [r for r in requests if r.ctx == c]
        assert all(a.end < b.end for a, b in zip(mine, mine[1:]))
        assert all(b.end - max(b.rung, a.end) >= quickest - 2 for a, b in zip(mine, mine[1:]))
    assert [c.counters["COMPLETED"] for c in run.contexts] == [3, 2]
    assert [c.counters["PENDING"] for c in run.contexts] == [0, 0]


@pytest.mark.parametrize("backend", ["pysim", "golden"])
def test_every_request_output_is_read_when_it_completes(backend):
    """A long stream on one context cycles through queue_depth + 2 slots (input and output
    each): the host reads each request's output as soon as it sees it completed, before
    the slot's next request can run, so every request's output is checked."""
    slots = TINY.queue_depth + 2
    d = Driver(TINY, backend)
    d.load_context(0, PROGRAM, Segment(0, 64), Segment(0, 32))
    for slot in range(slots):
        d.write_hbm(slot * SLOT, [1000 * slot + i for i in range(4)])
    n = 3 * slots + 1
    arrivals = [(0, 0)] * 3 + [(600 * i, 0) for i in range(1, n - 2)]
    run, requests = d.serve(arrivals, offsets=[(i % slots) * SLOT for i in range(n)],
                            outputs=[((i % slots) * SLOT + 16, 4) for i in range(n)])
    assert not run.timed_out and run.contexts[0].counters["COMPLETED"] == n
    for i, request in enumerate(requests):
        assert request.refused is None and not request.faulted
        assert list(request.output) == [1000 * (i % slots) + j + 1 for j in range(4)]


def test_output_slots_a_request_could_overwrite_before_they_are_read_are_refused():
    slots = TINY.queue_depth + 1
    with pytest.raises(DriverError, match=f"requests 0 and {slots} of context 0 write the same "
                                          f"HBM words.*at least {slots + 1} output slots"):
        driver(contexts=(0,)).serve([(0, 0)] * (slots + 1),
                                    outputs=[(16 + (i % slots) * SLOT, 4) for i in
                                             range(slots + 1)])


def test_the_golden_backend_serves_the_same_stream_without_time():
    """The golden model reads the same doorbells: each request runs at once on its own
    input, so outputs, refusals, faults and counts equal the RTL's, and stamps are 0."""
    arrivals, offsets = [(0, 0), (0, 1), (5, 0), (40, 1), (41, 0)], [0, 0, SLOT, SLOT, 0]
    rtl, rtl_requests = driver().serve(arrivals, offsets=offsets, read_hbm=reads())
    gold, gold_requests = driver("golden").serve(arrivals, offsets=offsets, read_hbm=reads())
    assert rtl.timed and not gold.timed
    assert all(np.array_equal(gold.hbm[key], rtl.hbm[key]) for key in rtl.hbm)
    assert [(r.ctx, r.arrival, r.refused, r.faulted) for r in gold_requests] == \
        [(r.ctx, r.arrival, r.refused, r.faulted) for r in rtl_requests]
    assert all(r.end == r.rung == 0 for r in gold_requests)
    assert [c.counters["COMPLETED"] for c in gold.contexts] == [3, 2]


def test_a_queued_request_waits_for_the_running_one():
    # Three requests at once: the queue holds them; latencies grow by one run each.
    run, requests = driver(contexts=(0,)).serve([(0, 0)] * 3, offsets=[0, SLOT, 0],
                                                  read_hbm=reads((0,)))
    latencies = [r.latency for r in requests]
    assert latencies[0] < latencies[1] < latencies[2]
    # Each starts when the one before ends: the ends are one run (plus the same few cycles
    # of restart) apart, and a run is most of the first request's latency.
    spacing = [b.end - a.end for a, b in zip(requests, requests[1:])]
    assert abs(spacing[0] - spacing[1]) <= 1
    assert latencies[0] - 6 <= spacing[0] <= latencies[0] + 6


@pytest.mark.parametrize("backend", ["pysim", "golden"])
def test_a_full_queue_refuses_the_doorbell(backend):
    """Doorbells rung back to back without reading completions: queue_depth wait, one
    runs, and once queue_depth + 1 ends wait to be read no request is taken: the queue
    fills and refuses (QUEUE_FULL). Reading a completion lets the next one in."""
    d = driver(backend, contexts=(0,))
    doorbell, error = register_address("DOORBELL", ctx=0), register_address("HOST_ERROR")
    pending, completion = register_address("PENDING", ctx=0), register_address("COMPLETION", ctx=0)
    n = 2 * TINY.queue_depth + 2
    script = list(d.script)
    for _ in range(n):
        script += [ops.CsrWrite(doorbell, 0), ops.CsrRead(error), ops.CsrWrite(error, 0),
                   ops.Run(1_000)]
    script += [ops.CsrRead(pending), ops.CsrRead(completion), ops.Run(1_000),
               ops.CsrRead(pending)]
    results = d.backend.execute(script)
    codes = [results[2 * i] & 0xFF for i in range(n)]
    accepted = codes.count(HostError.NONE)
    assert accepted == 2 * TINY.queue_depth + 1
    assert codes[accepted:] == [HostError.QUEUE_FULL] * (n - accepted)
    waiting, entry, _, waiting_after = results[2 * n:]
    assert waiting == TINY.queue_depth and entry >> 63
    assert waiting_after == TINY.queue_depth - 1


def test_the_host_queues_what_the_hardware_cannot_hold():
    """More requests at once than a context holds: serve keeps the rest in the host's
    queue and rings them as completions make room, so none is refused, each runs, and
    latency counts the wait in the host's queue."""
    n = TINY.queue_depth + 4
    run, requests = driver(contexts=(0,)).serve([(0, 0)] * n)
    assert all(r.refused is None and r.end is not None and not r.faulted for r in requests)
    assert run.contexts[0].counters["COMPLETED"] == n
    late = requests[TINY.queue_depth + 1:]
    assert all(r.rung > requests[0].end for r in late)      # rung once one has completed
    assert [r.latency for r in requests] == sorted(r.latency for r in requests)


def test_a_fault_mid_stream_stops_only_that_context():
    # Context 0's second request gets an offset whose segment runs past the end of HBM: it
    # faults CONFIG at its start; later doorbells are refused; context 1 goes on.
    bad = TINY.hbm_words                  # HBM_BASE + offset + HBM_SIZE > hbm_words
    arrivals = [(0, 0), (0, 1), (60, 0), (120, 0), (121, 1)]
    offsets = [0, 0, bad, SLOT, SLOT]
    run, requests = driver().serve(arrivals, offsets=offsets, read_hbm=reads())
    first, _, faulting, after, other = requests
    assert not first.faulted and first.end is not None
    assert faulting.faulted and faulting.end is not None
    assert after.refused == HostError.CONTEXT_FAULTED and after.end is None
    assert after.arrival == 120
    assert other.refused is None and not other.faulted
    assert run.contexts[0].status.name == "FAULTED" and run.contexts[0].fault.name == "CONFIG"
    assert run.contexts[1].status.name == "DONE"
    assert outputs(run, 1)[1] == [110 + i + 1 for i in range(4)]


def test_bad_streams_are_refused_before_running():
    with pytest.raises(DriverError, match=r"request 1: cycle 3 must be an integer, not before "
                                          r"the timed request ahead of it \(9\)"):
        driver().serve([(9, 0), (3, 1)])
    with pytest.raises(DriverError, match=r"request 0: context 3 is not one of \[0, 1\]"):
        driver().serve([(0, 3)])
    with pytest.raises(DriverError, match=r"request 0: HBM offset -1 is not a 32-bit"):
        driver().serve([(0, 0)], offsets=[-1])
    with pytest.raises(DriverError, match="no requests to serve"):
        driver().serve([])
    with pytest.raises(DriverError, match=r"request 1: after=1 must name an earlier request"):
        driver().serve([(0, 0), (None, 0)], after=[None, 1])
    with pytest.raises(DriverError, match="the golden backend has no time, hence no timeline"):
        driver("golden").serve([(0, 0)], timeline=True)


def test_pysim_and_verilator_stamp_a_stream_identically():
    # Timed arrivals, more at once than a context holds, and a closed-loop request (the
    # last arrives when the second completes).
    arrivals = [(0, 0), (3, 1), (30, 0), (31, 0), (70, 1), (71, 1), (71, 0), (71, 0),
                (72, 0), (73, 0), (None, 1)]
    offsets = [0, SLOT, SLOT, 0, 0, SLOT, SLOT, 0, SLOT, 0, 0]
    after = [None] * 10 + [1]
    runs = {}
    for backend in ("pysim", "verilator"):
        run, requests = driver(backend).serve(arrivals, offsets=offsets, after=after,
                                              outputs=[None] * 9 + [(16, 4), (1024 + 16, 4)],
                                              read_hbm=reads(), timeline=True)
        runs[backend] = (run, [(r.arrival, r.rung, r.end, r.faulted, r.refused,
                                None if r.output is None else list(r.output))
                               for r in requests])
    (a, stamps_a), (b, stamps_b) = runs["pysim"], runs["verilator"]
    assert stamps_a == stamps_b
    assert stamps_a[-1][0] > 0 and stamps_a[-2][5] == [1, 2, 3, 4]      # closed loop; output
    assert [c.counters for c in a.contexts] == [c.counters for c in b.contexts]
    assert a.engines == b.engines
    assert all(np.array_equal(a.hbm[k], b.hbm[k]) for k in a.hbm)
    # The timeline: the same on both, and it adds up to every BUSY_CTX counter.
    assert a.timeline == b.timeline and len(a.timeline) > 2 * len(a.engines)
    busy = {}
    for engine, ctx, start, end in a.busy_intervals():
        assert 0 <= start < end <= a.cycles
        busy[engine, ctx] = busy.get((engine, ctx), 0) + end - start
    assert {k: v for k, v in busy.items() if v} == {
        (e, c): counters[f"BUSY_CTX{c}"] for e, counters in enumerate(a.engines)
        for c in range(TINY.n_ctx) if counters[f"BUSY_CTX{c}"]}


def test_a_bad_request_queued_behind_a_good_one_is_recorded_and_stops_the_context():
    bad = TINY.hbm_words
    # All three queue at once: the first runs, the second faults CONFIG when it is taken
    # (in the cycle after the first's end is recorded: both ends are kept), the third stays
    # queued behind the fault and the run ends (no timeout).
    run, requests = driver(contexts=(0,)).serve([(0, 0)] * 3, offsets=[0, bad, SLOT],
                                                  read_hbm=reads((0,)))
    first, faulting, stuck = requests
    assert not run.timed_out
    assert first.end is not None and not first.faulted
    assert faulting.faulted and faulting.end >= first.end
    assert stuck.refused is None and stuck.rung is None and stuck.end is None
    context = run.contexts[0]
    assert context.status.name == "FAULTED" and context.fault.name == "CONFIG"
    assert context.counters["COMPLETED"] == 2 and context.counters["PENDING"] == 1


def test_settings_are_locked_from_the_cycle_a_request_is_taken():
    d = driver(contexts=(0,))
    script = list(d.script) + [
        ops.CsrWrite(register_address("DOORBELL", ctx=0), 0),
        # The request is taken in the next cycle: this write must be refused.
        ops.CsrWrite(register_address("HBM_BASE", ctx=0), 2048),
        ops.CsrRead(register_address("HOST_ERROR")),
        ops.Run(10_000),
        ops.CsrRead(register_address("HBM_BASE", ctx=0)),
    ]
    error, _, base = d.backend.execute(script)
    assert error & 0xFF == HostError.CONTEXT_RUNNING
    assert error >> 32 == register_address("HBM_BASE", ctx=0)
    assert base == 0


def test_a_refused_setup_write_is_not_blamed_on_a_request():
    d = driver(contexts=(0,))
    d.script.append(ops.CsrWrite(register_address("PRIORITY", ctx=0), 99))
    with pytest.raises(DriverError, match="refused a host write: VALUE_RANGE"):
        d.serve([(0, 0)])
