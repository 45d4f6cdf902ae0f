"""Request streams: Poisson statistics, per-tenant independence, closed loop, trace replay and its errors."""

import numpy as np
import pytest

from runtime.host.loadgen import (Arrival, LoadError, closed_loop, open_loop, poisson_arrivals,
                                  read_trace)


def test_poisson_mean_rate_and_exponential_gaps():
    rate, count = 1 / 500, 20000
    cycles = poisson_arrivals(rate, count, seed=7)
    assert len(cycles) == count and cycles == sorted(cycles)
    measured = count / cycles[-1]
    assert abs(measured - rate) / rate < 0.03
    gaps = np.diff(cycles)
    # Exponential gaps: the standard deviation equals the mean (within sampling error).
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05
    # Memorylessness, roughly: about e^-1 of the gaps exceed the mean.
    assert abs((gaps > 500).mean() - np.exp(-1)) < 0.02


def test_poisson_is_seeded():
    assert poisson_arrivals(0.01, 100, seed=3) == poisson_arrivals(0.01, 100, seed=3)
    assert poisson_arrivals(0.01, 100, seed=3) != poisson_arrivals(0.01, 100, seed=4)
    assert poisson_arrivals(0.01, 10, seed=3, start=1000)[0] >= 1000


def test_open_loop_merges_independent_tenant_streams():
    arrivals = open_loop([1 / 100, 1 / 400], 2000, seed=11)
    assert arrivals == sorted(arrivals)
    per_tenant = [[a.cycle for a in arrivals if a.tenant == t] for t in range(2)]
    assert [len(c) for c in per_tenant] == [2000, 2000]
    for cycles, rate in zip(per_tenant, [1 / 100, 1 / 400]):
        assert abs(len(cycles) / cycles[-1] - rate) / rate < 0.06
    # A tenant's stream depends only on the seed and its number, not on the others' rates.
    other = open_loop([1 / 100, 1 / 50], 2000, seed=11)
    assert [a.cycle for a in other if a.tenant == 0] == per_tenant[0]


def test_closed_loop_keeps_n_outstanding_until_the_count():
    arrivals, after = closed_loop(2, 3, 5)
    assert arrivals[:6] == [Arrival(0, 0), Arrival(0, 1)] * 3
    assert arrivals[6:] == [Arrival(None, 0), Arrival(None, 1)] * 2
    # Request k of a tenant follows its request k - 3.
    assert after == [None] * 6 + [0, 1, 2, 3]
    assert [arrivals[i].tenant for i in after[6:]] == [0, 1, 0, 1]


def test_trace_replay(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("cycle,tenant\n0,1\n5,0\n5,1\n\n90,0\n")
    assert read_trace(path, 2) == [Arrival(0, 1), Arrival(5, 0), Arrival(5, 1), Arrival(90, 0)]


@pytest.mark.parametrize("text, message", [
    ("", "header 'cycle,tenant'"),
    ("time,who\n1,0\n", "header 'cycle,tenant'"),
    ("cycle,tenant\n1\n", ":2: expected 2 fields"),
    ("cycle,tenant\n1,x\n", ":2: cycle and tenant must be integers, not '1', 'x'"),
    ("cycle,tenant\n-4,0\n", ":2: cycle must be >= 0, not -4"),
    ("cycle,tenant\n4,2\n", ":2: tenant 2 is out of range 0..1"),
    ("cycle,tenant\n9,0\n4,1\n", ":3: cycle 4 is earlier than the row before (9)"),
    ("cycle,tenant\n", "the trace has no requests"),
])
def test_bad_traces_are_refused_with_the_row(tmp_path, text, message):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(LoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_trace(path, 2)


def test_bad_parameters_are_refused():
    with pytest.raises(LoadError, match="rate must be > 0 requests per cycle, not 0"):
        poisson_arrivals(0, 10, seed=1)
    with pytest.raises(LoadError, match="request count must be a positive integer, not 0"):
        poisson_arrivals(0.1, 0, seed=1)
    with pytest.raises(LoadError, match="outstanding requests must be a positive integer"):
        closed_loop(1, 0, 10)
    with pytest.raises(LoadError, match="cannot read trace"):
        read_trace("/nonexistent/trace.csv", 1)


def test_per_tenant_request_counts():
    arrivals = open_loop([1 / 100, 1 / 400], [40, 10], seed=2)
    assert [sum(a.tenant == t for a in arrivals) for t in range(2)] == [40, 10]
    arrivals, after = closed_loop(2, 1, [3, 1])
    assert [a.tenant for a in arrivals] == [0, 1, 0, 0]
    assert after == [None, None, 0, 2]
    with pytest.raises(LoadError, match="2 request counts for 3 tenants"):
        open_loop([1, 1, 1], [1, 2], seed=0)
    with pytest.raises(LoadError, match="request count must be a positive integer, not 0"):
        closed_loop(2, 1, [3, 0])
