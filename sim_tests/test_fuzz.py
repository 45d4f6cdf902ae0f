"""`neu10 fuzz`: hostile programs next to a victim, on golden, pysim and verilator; the
checks themselves must catch a planted failure."""

import json
import random

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.asm import assemble
from isa.encoding import decode_header, decode_instr, program_from_hbm_words
from isa.golden import ContextSpec, GoldenNPU, Segment
from runtime.apps import fuzz
from runtime.apps.cli import main

TINY = NPUConfig.preset("tiny")


def campaign(backend, programs, **options):
    return fuzz.run_campaign(TINY, backend, programs, config_name="tiny", **options)


def assert_clean(report):
    assert report.passed, "\n".join(f"seed {f.seed} [{f.policy}]: {f.reasons}"
                                     for f in report.failures)
    assert report.mismatches == report.hangs == report.victim_words_changed == 0
    assert report.victims_done == report.programs


# --- the generator ---------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["tiny", "small", "default"])
def test_the_victims_program_is_valid_race_free_and_restartable_where_flagged(preset):
    config = NPUConfig.preset(preset)
    source, rows, words = fuzz.victim_program(config)
    npu = GoldenNPU(config, check_races=True)
    npu.spad[:] = np.arange(config.spad_rows * config.ve_lanes).reshape(config.spad_rows, -1) % 97
    [result] = npu.run([ContextSpec(assemble(source), Segment(0, rows), Segment(0, words))])
    assert (result.fault, result.races, result.restart_hazards) == (0, [], [])


def test_cases_depend_on_the_seed_only():
    first, again = fuzz.make_case(TINY, 7, "static"), fuzz.make_case(TINY, 7, "v10")
    assert [c.program for c in first.contexts] == [c.program for c in again.contexts]
    assert np.array_equal(first.hbm_init, again.hbm_init) and first.arena == again.arena
    assert [c.program for c in fuzz.make_case(TINY, 8, "static").contexts] != \
        [c.program for c in first.contexts]


def test_segments_are_disjoint_with_gaps_and_every_context_owns_an_me_and_a_ve():
    for seed in range(200):
        case = fuzz.make_case(TINY, seed, "static")
        assert 2 <= len(case.contexts) <= 4
        for space, total in (("spad", case.arena[0]), ("hbm", case.arena[1])):
            segments = sorted((getattr(c, space) for c in case.contexts), key=lambda s: s.base)
            assert segments[0].base >= 1                                   # a gap first
            for before, after in zip(segments, segments[1:]):
                assert before.base + before.size < after.base                # a gap between
            assert segments[-1].base + segments[-1].size < total <= \
                (TINY.spad_rows if space == "spad" else TINY.hbm_words)      # and after
        assert all(me and ve for me, ve in case.masks)
        # Programs: above every segment, each from a line's start, apart, inside HBM, and
        # in the initial image where the dispatcher fetches them.
        programs = sorted(zip(case.prog_bases, (c.program for c in case.contexts)))
        assert programs[0][0] >= case.arena[1]
        for (base, words), (after, _) in zip(programs, programs[1:] + [(TINY.hbm_words, [])]):
            assert base % TINY.hbm_words_per_cycle == 0 and base + 2 * len(words) <= after
            assert program_from_hbm_words(case.hbm_init[base:base + 2 * len(words)]) == words


def _utops(words, config):
    """(header, decoded body or None per word) of every µTOp up to the first bad header."""
    pc = 0
    while pc < len(words):
        try:
            utop, length = decode_header(words[pc], config.replace(max_body=255, imem_words=512))
        except ValueError:
            return
        body = []
        for word in words[pc + 1:pc + 1 + length]:
            try:
                body.append(decode_instr(word, utop.engine))
            except ValueError:
                body.append(None)
        yield utop, body
        pc += 1 + length


def test_hostile_programs_cover_what_they_promise():
    rng = random.Random(1)
    seen = set()
    for _ in range(400):
        words = fuzz.hostile_program(rng, TINY, rng.choice([1, 40, 160]), rng.choice([4, 400]))
        assert 1 <= len(words) <= fuzz.max_hostile_words(TINY)
        if len(words) > TINY.imem_words:
            seen.add("longer than the instruction buffer")
        streamed = one_each = 0
        for utop, body in _utops(words, TINY):
            if utop.restartable:
                seen.add("restartable")
            if len(body) == TINY.max_body:
                seen.add("max_body")
            if len(body) > TINY.max_body:
                seen.add("too long")     # BAD_HEADER: neither it nor anything after it runs
                break
            if None in body:
                seen.add("bad word in a body")
            for i, instr in enumerate(body):
                if instr is None:
                    continue
                if any(instr.args[f.name] in (f.min, f.max) for f in instr.op.fields
                       if f.max > 255):
                    seen.add("extreme field")
                if instr.repeats:
                    if instr.op.mnemonic == "mmloop":
                        seen.add("mmloop")
                    inner = body[i + 1:i + 1 + instr.repeats]
                    per_iteration = max(1, sum(fuzz._cost(x, TINY) if x else 1 for x in inner))
                    one_each += per_iteration
                    streamed += instr.args["count"] * per_iteration
                    if instr.args["count"] >= 100:
                        seen.add("long loop")
        # Loops are shortened to the budget (each keeps at least one iteration, which
        # may stream more: an mmloop's mm alone streams up to 65536 rows).
        assert streamed <= fuzz.LOOP_BUDGET + one_each
    assert seen >= {"restartable", "max_body", "too long", "bad word in a body", "long loop", "mmloop",
                    "extreme field", "longer than the instruction buffer"}, seen


def test_the_reference_notes_undefined_results():
    config = TINY
    npu = fuzz._Reference(config)
    programs = [".me eop\n ldw 0, 4\n mm 2, 0, 4\n",                    # mm rows overlap
                ".ve eop\n vaddi 3, 3, 1, 4\n vadd 10, 10, 20, 2\n",    # in place: defined
                ".ve eop\n loop 3, 1, 1, 0\n vaddi 1, 0, 1, 2\n",      # iteration 1 overlaps
                ".me eop\n ldw 0, 4\n mm 8, 0, 4\n ldw 9, 4\n"]          # ldw of mm's rows
    segments = [(Segment(64 * c, 64), Segment(64 * c, 64)) for c in range(4)]
    results = npu.run([ContextSpec(assemble(p), *s) for p, s in zip(programs, segments)])
    assert [bool(r.undefined) for r in results] == [True, False, True, True]


def test_a_gather_racing_an_unordered_utop_is_recognised():
    racy = assemble(".dma\n dgather 0, 4, 2\n.ve eop\n vaddi 4, 4, 1, 1\n")
    ordered = assemble(".dma\n dgather 0, 4, 2\n.ve deps(-1) eop\n vaddi 4, 4, 1, 1\n")
    assert fuzz._racy_gather(racy, 0, TINY) and not fuzz._racy_gather(ordered, 0, TINY)
    assert not fuzz._racy_gather(racy, 2, TINY)              # the VE µTOp gathers nothing
    assert not fuzz._racy_gather(racy, 99, TINY)


# --- campaigns -------------------------------------------------------------------------------

def test_golden_campaign():
    report = campaign("golden", 300)
    assert_clean(report)
    assert report.runs_per_policy == {policy: 75 for policy in fuzz.POLICIES}
    outcomes = {}
    for counts in report.outcomes.values():
        for name, n in counts.items():
            outcomes[name] = outcomes.get(name, 0) + n
    # Hostile programs finish, and fault in every way a program can.
    assert outcomes["DONE"] > 20
    assert {"BAD_HEADER", "ILLEGAL_OPCODE", "ILLEGAL_OPERAND", "UNLOADED_STATE", "SPAD_OOB",
            "HBM_OOB", "FETCH_OOB"} <= set(outcomes)
    assert report.attackers_compared > 20


def test_pysim_campaign_under_every_policy():
    report = campaign("pysim", 4)          # one run per policy
    assert_clean(report)
    assert set(report.runs_per_policy) == set(fuzz.POLICIES)
    assert not report.full_memory                   # pysim reads the arena back


def test_pysim_and_verilator_agree():
    report = campaign("pysim", 2, cross_check=2)
    assert_clean(report)
    assert (report.cross_checked, report.cross_check_backend) == (2, "verilator")


@pytest.mark.slow
def test_long_campaigns():
    assert_clean(campaign("golden", 5000))
    report = campaign("verilator", 1000, cross_check=10)
    assert_clean(report)
    assert report.full_memory and report.cross_checked == 10


# --- the checks can fail -----------------------------------------------------------------------

def _planted(monkeypatch, what):
    """Make the golden backend's observation (or the victim's reference) wrong in one word."""
    observe, expected = fuzz._observe_golden, fuzz._expected

    def wrong_observation(expected, case):
        observed = observe(expected, case)
        spad, hbm = observed.spad.copy(), observed.hbm.copy()
        if what == "outside":            # a word in the gap before the first HBM segment
            hbm[0] ^= 1
        elif what == "fault":
            status, fault, pc = observed.contexts[case.attackers[0]]
            observed.contexts[case.attackers[0]] = (status, fault, pc + 1) if fault else \
                (status, fault, pc)
        observed.spad, observed.hbm = spad, hbm
        return observed

    def wrong_reference(config, case):
        result = expected(config, case)
        victim = case.contexts[case.victim].spad
        result.victim_spad = result.victim_spad.copy()
        result.victim_spad[victim.base + 3, 1] ^= 1
        return result

    if what == "victim":
        monkeypatch.setattr(fuzz, "_expected", wrong_reference)
    else:
        monkeypatch.setattr(fuzz, "_observe_golden", wrong_observation)


@pytest.mark.parametrize("what, check, reason", [
    ("victim", "victim", "words differ from its run alone (scratchpad row"),
    ("outside", "outside", "1 words outside every segment changed (HBM word 0:"),
])
def test_the_checks_catch_a_planted_failure(monkeypatch, what, check, reason):
    _planted(monkeypatch, what)
    report = campaign("golden", 4, seed=10)
    assert not report.passed and report.checks[check] == 4
    assert [f.seed for f in report.failures] == [10, 11, 12, 13]
    assert all(reason in f.reasons[0] for f in report.failures), report.failures
    assert report.victim_words_changed == (4 if what == "victim" else 0)


def test_a_wrong_fault_pc_is_a_mismatch(monkeypatch):
    _planted(monkeypatch, "fault")
    report = campaign("golden", 20)
    failed = [f for f in report.failures]
    assert failed and report.mismatches == len(failed) == report.checks["fault"]
    assert all("golden" in f.reasons[0] for f in failed)


# --- the command line ----------------------------------------------------------------------------

def run(capsys, *argv):
    code = main(["fuzz", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_clean_run(capsys):
    code, out, err = run(capsys, "--programs", "40", "--seed", "3")
    assert code == 0, out
    assert "fuzz: 40 programs on golden (config tiny, seeds 3..42" in out
    for policy in fuzz.POLICIES:
        assert f"  {policy:<11} 10 runs; attackers done " in out
    assert "victims     40 of 40 done, 0 victim words changed" in out
    assert "mismatches  0" in out and "hangs       0" in out
    assert out.rstrip().endswith("40 passed, 0 failed")


def test_cli_json_and_one_policy(capsys):
    code, out, _ = run(capsys, "--programs", "5", "--policy", "temporal", "--json")
    report = json.loads(out)
    assert code == 0 and report["passed"] and report["runs_per_policy"] == {"temporal": 5}
    assert report["mismatches"] == report["hangs"] == report["victim_words_changed"] == 0


def test_cli_exits_1_and_names_the_seed_on_a_failure(monkeypatch, capsys):
    _planted(monkeypatch, "outside")
    code, out, _ = run(capsys, "--programs", "2", "--seed", "5", "--policy", "v10")
    assert code == 1
    assert "FAIL seed 5 [v10]: 1 words outside every segment changed" in out
    assert "FAIL seed 6 [v10]" in out and "0 passed, 2 failed" in out


@pytest.mark.parametrize("argv, message", [
    (["--programs", "0"], "fuzz: --programs must be at least 1, not 0"),
    (["--programs", "x"], "fuzz: argument --programs: invalid int value: 'x'"),
    (["--seed", "-1"], "fuzz: --seed must be at least 0, not -1"),
    (["--policy", "fifo"], "fuzz: argument --policy: invalid choice: 'fifo'"),
    (["--backend", "spice"], "fuzz: argument --backend: invalid choice: 'spice'"),
    (["--cross-check", "1"], "fuzz: --cross-check needs an RTL backend"),
    (["--backend", "pysim", "--programs", "1", "--cross-check", "2"],
     "fuzz: --cross-check 2 is more than --programs 1"),
    (["--config", "nope"], "unknown config 'nope'"),
])
def test_cli_bad_arguments(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("neu10: error: ") and message in err and err.count("\n") == 1


def test_cli_config_too_small(tmp_path, capsys):
    small = tmp_path / "small.toml"
    small.write_text('preset = "tiny"\nspad_rows = 256\n')
    code, _, err = run(capsys, "--config", str(small))
    assert code == 2
    assert "too small for fuzzing" in err and err.count("\n") == 1
