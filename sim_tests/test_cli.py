"""The `neu10` command line: round trips through files, and one-line errors with exit code 2."""

import subprocess
import sys

import numpy as np
import pytest

from runtime.apps.cli import main

PROGRAM = """\
load:   .dma
            dload 0, 0, 4
        .me deps(load) eop
            ldw 0, 4
            mm 8, 0, 4, acc
"""


CASE = """\
config = "tiny"
[[context]]
spad = [0, 8]
hbm = [0, 8]
program = ".ve eop\\n vaddi 0, 0, 5, 1\\n"
"""


def write_matmul_inputs(directory):
    np.save(directory / "a.npy", np.ones((4, 4), dtype=np.int8))
    np.save(directory / "b.npy", np.ones((4, 4), dtype=np.int8))
    (directory / "mb.toml").write_text("max_body = 1\n")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_asm_disasm_round_trip(tmp_path, capsys):
    source = tmp_path / "prog.s"
    source.write_text(PROGRAM)
    binary = tmp_path / "prog.bin"
    code, out, _ = run(capsys, "asm", str(source), "-o", str(binary))
    assert code == 0 and "5 words" in out
    assert binary.stat().st_size == 5 * 8
    code, text, _ = run(capsys, "disasm", str(binary))
    assert code == 0 and "mm         8, 0, 4, acc" in text
    again = tmp_path / "again.s"
    again.write_text(text)
    run(capsys, "asm", str(again), "-o", str(tmp_path / "again.bin"))
    assert (tmp_path / "again.bin").read_bytes() == binary.read_bytes()


@pytest.mark.parametrize("setup, argv, message", [
    (lambda d: (d / "p.s").write_text(".ve\n  vbogus 1\n"), ["asm", "{d}/p.s"], "{d}/p.s:2: unknown mnemonic 'vbogus'"),
    (lambda d: (d / "p.s").write_text(".ve\n  vaddi 0, 0, 1, 300\n"), ["asm", "{d}/p.s"], "{d}/p.s:2: vaddi: operand n = 300 is out of range 1..256"),
    (lambda d: None, ["asm", "{d}/missing.s"], "{d}/missing.s: no such file"),
    (lambda d: (d / "p.bin").write_bytes(b"\0" * 12), ["disasm", "{d}/p.bin"], "{d}/p.bin: binary of 12 bytes is not a whole number of 8-byte words"),
    (lambda d: (d / "p.bin").write_bytes(bytes.fromhex("a1000500 00000000")), ["disasm", "{d}/p.bin"], "{d}/p.bin: word 0: µTOp body of 5 words runs past the end"),
    (lambda d: (d / "c.toml").write_text("[[context]]\n"), ["conformance", "{d}/c.toml"], "{d}/c.toml: context 0: spad must be [base, size]"),
    (lambda d: None, ["conformance", "--vcd", "{d}/x.vcd"], "--vcd needs an RTL backend"),
    (lambda d: None, ["config", "nope"], "unknown config 'nope'"),
    # Configs whose preset is no name, in a file and in a case's [config].
    (lambda d: (d / "p.toml").write_text("preset = [1]\n"), ["config", "{d}/p.toml"],
     "{d}/p.toml: preset must be a preset name (default, tiny, small, tpu, tpu-shared), not [1]"),
    (lambda d: (d / "p.toml").write_text('[preset]\nname = "tiny"\n'), ["config", "{d}/p.toml"],
     "{d}/p.toml: preset must be a preset name"),
    (lambda d: (d / "c.toml").write_text(CASE.replace('config = "tiny"', "[config]\npreset = [1]")),
     ["conformance", "{d}/c.toml"], "{d}/c.toml: preset must be a preset name"),
    # Files that are not UTF-8.
    (lambda d: (d / "p.toml").write_bytes(b"# \xff\nn_me = 2\n"), ["config", "{d}/p.toml"],
     "{d}/p.toml: not a UTF-8 text file"),
    (lambda d: (d / "c.toml").write_bytes(b"# \xff\n"), ["conformance", "{d}/c.toml"],
     "{d}/c.toml: not a UTF-8 text file"),
    (lambda d: (d / "c.toml").write_text("context = [1, 2]\n"), ["conformance", "{d}/c.toml"],
     "{d}/c.toml: context 0 must be a table ([[context]]), not 1"),
    (write_matmul_inputs, ["matmul", "--a", "{d}/a.npy", "--b", "{d}/b.npy", "-o", "{d}/c.npy",
                           "--config", "{d}/mb.toml"],
     "matmul needs max_body >= 2 (an ME µTOp holds at least one ldw and one mm); this NPU has "
     "max_body 1"),
    (lambda d: None, ["run", "ncf", "--vnpu", ""], "--vnpu '': expected ME,VE (two integers"),
    (lambda d: (d / "p.s").write_text(".ve eop\n" + " vsetvl 1\n" * 65),
     ["asm", "--config", "tiny", "{d}/p.s"],
     "{d}/p.s:1: µTOp body has 65 instructions; the config's max_body is 64"),
    (lambda d: None, ["config", "tiny", "--list"], "give a config or --list, not both"),
    # argparse's errors have the same form.
    (lambda d: None, ["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    (lambda d: None, [], "the following arguments are required: COMMAND"),
    (lambda d: None, ["asm"], "asm: the following arguments are required: source"),
    (lambda d: None, ["run", "ncf", "--backend", "spice"],
     "run: argument --backend: invalid choice: 'spice'"),
    (lambda d: None, ["bench", "--jsn"], "unrecognized arguments: --jsn"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, setup, argv, message):
    setup(tmp_path)
    code, out, err = run(capsys, *[a.format(d=tmp_path) for a in argv])
    assert code == 2
    assert err.startswith("neu10: error: ")
    assert message.format(d=tmp_path) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_conformance_passes_and_counts(capsys):
    code, out, _ = run(capsys, "conformance")
    lines = out.splitlines()
    assert code == 0
    assert lines[-1] == f"{len(lines) - 1} passed, 0 failed"
    assert all(line.startswith("PASS ") for line in lines[:-1])


def test_conformance_failure_exits_1(tmp_path, capsys):
    case = tmp_path / "wrong.toml"
    case.write_text(CASE + '[[expect]]\nspad = 0\ndata = [[6, 5, 5, 5]]\n')
    code, out, _ = run(capsys, "conformance", str(case))
    assert code == 1
    assert out.splitlines() == ["FAIL wrong: spad row 0 lane 0: got 5, expected 6 (1 value differs)",
                                "0 passed, 1 failed"]
    # Several failures: one line each, the later ones indented.
    case.write_text(CASE + '[[expect]]\nspad = 0\ndata = [[6, 5, 5, 5]]\n'
                    '[[expect]]\nhbm = 0\ndata = [7]\n')
    code, out, _ = run(capsys, "conformance", str(case))
    assert code == 1
    assert out.splitlines() == ["FAIL wrong: spad row 0 lane 0: got 5, expected 6 (1 value differs)",
                                "    hbm word 0: got 0, expected 7 (1 value differs)",
                                "0 passed, 1 failed"]


def test_conformance_policy_all_runs_every_case_under_every_policy(tmp_path, capsys,
                                                                   monkeypatch):
    from runtime.apps import conformance
    calls = []

    def fake_run_case(case, backend, policy, vcd=None):
        calls.append((case.name, len(case.contexts), backend, policy))
        return conformance.CaseOutcome(True, [])

    monkeypatch.setattr(conformance, "run_case", fake_run_case)
    single = conformance.CASE_DIR / "ve_loop.toml"
    multi = conformance.CASE_DIR / "multi_isolation.toml"
    code, out, _ = run(capsys, "conformance", "--backend", "pysim", "--policy", "all",
                       str(single), str(multi))
    assert code == 0 and out.splitlines()[-1] == "8 passed, 0 failed"
    policies = ["static", "harvest", "temporal", "v10"]
    assert calls == [("ve_loop", 1, "pysim", p) for p in policies] + \
        [("multi_isolation", len(conformance.load_case(multi).contexts), "pysim", p)
         for p in policies]
    assert "PASS ve_loop [temporal]" in out
    # The golden model has no policies: a case runs once.
    calls.clear()
    run(capsys, "conformance", "--policy", "all", str(single))
    assert calls == [("ve_loop", 1, "golden", "static")]


def test_matmul_names_the_file_it_writes(tmp_path, capsys):
    write_matmul_inputs(tmp_path)
    code, out, _ = run(capsys, "matmul", "--a", str(tmp_path / "a.npy"), "--b",
                       str(tmp_path / "b.npy"), "-o", str(tmp_path / "c"))
    assert code == 0
    assert out == f"{tmp_path}/c.npy: int32 4x4 (golden model)\n"
    assert np.array_equal(np.load(tmp_path / "c.npy"), np.full((4, 4), 4))
    assert not (tmp_path / "c").exists()
    code, out, _ = run(capsys, "matmul", "--a", str(tmp_path / "a.npy"), "--b",
                       str(tmp_path / "b.npy"), "-o", str(tmp_path / "d.npy"))
    assert code == 0 and out.startswith(f"{tmp_path}/d.npy: ")


def test_config_names_what_it_shows_and_lists_presets(tmp_path, capsys):
    from isa.config import PRESETS, NPUConfig
    code, out, _ = run(capsys, "config")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "# preset default" and "n_me = 4" in lines
    code, out, _ = run(capsys, "config", "tiny")
    assert out.splitlines()[0] == "# preset tiny"
    path = tmp_path / "npu.toml"
    path.write_text('preset = "tiny"\nn_me = 1\n')
    code, out, _ = run(capsys, "config", str(path))
    assert out.splitlines()[0] == f"# {path}"
    # What it prints is a config file that gives the same config back.
    path.write_text(out)
    assert NPUConfig.load(str(path)) == NPUConfig.preset("tiny").replace(n_me=1)
    code, out, _ = run(capsys, "config", "--list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    assert lines[1] == ("tiny        2 MEs of 4x4, 2 VEs of 4 lanes, 1 DMA engine, 4 contexts, "
                        "1024 scratchpad rows, 8192 HBM words")


def test_broken_pipe_exits_quietly():
    """`neu10 conformance | head -1`: the reader goes away after one line, before the
    command has written the rest."""
    process = subprocess.Popen([sys.executable, "-m", "runtime.apps.cli", "conformance"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"PASS ")
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.stderr.close()
    # The exit code says how the command went (every case passed), not when the reader left.
    assert process.wait() == 0
    assert stderr == ""


def test_demo_serves_both_tenants_bit_exact(capsys):
    code, out, _ = run(capsys, "demo", "--config", "tiny")
    assert code == 0
    assert out.count("bit-exact") == 6 and "WRONG" not in out
    rows = [row for row in map(str.split, out.splitlines())
            if len(row) == 8 and row[0] in ("harvest", "static", "temporal")]
    assert [(row[0], row[1]) for row in rows] == [
        (policy, tenant) for policy in ("harvest", "static", "temporal")
        for tenant in ("gemm", "sigmoid")]
    # Each tenant's throughput is over its own stream (to its own last end), not the
    # shared makespan: the two tenants end at different cycles.
    for policy in ("harvest", "static", "temporal"):
        gemm, sigmoid = (row[4] for row in rows if row[0] == policy)
        assert gemm != sigmoid, policy
    # Static partitioning never lends an engine; harvesting does.
    assert all(row[6] == "0" for row in rows if row[0] == "static")
    assert any(int(row[6]) > 0 for row in rows if row[0] == "harvest")
    assert "harvest vs static: median latency" in out


def test_spec_matches_generator(capsys):
    from isa.spec import generate_spec
    code, out, _ = run(capsys, "spec")
    assert code == 0 and out == generate_spec()


def test_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "runtime.apps.cli", "--help"], capture_output=True,
                            text=True, check=True)
    for command in ("asm", "disasm", "conformance", "spec", "demo"):
        assert command in result.stdout
    result = subprocess.run([sys.executable, "-m", "runtime.apps.cli", "frobnicate"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr
    assert result.stderr.startswith("neu10: error: ") and result.stderr.count("\n") == 1


def test_run_that_outlasts_max_cycles_names_the_budget(capsys):
    """A run that is still going at --max-cycles is an error that names the budget and how
    to lift it (not a fault); a budget below 1 is refused before anything runs."""
    code, _, err = run(capsys, "run", "ncf", "--backend", "perf", "--max-cycles", "100")
    assert code == 2
    assert "did not finish within max_cycles=100 cycles (still RUNNING" in err
    assert "--max-cycles" in err
    code, _, err = run(capsys, "run", "ncf", "--max-cycles", "0")
    assert code == 2 and "--max-cycles must be a positive integer, not 0" in err
