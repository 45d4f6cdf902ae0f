"""neu10 serve: tenants' request streams on the RTL, every output checked, the report's figures."""

import json

import pytest

from isa.config import NPUConfig
from runtime.apps.cli import main
from runtime.apps.serve import ServeError, TenantSpec, parse_tenant, serve

SMALL = NPUConfig.preset("small")


@pytest.fixture(scope="module")
def points():
    """ncf and dlrm on the small NPU, open loop, under static and harvest (Verilator)."""
    return serve(SMALL, [TenantSpec("ncf"), TenantSpec("dlrm")], policies=("static", "harvest"),
                 load=0.8, requests=8, seed=3)


def test_every_request_completes_bit_exact(points):
    for point in points:
        assert point.problems == [] and point.exact and not point.timed_out
        # The slowest tenant gets 8 requests, the faster one as many as arrive meanwhile.
        slow = max(point.tenants, key=lambda t: t.isolated_service)
        assert slow.requests == 8
        for tenant in point.tenants:
            assert tenant.requests == tenant.completed
            assert tenant.requests == round(8 * slow.isolated_service / tenant.isolated_service)
            assert tenant.refused == tenant.faulted == tenant.wrong == 0


def test_the_figures_hang_together(points):
    static, harvest = points
    for point in points:
        assert 0 < point.utilization["me"] <= 1 and 0 < point.utilization["dma"] <= 1
        for t in point.tenants:
            assert t.latency_p50 <= t.latency_p95 <= t.latency_p99
            assert t.latency_p99_us == pytest.approx(t.latency_p99 / SMALL.clock_mhz)
            assert 0 <= t.slo[2] <= t.slo[5] <= t.slo[10] <= 1
            assert all(0 <= u <= 1 for u in t.utilization_own.values())
            # A request that finds the NPU idle takes the isolated latency: none is faster
            # by more than the host's polling.
            assert t.latency_p50 >= 0.8 * t.isolated_latency
            assert t.ntt == pytest.approx(t.latency_mean / t.isolated_latency)
        assert point.stp == pytest.approx(sum(t.throughput * t.isolated_service / 1e6
                                              for t in point.tenants))
    # Static partitioning never runs a tenant's µTOp on another's engine; harvesting does.
    assert all(t.harvested_engine_cycles == 0 for t in static.tenants)
    assert sum(t.harvested_engine_cycles for t in harvest.tenants) > 0
    # Same arrivals for every policy.
    assert [t.isolated_latency for t in static.tenants] == \
        [t.isolated_latency for t in harvest.tenants]


def test_closed_loop_keeps_the_npu_busier_than_a_light_load():
    specs = [TenantSpec("ncf", 1, 1), TenantSpec("dlrm", 2, 1)]
    [closed] = serve(SMALL, specs, closed=2, requests=5)
    [light] = serve(SMALL, specs, load=0.2, requests=5)
    assert closed.problems == light.problems == []
    assert closed.load is None and closed.closed == 2
    assert closed.stp > light.stp and closed.utilization["ve"] > light.utilization["ve"]


def test_replay_serves_the_trace_s_arrivals(tmp_path, capsys):
    trace = tmp_path / "arrivals.csv"
    trace.write_text("cycle,tenant\n0,1\n10,0\n10,1\n5000,0\n")
    [point] = serve(SMALL, [TenantSpec("ncf", 1, 1), TenantSpec("dlrm", 1, 1)], replay=trace)
    assert point.problems == [] and point.replay == str(trace) and point.load is None
    assert [t.requests for t in point.tenants] == [2, 2]
    assert [t.completed for t in point.tenants] == [2, 2]
    assert main(["serve", "ncf:1,1", "dlrm:1,1", "--config", "small", "--replay",
                 str(trace)]) == 0
    assert f"replay of {trace}" in capsys.readouterr().out


@pytest.mark.parametrize("rows, message", [
    ("cycle,tenant\n0,2\n", "tenant 2 is out of range 0..1"),
    ("cycle,tenant\n5,0\n3,1\n", "cycle 3 is earlier than the row before"),
    ("cycle,tenant\nx,0\n", "cycle and tenant must be integers"),
    ("when,who\n0,0\n", "the first row must be the header 'cycle,tenant'"),
])
def test_a_bad_trace_is_one_line_and_exit_2(tmp_path, capsys, rows, message):
    trace = tmp_path / "bad.csv"
    trace.write_text(rows)
    assert main(["serve", "ncf:1,1", "dlrm:1,1", "--config", "small", "--replay",
                 str(trace)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neu10: error: ") and message in err and err.count("\n") == 1


def test_cli_json(capsys):
    assert main(["serve", "ncf:1,1", "--config", "small", "--requests", "3", "--json"]) == 0
    [point] = json.loads(capsys.readouterr().out)
    assert point["policy"] == "harvest" and point["exact"]
    [tenant] = point["tenants"]
    assert tenant["n_me"] == tenant["n_ve"] == 1 and tenant["completed"] == 3


def test_tenant_names_keep_the_model_apart_from_its_index(points):
    assert [t.name for t in points[0].tenants] == ["ncf#0", "dlrm#1"]


def test_parse_tenant():
    assert parse_tenant("bert") == TenantSpec("bert")
    assert parse_tenant("resnet:3,1") == TenantSpec("resnet", 3, 1)
    with pytest.raises(ServeError, match="unknown model 'vgg'"):
        parse_tenant("vgg:1,1")


@pytest.mark.parametrize("argv, message", [
    (["serve", "vgg"], "unknown model 'vgg'"),
    (["serve", "ncf:two"], "expected MODEL:ME,VE"),
    (["serve", "resnet:4,2", "bert:2,2"], "need 6 MEs side by side; this NPU has 4"),
    (["serve", "ncf:0,0"], "at least one matrix or vector engine"),
    (["serve", "ncf", "--load", "0"], "load 0.0: expected a fraction of each tenant's "
                                      "isolated saturation throughput, above 0 and at most 2"),
    (["serve", "ncf", "--load", "50"], "(a percentage? 50% is 0.5)"),
    (["serve", "ncf", "--load", "0.5", "--closed", "2"], "load 0.5 and a closed loop: give one"),
    (["serve", "ncf", "--requests", "0"], "requests must be a positive integer"),
    (["serve", "ncf", "--closed", "0"], "outstanding requests must be a positive integer"),
    (["serve", "ncf", "dlrm", "--priority", "1"], "expected 2 values from 0 to 15"),
    (["serve"] + ["ncf"] * 5, "5 tenants; this NPU has 4 contexts"),
    (["serve", "ncf", "--trace-out", "/no/such/folder/t.json"], "cannot write there"),
    (["serve", "ncf", "--replay", "/no/such.csv"], "cannot read trace /no/such.csv"),
    (["serve", "ncf", "--replay", "/no/such.csv", "--closed", "2"], "give one"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    # Every argument is checked before a simulator is built.
    import runtime.backends.verilator as verilator

    def build_model(*args, **options):
        raise AssertionError("the Verilator model is built before the arguments are checked")
    monkeypatch.setattr(verilator, "build_model", build_model)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("neu10: error: ") and message in err and err.count("\n") == 1


def test_trace_out_writes_a_perfetto_timeline(tmp_path):
    """--trace-out: a track per engine whose slices add up to the report's engine-cycles,
    and an async slice per request from its arrival to its end."""
    specs = [TenantSpec("ncf", 1, 1), TenantSpec("dlrm", 1, 1)]
    points = serve(SMALL, specs, policies=("static", "harvest"), load=0.8, requests=3, seed=2,
                   trace_out=tmp_path / "t.json")
    for point in points:
        assert point.trace == str(tmp_path / f"t.{point.policy}.json")
        trace = json.loads((tmp_path / f"t.{point.policy}.json").read_text())
        # The trace's cycles are the ones serve reports: to the last request's end.
        assert trace["otherData"]["cycles"] == point.cycles
        assert trace["otherData"]["simulated_cycles"] >= point.cycles
        events = trace["traceEvents"]
        tracks = {e["args"]["name"] for e in events
                  if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] == 1}
        assert tracks == {"ME0", "ME1", "ME2", "ME3", "VE0", "VE1", "DMA0"}     # small
        slices = [e for e in events if e["ph"] == "X"]
        assert slices and all(e["dur"] > 0 for e in slices)
        for tenant in point.tenants:
            mine = [e for e in slices if e["name"] == tenant.name]
            cycles = {kind: sum(e["args"]["end_cycle"] - e["args"]["first_cycle"]
                                for e in mine if e["cat"] == kind) for kind in ("own", "harvested")}
            assert cycles["harvested"] == tenant.harvested_engine_cycles
            assert cycles["own"] == pytest.approx(sum(
                tenant.utilization_own[k] * n for k, n in (("me", tenant.n_me),
                                                           ("ve", tenant.n_ve))) * point.cycles)
            # A request: an async slice on its tenant's track, from arrival to end.
            begins = [e for e in events if e["ph"] == "b" and e["name"] == tenant.name]
            assert len(begins) == tenant.requests
            ends = {(e["cat"], e["name"], e["id"]): e for e in events if e["ph"] == "e"}
            for b in begins:
                end = ends[b["cat"], b["name"], b["id"]]
                assert b["ts"] == b["args"]["arrival_cycle"] / SMALL.clock_mhz
                assert end["ts"] == b["args"]["end_cycle"] / SMALL.clock_mhz
                assert b["args"]["end_cycle"] - b["args"]["arrival_cycle"] == \
                    b["args"]["latency_cycles"] > 0
        assert (point.policy == "harvest") == any(e["cat"] == "harvested" for e in slices)
        # Operators: one track per tenant, a slice per operator of each request.
        operators = [e for e in events if e["ph"] == "b" and e["pid"] == 3]
        assert {e["name"] for e in operators} == {f"{t.name} operators" for t in point.tenants}
        assert all(e["args"]["operator"] and e["args"]["first_cycle"] < e["args"]["end_cycle"]
                   for e in operators)
        # A slice per µTOp run; those flushed are the tenants' preemptions.
        assert sum(e["args"]["flushed"] for e in slices) == sum(t.preemptions
                                                                for t in point.tenants)
