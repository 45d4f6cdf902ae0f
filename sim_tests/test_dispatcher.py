"""The dispatcher on the whole pNPU (pysim): policies, isolation, watchdog, random programs."""

import random

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.regmap import Status
from isa.asm import assemble
from isa.encoding import Engine, Fault
from isa.golden import ContextSpec, GoldenNPU, Segment
from runtime.apps import mix
from runtime.host.driver import Driver
from runtime.apps.fuzz import random_program

TINY = NPUConfig.preset("tiny")
SEGMENTS = [(Segment(0, 256), Segment(0, 1024)), (Segment(256, 256), Segment(1024, 1024)),
            (Segment(512, 256), Segment(2048, 1024)), (Segment(768, 256), Segment(3072, 1024))]
ME0, ME1, VE0, VE1 = 0, 1, 2, 3     # engine numbers on tiny: MEs, then VEs, then the DMA


def run_mix(policy, programs, *, trace=False, config=TINY):
    """Two vNPUs splitting the engines; every context's results must equal golden."""
    run = mix.run_mix(config, programs, policy, engines=mix.halves(config), trace=trace)
    assert run.exact and not run.result.timed_out
    return run.result


def me_heavy():
    return mix.me_heavy_program(TINY)


def ve_then_me():
    return mix.ve_heavy_program(TINY)


def test_static_never_touches_another_contexts_engines():
    result = run_mix("static", [me_heavy(), ve_then_me()])
    ctx0, ctx1 = result.contexts
    assert ctx0.counters["HARVEST_CYCLES"] == ctx1.counters["HARVEST_CYCLES"] == 0
    assert result.engines[ME1]["BUSY_CTX0"] == 0 and result.engines[ME0]["BUSY_CTX1"] == 0
    assert result.engines[VE1]["BUSY_CTX0"] == 0 and result.engines[VE0]["BUSY_CTX1"] == 0
    assert result.engines[ME0]["BUSY_CTX0"] > 0 and result.engines[ME1]["BUSY_CTX1"] > 0


def test_harvest_borrows_idle_engines_and_the_owner_wins():
    static = run_mix("static", [me_heavy(), ve_then_me()])
    result = run_mix("harvest", [me_heavy(), ve_then_me()], trace=True)
    ctx0 = result.contexts[0]
    assert ctx0.counters["HARVEST_CYCLES"] > 0              # borrowed ME1 while ctx1 did VE work
    assert result.engines[ME1]["BUSY_CTX0"] > 0
    assert ctx0.cycles < static.contexts[0].cycles           # and finished sooner for it
    owner = {ME0: 0, ME1: 1, VE0: 0, VE1: 1}
    kind = {ME0: Engine.ME, ME1: Engine.ME, VE0: Engine.VE, VE1: Engine.VE}
    borrowed = 0
    for event in result.trace:
        for c, engine in event["issues"]:
            if engine in owner and owner[engine] != c:
                borrowed += 1
                # The owner had nothing ready for that engine type: it would have won.
                assert not event["candidates"][owner[engine]] >> kind[engine] & 1, event
    assert borrowed > 0


def test_temporal_never_runs_two_contexts_at_once():
    result = run_mix("temporal", [me_heavy(), ve_then_me()], trace=True)
    assert all(bin(event["ctx_on_any"]).count("1") <= 1 for event in result.trace)
    issuers = {c for event in result.trace for c, _ in event["issues"]}
    assert issuers == {0, 1}


def test_v10_never_splits_an_me_operator_across_contexts():
    per_op = 3
    result = run_mix("v10", [mix.me_heavy_program(TINY, per_op=per_op), ve_then_me()], trace=True)
    assert all(bin(event["ctx_on_me"]).count("1") <= 1 for event in result.trace)
    # Context 0's ME µTOps issue in program order; group them into operators and check
    # that no other context issued to an ME between an operator's first and last issue.
    me_issues = [(event["cycle"], c) for event in result.trace for c, e in event["issues"]
                 if e in (ME0, ME1)]
    own = [cycle for cycle, c in me_issues if c == 0]
    for op in range(len(own) // per_op):
        first, last = own[op * per_op], own[op * per_op + per_op - 1]
        assert not [cycle for cycle, c in me_issues if c != 0 and first <= cycle <= last]
    # ... while VE work of the other context overlapped ME work.
    assert any(event["ctx_on_me"] == 1 and event["ctx_on_any"] & 2 for event in result.trace)


def test_isolation_whole_memory_matches_golden():
    """Faulting contexts write nothing outside their segments; the others are exact."""
    programs = [
        ".ve eop\n vaddi 250, 0, 7, 10\n",                       # rows 250..259 of 256: SPAD_OOB
        ".me\n ldw 0, 4\n mm 16, 4, 8\n.dma deps(-1) eop\n dstore 0, 16, 8\n",
        ".ve\n vsub 8, 0, 1, 4\n.dma deps(-1) eop\n dcfg 4, 4, 1\n dstore 1022, 8, 1\n",  # HBM_OOB
    ]
    config = TINY
    rng = np.random.default_rng(3)
    spad_init = rng.integers(-100, 100, (config.spad_rows, config.ve_lanes))
    data_words = 4 * 1024                  # the SEGMENTS; the driver puts programs above
    hbm_init = rng.integers(-100, 100, data_words)
    driver = Driver(config)
    driver.set_policy("harvest")
    golden = GoldenNPU(config)
    golden.spad[:], golden.hbm[:data_words] = spad_init, hbm_init
    driver.write_spad(0, spad_init)
    driver.write_hbm(0, hbm_init)
    specs = []
    for c, source in enumerate(programs):
        words = assemble(source)
        driver.load_context(c, words, *SEGMENTS[c])
        specs.append(ContextSpec(words, *SEGMENTS[c]))
    expected = golden.run(specs)
    result = driver.run(max_cycles=20_000, read_spad=[(0, config.spad_rows)],
                        read_hbm=[(0, data_words)])
    assert [r.fault for r in result.contexts] == [Fault.SPAD_OOB, Fault.NONE, Fault.HBM_OOB]
    assert [r.fault for r in expected] == [Fault.SPAD_OOB, Fault.NONE, Fault.HBM_OOB]
    assert [r.fault_pc for r in result.contexts[::2]] == [r.fault_pc for r in expected[::2]] == [0, 2]
    spad, hbm = result.spad[(0, config.spad_rows)], result.hbm[(0, data_words)]
    keep_rows = np.ones(config.spad_rows, bool)
    keep_words = np.ones(data_words, bool)
    for c in (0, 2):                                # faulting contexts' own segments: unspecified
        keep_rows[SEGMENTS[c][0].base:SEGMENTS[c][0].base + SEGMENTS[c][0].size] = False
        keep_words[SEGMENTS[c][1].base:SEGMENTS[c][1].base + SEGMENTS[c][1].size] = False
    assert np.array_equal(spad[keep_rows], golden.spad[keep_rows])
    assert np.array_equal(hbm[keep_words], golden.hbm[:data_words][keep_words])


def test_watchdog_turns_a_stuck_context_into_a_fault():
    """Under static, a context that owns no VE can never run its VE µTOp: once the other
    context is done and nothing progresses, it faults."""
    config = TINY.replace(watchdog_cycles=300)
    driver = Driver(config)
    driver.set_policy("static")
    driver.load_context(0, assemble(".ve eop\n vaddi 0, 0, 1, 1\n"), *SEGMENTS[0],
                        me_mask=1, ve_mask=0)
    driver.load_context(1, assemble(".ve eop\n vaddi 0, 0, 1, 1\n"), *SEGMENTS[1],
                        me_mask=2, ve_mask=2)
    result = driver.run(max_cycles=5_000)
    assert not result.timed_out
    assert (result.contexts[0].status, result.contexts[0].fault) == (Status.FAULTED, Fault.WATCHDOG)
    assert (result.contexts[1].status, result.contexts[1].fault) == (Status.DONE, Fault.NONE)


def fuzz(seed, n_contexts=2):
    config = TINY
    rng = random.Random(seed)
    driver = Driver(config)
    driver.set_policy(rng.choice(["static", "harvest", "temporal", "v10"]))
    for c in range(n_contexts):
        driver.load_context(c, random_program(rng, config, rng.randint(1, 30)), *SEGMENTS[c],
                            me_mask=1 << (c % 2), ve_mask=1 << (c % 2))
    result = driver.run(max_cycles=30_000)
    assert not result.timed_out, f"seed {seed}: simulation did not finish"
    for context in result.contexts:
        assert context.status in (Status.DONE, Status.FAULTED)
        assert (context.status == Status.FAULTED) == (context.fault != Fault.NONE)


@pytest.mark.parametrize("seed", range(4))
def test_random_programs_fault_or_finish(seed):
    fuzz(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4, 300))
def test_random_programs_fault_or_finish_many(seed):
    fuzz(seed, n_contexts=1 + seed % 4)
