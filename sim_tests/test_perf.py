"""The timing model (`--backend perf`): its HBM arbiter against a cycle-by-cycle reference,
its data against the golden model, its cycles against the RTL on Verilator."""

import random

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.regmap import Status
from runtime.apps.conformance import default_case_paths, load_case, run_case
from runtime.apps.validate import validate
from runtime.backends.perf.hbm_arbiter import HbmArbiter, Stream
from runtime.compiler.models import compile_model
from runtime.apps.inference import execute
from runtime.host.driver import Driver, DriverError

DEFAULT = NPUConfig.preset("default")


def _reference_grants(ports, offset, streams):
    """Cycle by cycle, as hw/hbm.py arbitrates: the pointer steps every cycle; the first
    requesting port at or after it is granted. ``streams``: (port, first cycle, lines,
    successor) where a successor (port, gap, lines, ...) starts ``gap`` cycles after the
    last grant. Returns each stream's grant cycles, by its position in a flat list."""
    pending = [[port, start, lines, next_, i] for i, (port, start, lines, next_)
               in enumerate(streams)]
    grants = {i: [] for i in range(len(streams))}
    counter = len(streams)
    cycle = 0
    while pending:
        requesting = {s[0]: s for s in pending if s[1] <= cycle}
        if requesting:
            pointer = (cycle + offset) % ports
            port = next(p % ports for p in range(pointer, pointer + ports)
                        if p % ports in requesting)
            s = requesting[port]
            grants[s[4]].append(cycle)
            s[2] -= 1
            if s[2] == 0:
                pending.remove(s)
                if s[3] is not None:
                    port2, gap, lines2, next2 = s[3]
                    grants[counter] = []
                    pending.append([port2, cycle + gap, lines2, next2, counter])
                    counter += 1
        cycle += 1
    return grants


@pytest.mark.parametrize("seed", range(12))
def test_hbm_arbiter_grants_every_line_in_the_cycle_the_rtl_does(seed):
    rng = random.Random(seed)
    ports = rng.randint(2, 8)
    offset = rng.randrange(ports)
    streams = []
    for port in rng.sample(range(ports), rng.randint(1, ports)):
        successor = None
        if rng.random() < 0.5:
            successor = (port, rng.randint(1, 30), rng.randint(1, 40), None)
        streams.append((port, rng.randint(0, 50), rng.randint(1, 60), successor))
    want = _reference_grants(ports, offset, streams)

    got, arbiter = {}, HbmArbiter(ports, offset)
    counter = [len(streams)]

    def make(i, port, start, lines, successor):
        got[i] = []

        def done(last):
            if successor is not None:
                port2, gap, lines2, next2 = successor
                j = counter[0]
                counter[0] += 1
                make(j, port2, last + gap, lines2, next2)
        arbiter.add(Stream(port, start, lines, done=done, granted=got[i].extend))

    for i, (port, start, lines, successor) in enumerate(streams):
        make(i, port, start, lines, successor)
    # Settle in uneven steps, as the event loop does.
    end = 0
    while arbiter.streams:
        end += rng.randint(1, 40)
        arbiter.advance(end)
    assert got == want


def test_hbm_arbiter_predicts_a_grant_without_settling_it():
    arbiter = HbmArbiter(7)
    a, b = Stream(0, 0, 20), Stream(3, 0, 20)
    arbiter.add(a)
    arbiter.add(b)
    predicted = arbiter.when(b, 5)
    seen = []
    b.granted = seen.extend
    arbiter.advance(100)
    assert seen[4] == predicted
    # Ports 0 and 3 of 7: port 3 owns pointer values 1..3, port 0 the other four.
    assert seen[:6] == [1, 2, 3, 8, 9, 10]


def test_perf_runs_every_conformance_case_like_golden():
    """Data, faults and statuses come from the golden model: every case passes."""
    for path in default_case_paths():
        case = load_case(path)
        for policy in ("harvest", "temporal"):
            outcome = run_case(case, "perf", policy)
            assert outcome.passed, (case.name, policy, outcome.failures)


def test_perf_refuses_traces_and_waveforms():
    with pytest.raises(DriverError, match="perf backend models µTOps"):
        Driver(DEFAULT, "perf", vcd="x.vcd")


def test_perf_serves_requests_with_the_hardware_stamps():
    """Three requests rung at once on one context run back to back; each completion says
    when it arrived and ended, the ends three cycles apart beyond the run's own cycles."""
    model = compile_model("ncf", DEFAULT)
    from runtime.apps.inference import _tenant
    from runtime.host.device import Device
    words, _, _, spad_rows, hbm_words, placements, reads = _tenant(model.graph, model.program,
                                                                   None, None, whole=True)
    device = Device(DEFAULT, "perf", "static")
    vnpu = device.create(2, 2, spad_rows, hbm_words, name="t")
    driver = device.driver({"t": words})
    for address, values in placements:
        driver.load_hbm(vnpu.hbm.base + address, values)
    output = (vnpu.hbm.base + reads[0][0], reads[0][1])
    run, requests = driver.serve([(0, 0)] * 3, outputs=[output, None, None])
    assert [r.arrival for r in requests] == [0, 0, 0]
    assert all(not r.faulted and r.end is not None for r in requests)
    ends = [r.end for r in requests]
    assert ends[0] < ends[1] < ends[2]
    service = ends[1] - ends[0]
    assert abs((ends[2] - ends[1]) - service) <= 5
    out = model.graph.read_output(model.name, requests[0].output.astype(np.int64))
    assert np.array_equal(out, model.expected)
    assert run.engines[0]["BUSY"] > 0 and run.contexts[0].status == Status.DONE


@pytest.mark.parametrize("name", ["ncf", "dlrm"])
def test_a_model_alone_takes_the_rtl_cycles_within_one_percent(name):
    model = compile_model(name, DEFAULT)
    cycles = {}
    for backend in ("perf", "verilator"):
        out, run = execute(model.graph, model.program, backend=backend)
        assert np.array_equal(out[model.name], model.expected)
        cycles[backend] = run.makespan
        busy = [e["BUSY"] for e in run.engines]
        if backend == "verilator":
            for b_perf, b_rtl in zip(perf_busy, busy):
                assert abs(b_perf - b_rtl) <= max(5, 0.02 * b_rtl)
        perf_busy = busy
    assert abs(cycles["perf"] - cycles["verilator"]) <= 0.01 * cycles["verilator"], cycles


def test_validation_of_a_few_conformance_cases_stays_close():
    paths = [p for p in default_case_paths() if p.stem in
             ("deps_chain", "me_mmloop", "dma_load_store", "ve_loop", "multi_four_tenants")]
    report = validate(["conformance"], conformance_paths=paths)
    summary = report.summary()["cycles"]
    assert summary["cases"] >= 5 * 4
    assert summary["median"] <= 0.01 and summary["worst"] <= 0.05, summary


@pytest.mark.slow
def test_full_validation_meets_its_bounds():
    """Every group of `neu10 validate` (minutes: Verilator builds a 32x32 NPU)."""
    report = validate()
    summary = report.summary()
    assert summary["cycles"]["median"] <= 0.01, summary
    assert summary["latency"]["median"] <= 0.02, summary


def test_serving_on_perf_replays_each_input_once_and_stays_bit_exact(monkeypatch):
    """A stream of requests on perf runs the golden model once per distinct (program,
    window contents): every other request replays what that run wrote, and every output
    still equals the compiler's reference."""
    from runtime.apps.serve import TenantSpec, serve
    from runtime.backends.golden import GoldenBackend
    runs = []
    original = GoldenBackend._start

    def counting(self, c, offset):
        runs.append((c, offset))
        return original(self, c, offset)
    monkeypatch.setattr(GoldenBackend, "_start", counting)
    [point] = serve(NPUConfig.preset("small"), [TenantSpec("ncf"), TenantSpec("dlrm")],
                    policies=("harvest",), requests=12, seed=7, backend="perf")
    assert point.exact and not point.problems
    served = sum(t.completed for t in point.tenants)
    assert served >= 24
    # Two tenants, two inputs each: the other slots and requests replay those four runs.
    assert 1 <= len(runs) <= 2 * 2, runs


def test_validate_names_a_bad_group(capsys):
    from runtime.apps.cli import main
    assert main(["validate", "--only", "conformance,nope"]) == 2
    assert "unknown group 'nope'" in capsys.readouterr().err


def test_experiment_takes_the_backend_from_the_command_line(capsys):
    from runtime.apps.cli import main
    assert main(["experiment", "quick", "--backend", "perf", "--list"]) == 0
    assert main(["experiment", "quick", "--backend", "spice", "--list"]) == 2
    assert "invalid choice: 'spice'" in capsys.readouterr().err
