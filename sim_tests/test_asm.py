"""Assembler and disassembler: round trips, labels, and line-numbered errors."""

import random

import pytest

from isa.config import MAX_DEP_WINDOW, NPUConfig
from isa.asm import (AsmError, assemble, assemble_program, bytes_to_words, disassemble,
                     words_to_bytes)
from isa.encoding import INSTRUCTIONS, Engine, Instr, UTop, encode_program


def random_program(rng, n_utops):
    """Random encodable µTOps: every opcode, every field from its full range."""
    by_engine = {e: [d for d in INSTRUCTIONS if d.engine == e] for e in Engine}
    items = []
    for index in range(n_utops):
        engine = rng.choice(list(Engine))
        body = []
        for _ in range(rng.choice([0, 1, 2, 5, rng.randrange(0, 40)])):
            defn = rng.choice(by_engine[engine])
            args = {}
            for f in defn.fields:
                args[f.name] = rng.choice([f.min, f.max, rng.randint(f.min, f.max)])
            body.append(Instr(defn, args))
        deps = tuple(sorted(rng.sample(range(1, MAX_DEP_WINDOW + 1), rng.randrange(0, 4))))
        items.append(UTop(engine, body, deps, eoo=rng.random() < 0.2,
                          eop=index == n_utops - 1, tag=rng.choice([0, rng.randrange(1 << 16)])))
    return items


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_random_programs(seed):
    rng = random.Random(seed)
    items = random_program(rng, 1000)
    words = encode_program(items)
    text = disassemble(words)
    assert assemble(text) == words
    # A second pass is a fixed point: disassembly is canonical.
    assert disassemble(assemble(text)) == text


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_arbitrary_words(seed):
    """Any aligned binary that is not truncated disassembles to text that assembles back."""
    rng = random.Random(100 + seed)
    program = encode_program(random_program(rng, 50))
    for _ in range(200):
        program[rng.randrange(len(program))] = rng.getrandbits(64)
    text = disassemble(program)
    assert "not a valid" in text  # the corruption shows as raw words
    assert assemble(text) == program


def test_bytes_round_trip_and_misaligned():
    words = [0, 1, (1 << 64) - 1, 0x0123456789ABCDEF]
    data = words_to_bytes(words)
    assert data[8] == 1  # little-endian
    assert bytes_to_words(data) == words
    with pytest.raises(AsmError, match=r"prog.bin: binary of 13 bytes is not a whole number of 8-byte words"):
        bytes_to_words(data[:13], source="prog.bin")


def test_truncated_binary():
    words = assemble(".ve eop\n vsetvl 1\n vsetvl 2\n")
    with pytest.raises(AsmError, match="word 0: µTOp body of 2 words runs past the end"):
        disassemble(words[:2], source="x.bin")


def test_labels_named_operands_flags_and_loops():
    source = """
    # two µTOps and a loop closed by a label at the end of the body
    load:   .dma tag=7
                dload dst=4, hbm=0x10, rows=2     ; named operands
            .me deps(load) eoo
                ldw 4, 4
                mm 8, 4, 2, acc
    last:   .ve deps(-1, load) eop
                loop 2, end, 1, 0
                vaddi 0, 0, 1, 1
                vaddi 1, 1, 1, 1
    end:
    """
    asm = assemble_program(source)
    load, gemm, last = asm.items
    assert load.tag == 7 and load.body[0].args == {"dst": 4, "hbm": 16, "rows": 2}
    assert gemm.deps == (1,) and gemm.eoo and gemm.body[1].args["acc"] == 1
    assert last.deps == (1, 2) and last.eop
    assert last.body[0].args == {"count": 2, "len": 2, "dst_stride": 1, "src_stride": 0}
    assert asm.labels == {"load": 0, "last": 5, "end": 9}
    assert len(asm.words) == 9


def test_loop_label_may_name_the_next_utop():
    items = assemble_program(".ve\n loop 3, nxt, 0, 0\n vaddi 0, 0, 1, 1\nnxt: .ve eop\n").items
    assert items[0].body[0].args["len"] == 1


def test_raw_words_and_end():
    words = assemble(".ve\n .word 0x5\n.end\n.word 0xa3\n")
    assert words == [0x000100A1, 5, 0xA3]


@pytest.mark.parametrize("source, line, message", [
    (".ve\n  vfoo 1, 2\n", 2, "unknown mnemonic 'vfoo'"),
    (".ve\n  vaddi 0, 0, 40000, 1\n", 2, "vaddi: operand imm = 40000 is out of range -32768..32767"),
    (".ve\n  vaddi 0, 0, 1\n", 2, "vaddi: missing operand n"),
    (".ve\n  vaddi 0, 0, 1, 1, 5\n", 2, "vaddi: too many operands ('5')"),
    (".ve\n  vaddi 0, 0, x, 1\n", 2, "vaddi: operand imm = 'x' is not an integer"),
    (".ve\n  vaddi 0, 0, 1, n=1, n=2\n", 2, "operand 'n' given twice"),
    (".ve\n  vaddi 0, 0, 1, q=1\n", 2, "no operand named 'q'"),
    (".ve\n  mm 0, 0, 1\n", 2, "mm is a ME instruction, but this µTOp is VE"),
    ("  vaddi 0, 0, 1, 1\n", 1, "outside a µTOp"),
    (".vx\n", 1, "unknown directive '.vx'"),
    (".ve eop foo\n", 1, "unknown header option 'foo'"),
    (".ve tag=70000\n", 1, "tag '70000' is not an integer in 0..65535"),
    (".ve deps(-1)\n.ve deps(zz)\n", 2, "dependency 'zz' is neither a distance nor a µTOp label"),
    (".ve deps(3)\n", 1, "dependency 3 must be negative"),
    ("a: .ve\n.ve deps(b)\nb: .ve\n", 2, "dependency 'b' is not an earlier µTOp"),
    ("a: .ve\n a: .ve\n", 2, "label 'a' is defined twice"),
    ("mm: .ve\n", 1, "label 'mm' is an instruction mnemonic"),
    (".ve\n loop 2, nowhere, 0, 0\n vaddi 0,0,1,1\n", 2, "loop: unknown label 'nowhere'"),
    (".ve\n loop 2, e, 0, 0\ne: vaddi 0,0,1,1\n", 2, "leaves an empty loop body"),
    (".ve\n .word 1 2\n", 2, ".word needs one integer"),
    ("mm0: .me\n" + ".ve\n" * 8 + ".ve deps(mm0)\n", 10,
     "dependency 'mm0' is 9 µTOps back, beyond the dependency window of 8"),
])
def test_errors_name_file_line_and_value(source, line, message):
    with pytest.raises(AsmError) as info:
        assemble(source, NPUConfig(dep_window=8), source="prog.s")
    assert str(info.value).startswith(f"prog.s:{line}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_body_too_long():
    with pytest.raises(AsmError, match="prog.s:1: µTOp body has 256 instructions; at most 255 fit"):
        assemble(".ve\n" + " vsetvl 1\n" * 256, source="prog.s")


def test_body_longer_than_the_configs_max_body():
    body = " vsetvl 1\n" * 65
    assert len(assemble(".ve\n" + body)) == 66           # no config: the header's limit
    assert len(assemble(".ve\n" + body[10:], NPUConfig(max_body=64))) == 65
    with pytest.raises(AsmError, match="^prog.s:2: µTOp body has 65 instructions; the "
                                       "config's max_body is 64$"):
        assemble(".ve eop\n.ve\n" + body, NPUConfig(max_body=64), source="prog.s")
