"""The conformance suite: every case passes on golden, covers every instruction and fault, and the runner catches mismatches."""


import numpy as np
import pytest

from isa.config import NPUConfig
from isa.regmap import Status
from isa.encoding import INSTRUCTIONS, DecodeError, Fault, decode_program
from runtime.apps.conformance import CaseError, default_case_paths, load_case, run_case

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
    # WATCHDOG is about time, which the golden model does not model, and CONFIG about
    # settings a case cannot hold (the loader refuses them): sim_tests/test_isolation.py
    # and test_host_interface.py cover both on the RTL.
    missing = set(Fault) - expected - {Fault.WATCHDOG, Fault.CONFIG}
    assert not missing, f"no conformance case expects {sorted(f.name for f in missing)}"


def test_multi_context_cases_exist():
    assert sum(len(load_case(p).contexts) > 1 for p in CASES) >= 3


def test_runner_reports_a_wrong_memory_value(tmp_path):
    source = (CASES[0].parent / "ve_loop.toml").read_text()
    bad = tmp_path / "ve_loop_bad.toml"
    bad.write_text(source.replace("[[4, -6, 9, 99]]", "[[4, -6, 9, 98]]"))
    outcome = run_case(load_case(bad))
    assert not outcome.passed
    assert outcome.failures == ["spad row 30 lane 3: got 99, expected 98 (1 value differs)"]


def test_runner_lists_the_first_mismatches_of_a_block(tmp_path):
    source = (CASES[0].parent / "ve_loop.toml").read_text()
    bad = tmp_path / "ve_loop_bad.toml"
    bad.write_text(source.replace("[0, 0, 0, 200], [1001", "[0, 1, 2, 201], [1001")
                   .replace("[[4, -6, 9, 99]]", "[[4, -6, 0, 0]]"))
    assert run_case(load_case(bad)).failures == [
        "spad row 21 lane 1: got 0, expected 1; spad row 21 lane 2: got 0, expected 2; "
        "spad row 21 lane 3: got 200, expected 201 (3 values differ)",
        "spad row 30 lane 2: got 9, expected 0; spad row 30 lane 3: got 99, expected 0 "
        "(2 values differ)"]
    bad.write_text(source.replace("spad = 30\ndata = [[4, -6, 9, 99]]",
                                  "spad = 31\ndata = [[1, 1, 1, 1], [2, 2, 2, 2]]"))
    assert run_case(load_case(bad)).failures == [
        "spad row 31 lane 0: got 0, expected 1; spad row 31 lane 1: got 0, expected 1; "
        "spad row 31 lane 2: got 0, expected 1; spad row 31 lane 3: got 0, expected 1 "
        "(8 values differ, first 4 shown)"]


def test_case_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('description = "größe"\n'.encode("latin-1"))
    with pytest.raises(CaseError, match=f"^{path}: not a UTF-8 text file"):
        load_case(path)


def test_case_watchdog_overrides_the_config(tmp_path):
    path = tmp_path / "wd.toml"
    path.write_text('config = "tiny"\nwatchdog = 77\n[[context]]\nspad=[0,4]\nhbm=[0,4]\n'
                    "program=''\n")
    assert load_case(path).config == NPUConfig.preset("tiny").replace(watchdog_cycles=77)


def fake_rtl_run(monkeypatch, case, contexts, *, cycles=500, timed_out=False):
    """Make the driver's runs report ``contexts`` (Status, Fault, fault_pc) and every memory
    block ``case`` expects as expected: the runner's checks without a simulation."""
    from runtime.host import driver

    def run(self, **_):
        result = driver.RunResult(cycles, timed_out, [driver.ContextResult(status, fault, pc, {})
                                                      for status, fault, pc in contexts], [])
        for block in case.expect:
            memory = result.spad if block.space == "spad" else result.hbm
            memory[(block.address, len(block.data))] = block.data
        return result

    monkeypatch.setattr(driver.Driver, "run", run)


def test_runner_checks_the_final_status(monkeypatch):
    case = load_case(CASES[0].parent / "fault_illegal_opcode.toml")
    bad_pc = case.expected[0].fault_at
    fake_rtl_run(monkeypatch, case, [(Status.FAULTED, Fault.ILLEGAL_OPCODE, bad_pc),
                               (Status.DONE, Fault.NONE, 0)])
    assert run_case(case, "pysim").passed
    # A context that faulted but reports DONE (or one without a fault that is FAULTED) fails.
    fake_rtl_run(monkeypatch, case, [(Status.DONE, Fault.ILLEGAL_OPCODE, bad_pc),
                               (Status.FAULTED, Fault.NONE, 0)])
    assert run_case(case, "pysim").failures == [
        "context 0: status done with fault illegal_opcode, expected faulted",
        "context 1: status faulted with fault none, expected done"]
    # A wrong fault whose status goes with it is one failure, not two.
    fake_rtl_run(monkeypatch, case, [(Status.DONE, Fault.NONE, 0), (Status.DONE, Fault.NONE, 0)])
    assert run_case(case, "pysim").failures == ["context 0: fault none, expected illegal_opcode"]


def test_runner_names_the_cycles_of_a_watchdog_or_a_timeout(monkeypatch):
    case = load_case(CASES[0].parent / "ve_loop.toml")
    fake_rtl_run(monkeypatch, case, [(Status.FAULTED, Fault.WATCHDOG, 0)], cycles=1234)
    assert run_case(case, "pysim").failures == [
        "context 0: fault watchdog after 1234 cycles, expected none"]
    fake_rtl_run(monkeypatch, case, [(Status.RUNNING, Fault.NONE, 0)], cycles=300, timed_out=True)
    assert run_case(case, "pysim", max_cycles=300).failures == [
        "timed out: still running after 300 cycles on pysim",
        "context 0: status running with fault none, expected done"]


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
    ("context = [1, 2]\n", "context 0 must be a table ([[context]]), not 1"),
    ("[config]\npreset = [1]\n[[context]]\nspad=[0,1]\nhbm=[0,1]\nprogram=''\n",
     "preset must be a preset name (default, tiny, small, tpu, tpu-shared), not [1]"),
    # Blocks that name a context lie inside its segment.
    ("[[context]]\nspad=[0,2]\nhbm=[0,8]\nprogram=''\n[[init]]\ncontext=0\nspad=1\ndata=[[1],[2]]\n",
     "init block 0: 2 rows at 1 run past context 0's spad segment (base 0, size 2)"),
    ("[[context]]\nspad=[0,2]\nhbm=[0,8]\nprogram=''\n[[context]]\nspad=[2,2]\nhbm=[8,4]\n"
     "program=''\n[[expect]]\ncontext=1\nhbm=3\ndata=[1, 2]\n",
     "expect block 0: 2 words at 3 run past context 1's hbm segment (base 8, size 4)"),
    # true is no integer.
    ("[[context]]\nspad=[true,4]\nhbm=[0,1]\nprogram=''\n",
     "context 0: spad must be [base, size] with non-negative integers, not [True, 4]"),
    ("[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\nfault_at=true\n",
     "context 0: fault_at must be a label or a word address, not True"),
    ("[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\n[[init]]\nspad=0\ndata=[[1, true]]\n",
     "init block 0: data must be a list of rows of integers"),
    ("[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\n[[expect]]\nhbm=0\ndata=[false]\n",
     "expect block 0: data must be a list of integers"),
    ("[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\n[[init]]\nspad=true\ndata=[[1]]\n",
     "init block 0: spad must be a non-negative integer, not True"),
    ("[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\n[[init]]\ncontext=false\nspad=0\ndata=[[1]]\n",
     "init block 0: context False is not one of the case's 1 contexts"),
    # Unknown keys, and entries that are no tables, in [[init]] and [[expect]].
    ("[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\n[[init]]\nspad=0\ndta=[[1]]\n",
     "init block 0: unknown key 'dta'; expected context, spad or hbm, data"),
    ("[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\n[[expect]]\nspad=0\ndata=[[1]]\nlanes=4\n",
     "expect block 0: unknown key 'lanes'"),
    ("init = [1]\n[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\n",
     "init block 0 must be a table ([[init]]), not 1"),
    # The case's own watchdog.
    ("watchdog = 0\n[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\n",
     "watchdog must be a positive integer (cycles), not 0"),
    ("watchdog = true\n[[context]]\nspad=[0,4]\nhbm=[0,1]\nprogram=''\n",
     "watchdog must be a positive integer (cycles), not True"),
])
def test_malformed_case_files(tmp_path, text, message):
    path = tmp_path / "case.toml"
    path.write_text(text)
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
