"""The conformance suite: every case passes on golden, covers every instruction and fault, and the runner catches mismatches."""

import numpy as np
import pytest

from isa.encoding import INSTRUCTIONS, DecodeError, Fault, decode_program
from runtime.conformance import CaseError, default_case_paths, load_case, run_case

CASES = default_case_paths()


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_case_passes_on_golden(path):
    outcome = run_case(load_case(path), "golden")
    assert outcome.passed, outcome.failures


def test_every_instruction_has_a_case():
    used = set()
    for path in CASES:
        for context in load_case(path).contexts:
            try:
                items = decode_program(context.program)
            except DecodeError:  # a deliberately truncated program
                continue
            for item in items:
                if not isinstance(item, int):
                    used.update(instr.op.mnemonic for instr in item.body if instr.op)
    missing = sorted(d.mnemonic for d in INSTRUCTIONS if d.mnemonic not in used)
    assert not missing, f"no conformance case uses {missing}"


def test_every_fault_has_a_case():
    expected = {want.fault for path in CASES for want in load_case(path).expected}
    # WATCHDOG is about time, which the golden model does not model: the RTL tests cover it.
    missing = set(Fault) - expected - {Fault.WATCHDOG}
    assert not missing, f"no conformance case expects {sorted(f.name for f in missing)}"


def test_multi_context_cases_exist():
    assert sum(len(load_case(p).contexts) > 1 for p in CASES) >= 3


def test_runner_reports_a_wrong_memory_value(tmp_path):
    source = (CASES[0].parent / "ve_loop.toml").read_text()
    bad = tmp_path / "ve_loop_bad.toml"
    bad.write_text(source.replace("[[4, -6, 9, 99]]", "[[4, -6, 9, 98]]"))
    outcome = run_case(load_case(bad))
    assert not outcome.passed
    assert outcome.failures == ["spad row 30 lane 3: got 99, expected 98 (1 value differ)"]


def test_runner_reports_a_wrong_fault(tmp_path):
    source = (CASES[0].parent / "fault_spad_oob_write.toml").read_text()
    bad = tmp_path / "wrong_fault.toml"
    bad.write_text(source.replace('fault = "spad_oob"', 'fault = "hbm_oob"'))
    outcome = run_case(load_case(bad))
    assert not outcome.passed and "fault spad_oob" in outcome.failures[0]
    assert "expected hbm_oob" in outcome.failures[0]


POLICIES = ["static", "harvest", "temporal", "v10"]
RTL_RUNS = [(path, "harvest") for path in CASES] + [
    (path, policy) for path in CASES if len(load_case(path).contexts) > 1
    for policy in POLICIES if policy != "harvest"]


def same_run(a, b):
    """Every figure two RTL runs report: status, faults, counters (cycles included), memory."""
    assert [(c.status, c.fault, c.fault_pc, c.counters) for c in a.contexts] == \
        [(c.status, c.fault, c.fault_pc, c.counters) for c in b.contexts]
    assert a.engines == b.engines
    assert a.spad.keys() == b.spad.keys() and a.hbm.keys() == b.hbm.keys()
    for key in a.spad:
        assert np.array_equal(a.spad[key], b.spad[key])
    for key in a.hbm:
        assert np.array_equal(a.hbm[key], b.hbm[key])


@pytest.mark.parametrize("path, policy", RTL_RUNS, ids=lambda v: getattr(v, "stem", v))
def test_case_on_both_rtl_backends(path, policy):
    """pysim and verilator, driven through the host interface, give the golden results and
    faults, and agree on every counter (cycles included)."""
    case = load_case(path)
    pysim = run_case(case, "pysim", policy)
    assert pysim.passed, pysim.failures
    verilator = run_case(case, "verilator", policy)
    assert verilator.passed, verilator.failures
    same_run(pysim.run, verilator.run)
    assert pysim.run.makespan > 0


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'spice'"):
        run_case(load_case(CASES[0]), "spice")


@pytest.mark.parametrize("text, message", [
    ("context = 3\n", "needs at least one [[context]] table"),
    ("foo = 1\n", "unknown key 'foo'"),
    ('config = "big"\n[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=""\n', "unknown config preset 'big'"),
    ("[[context]]\nspad=[0]\nhbm=[0,1]\nprogram=''\n", "context 0: spad must be [base, size]"),
    ('[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=".ve\\n vbad 1"\n', "[context 0]:2: unknown mnemonic 'vbad'"),
    ("[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=''\n[[init]]\nspad=0\ndata=[1, 2]\n", "data must be a list of rows of integers"),
    ("[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=''\nfault='oops'\n", "unknown fault 'oops'"),
    ("[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=''\nfault_at='nolabel'\n", "fault_at names no label"),
    ("[[context]]\nspad=[0,99999]\nhbm=[0,1]\nprogram=''\n", "scratchpad segment base=0 size=99999 does not fit"),
    ("[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=''\n[[init]]\ndata=[1]\n", "init block 0: needs exactly one of"),
    ("[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=''\n[[init]]\nspad=0\ndata=[[1,2,3,4,5,6,7,8,9]]\n", "row 0 has 9 values; rows hold 8"),
    ("[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=''\n[[expect]]\nhbm=0\ndata=[4294967296]\n", "data values must fit in 32 bits"),
    ("[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=''\n[[init]]\ncontext=4\nhbm=0\ndata=[1]\n", "context 4 is not one of the case's 1 contexts"),
    ("[[context\n", "malformed TOML"),
])
def test_malformed_case_files(tmp_path, text, message):
    path = tmp_path / "case.toml"
    path.write_text(text)
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
