"""What the activity port measures: µTOp runs, flushed (preempted) runs, per-operator
cycles, engine-cycles and HBM bytes, per-request preemptions; checked against the
hardware's own counters and against the program."""

import json

import pytest

from isa.config import NPUConfig
from isa.encoding import Engine, decode_program, dma_words
from runtime.apps.cli import main
from runtime.apps.conformance import default_case_paths, load_case, run_case
from runtime.apps.inference import execute
from runtime.apps.operators import (HBM_WORD_BYTES, flushed_runs, operator_profiles,
                                    program_fetch_bytes, utop_table)
from runtime.apps.serve import TenantSpec, serve
from runtime.compiler.models import compile_model

SMALL = NPUConfig.preset("small")
CASES = default_case_paths()[0].parent


def header_addresses(words):
    pcs, pc = [], 0
    for utop in decode_program(list(words)):
        pcs.append((pc, utop))
        pc += 1 + len(utop.body)
    return pcs


@pytest.mark.parametrize("backend", ["pysim", "verilator", "perf"])
def test_flushed_runs_are_the_hardware_s_preemptions(backend):
    """A harvest case where the owner takes its ME back from a borrower: each context's
    flushed runs are what its PREEMPTED counter counts; every µTOp ran to its end once."""
    case = load_case(CASES / "multi_harvest_preempt.toml")
    outcome = run_case(case, backend, "harvest", timeline=True)
    assert outcome.passed, outcome.failures
    runs = outcome.run.utop_runs()
    flushed = flushed_runs(runs)
    for ctx, (context, spec) in enumerate(zip(outcome.run.contexts, case.contexts)):
        mine = [r for r in flushed if r[1] == ctx]
        assert len(mine) == context.counters["PREEMPTED"], (ctx, mine)
        finished = sorted(r[2] for r in runs if r[1] == ctx and r not in flushed)
        assert finished == [pc for pc, _ in header_addresses(spec.program)]
    assert flushed, "the case is meant to preempt a borrower"
    # The engine-cycles of all runs are what the BUSY_CTX counters count.
    for engine, counters in enumerate(outcome.run.engines):
        for ctx in range(len(case.contexts)):
            assert counters[f"BUSY_CTX{ctx}"] == sum(
                end - first for e, c, _, first, end in runs if (e, c) == (engine, ctx))


def test_pysim_and_verilator_record_the_same_utop_runs():
    model = compile_model("ncf", SMALL)
    runs = {}
    for backend in ("pysim", "verilator"):
        _, run = execute(model.graph, model.program, backend=backend, timeline=True)
        runs[backend] = run.utop_runs()
    assert runs["pysim"] == runs["verilator"]


@pytest.fixture(scope="module")
def resnet():
    model = compile_model("resnet", SMALL)
    _, run = execute(model.graph, model.program, backend="verilator", timeline=True)
    return model, run


def test_operator_profiles_add_up_to_the_counters_and_the_program(resnet):
    model, run = resnet
    table = utop_table(SMALL, model.program.words, model.graph.ops, model.graph.op_ends)
    profiles = operator_profiles(table, [run.utop_runs()])
    assert [(p.kind, p.name) for p in profiles] == model.graph.ops
    # Engine-cycles per type add up to the engines' BUSY counters.
    busy = {"me": 0, "ve": 0, "dma": 0}
    for engine, counters in enumerate(run.engines):
        kind = "me" if engine < SMALL.n_me else "ve" if engine < SMALL.n_me + SMALL.n_ve \
            else "dma"
        busy[kind] += counters["BUSY"]
    assert {k: sum(p.engine_cycles[k] for p in profiles) for k in busy} == busy
    # Every µTOp ran once (one tenant owns every engine: nothing is preempted) ...
    assert sum(p.runs for p in profiles) == sum(p.utops for p in profiles) == \
        len(header_addresses(model.program.words))
    assert all(p.flushed_engine_cycles == 0 for p in profiles)
    # ... so the bytes copied are the program's DMA µTOps' words.
    words = sum(dma_words(u.body, SMALL) for _, u in header_addresses(model.program.words)
                if u.engine == Engine.DMA)
    assert sum(p.hbm_bytes for p in profiles) == words * HBM_WORD_BYTES > 0
    # An operator lasts from its first µTOp's start to its last one's end, within the run.
    convolutions = [p for p in profiles if p.kind.startswith("conv")]
    assert convolutions and all(0 < p.cycles <= run.makespan for p in convolutions)
    assert all(p.engine_cycles["me"] > 0 for p in convolutions)


def test_run_json_and_text_have_the_operators(capsys):
    assert main(["run", "resnet", "--config", "small", "--backend", "perf", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = [op["name"] for op in report["operators"]]
    assert "stem" in names and "fc" in names
    assert sum(op["engine_cycles"]["me"] for op in report["operators"]) == \
        report["measured_busy"]["me"]
    assert main(["run", "resnet", "--config", "small", "--backend", "perf"]) == 0
    out = capsys.readouterr().out
    assert "operators   measured on the activity port" in out
    assert any(line.split()[:2] == ["stem", "conv3x3"] for line in out.splitlines())
    # The golden model has no time: no operator table.
    assert main(["run", "resnet", "--config", "small", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["operators"] == []


@pytest.fixture(scope="module")
def harvest():
    [point] = serve(SMALL, [TenantSpec("ncf", 2, 1), TenantSpec("dlrm", 2, 1)],
                    policies=("harvest",), load=0.8, requests=6, seed=3, backend="perf")
    return point


def test_serve_reports_preemptions_flushed_work_and_hbm_traffic(harvest):
    point = harvest
    assert point.problems == []
    assert sum(t.preemptions for t in point.tenants) > 0
    line_bytes = SMALL.hbm_words_per_cycle * HBM_WORD_BYTES
    for tenant in point.tenants:
        records = [r for r in point.requests if r["tenant"] == tenant.name]
        # Per request preemptions add up to the tenant's.
        assert sum(r["preempted"] for r in records) == tenant.preemptions
        assert (tenant.flushed_engine_cycles > 0) == (tenant.preemptions > 0)
        # Its HBM bytes: every request's DMA copies and program fetch, then its share of
        # what HBM can move in the span.
        words = _words(tenant.model)
        copied = sum(dma_words(u.body, SMALL) for _, u in header_addresses(words)
                     if u.engine == Engine.DMA) * HBM_WORD_BYTES
        assert sum(op["hbm_bytes"] for op in tenant.operators) == tenant.completed * copied
        assert tenant.hbm_bytes == tenant.completed * (copied
                                                       + program_fetch_bytes(SMALL, words))
        assert tenant.hbm_share == pytest.approx(tenant.hbm_bytes / (point.cycles * line_bytes))
        assert 0 < tenant.hbm_share < 1
        # Per operator, over its requests.
        assert sum(op["runs"] for op in tenant.operators) == \
            tenant.completed * len(header_addresses(_words(tenant.model))) + tenant.preemptions


def _words(model):
    return compile_model(model, SMALL).program.words


def test_static_never_preempts():
    [point] = serve(SMALL, [TenantSpec("ncf", 2, 1), TenantSpec("dlrm", 2, 1)],
                    policies=("static",), load=0.8, requests=4, seed=3, backend="perf")
    assert all(t.preemptions == t.flushed_engine_cycles == 0 for t in point.tenants)
    assert all(r["preempted"] == 0 for r in point.requests)


def test_runs_go_to_their_request_even_when_it_did_not_end():
    """A context runs its requests one after another: runs up to a request's end are its
    own; what ran after the context's last end belongs to the request still running (a
    stream cut short), never to nobody. Refused requests own nothing."""
    from runtime.apps.serve import _runs_by_request
    from runtime.host.driver import HostError, RequestResult

    class Run:
        def utop_runs(self):
            return [(0, 0, 0, 10, 40), (0, 0, 5, 41, 60), (1, 1, 0, 12, 30),
                    (0, 0, 0, 70, 90), (1, 0, 5, 95, 120)]
    requests = [RequestResult(0, 0, arrival=0, rung=5, end=60),
                RequestResult(1, 0, arrival=0, rung=6, end=31),
                RequestResult(0, 0, arrival=2, refused=HostError.QUEUE_FULL),
                RequestResult(0, 0, arrival=50)]              # still running at the end
    owned = _runs_by_request(Run(), requests)
    assert owned == [[(0, 0, 0, 10, 40), (0, 0, 5, 41, 60)], [(1, 1, 0, 12, 30)], [],
                     [(0, 0, 0, 70, 90), (1, 0, 5, 95, 120)]]
