"""The `neu10` command line: round trips through files, and one-line errors with exit code 2."""

import subprocess
import sys

import pytest

from runtime.cli import main

PROGRAM = """\
load:   .dma
            dload 0, 0, 4
        .me deps(load) eop
            ldw 0, 4
            mm 8, 0, 4, acc
"""


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
    case.write_text('config = "tiny"\n[[context]]\nspad = [0, 8]\nhbm = [0, 8]\n'
                    'program = ".ve eop\\n vaddi 0, 0, 5, 1\\n"\n'
                    '[[expect]]\nspad = 0\ndata = [[6, 5, 5, 5]]\n')
    code, out, _ = run(capsys, "conformance", str(case))
    assert code == 1
    assert out.splitlines() == ["FAIL wrong: spad row 0 lane 0: got 5, expected 6 (1 value differ)",
                                "0 passed, 1 failed"]


def test_demo_is_bit_exact(capsys):
    code, out, _ = run(capsys, "demo", "--config", "tiny")
    assert code == 0
    assert out.count("bit-exact vs numpy") == 4 and "WRONG" not in out
    assert "policy harvest" in out and "policy static" in out


def test_spec_matches_generator(capsys):
    from isa.spec import generate_spec
    code, out, _ = run(capsys, "spec")
    assert code == 0 and out == generate_spec()


def test_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "--help"], capture_output=True,
                            text=True, check=True)
    for command in ("asm", "disasm", "conformance", "spec", "demo"):
        assert command in result.stdout
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "frobnicate"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr
