"""The golden model's race check: unordered µTOps closer than the window touching one location."""

import pytest

from isa.config import NPUConfig
from isa.asm import assemble
from isa.golden import ContextSpec, GoldenNPU, Segment
from runtime.compiler.matmul import compile_matmul
from runtime.apps.conformance import default_case_paths, load_case

TINY = NPUConfig.preset("tiny")


def races(source, config=TINY):
    npu = GoldenNPU(config, check_races=True)
    [result] = npu.run([ContextSpec(assemble(source), Segment(0, 256), Segment(0, 1024))])
    return result.races


def test_unordered_read_after_write_is_a_race():
    found = races(".ve\n vaddi 10, 0, 1, 2\n.me\n.ve eop\n vaddi 20, 11, 1, 1\n")
    assert [(r.first_pc, r.second_pc, r.space, r.address) for r in found] == [(0, 3, "spad", 11)]


def test_write_after_read_and_hbm_races():
    assert races(".ve\n vaddi 10, 0, 1, 1\n.ve eop\n vaddi 0, 5, 1, 1\n")          # WAR on row 0
    assert races(".dma\n dstore 0, 0, 1\n.dma eop\n dload 8, 2, 1\n")[0].space == "hbm"


@pytest.mark.parametrize("source", [
    ".ve\n vaddi 10, 0, 1, 2\n.ve deps(-1) eop\n vaddi 20, 10, 1, 2\n",                 # direct
    ".ve\n vaddi 10, 0, 1, 1\n.ve deps(-1)\n vaddi 30, 31, 1, 1\n.ve deps(-1) eop\n vaddi 20, 10, 1, 1\n",
    ".ve\n vaddi 10, 0, 1, 1\n" + ".me\n" * 7 + ".ve eop\n vaddi 20, 10, 1, 1\n",      # 8 apart
    ".ve\n vaddi 10, 0, 1, 1\n.ve eop\n vaddi 20, 0, 1, 1\n",                           # read/read
])
def test_ordered_or_harmless_pairs_are_not_races(source):
    assert races(source) == []


def test_conformance_cases_are_race_free():
    for path in default_case_paths():
        case = load_case(path)
        npu = GoldenNPU(case.config, check_races=True)
        for block in case.init:
            memory = npu.spad if block.space == "spad" else npu.hbm
            memory[block.address:block.address + len(block.data)] = block.data
        for result in npu.run(case.contexts):
            assert result.races == [], path.stem


@pytest.mark.parametrize("m, k, n, requant", [(37, 29, 19, None), (300, 17, 9, None),
                                              (20, 13, 11, (1 << 22, 30, 0)), (64, 8, 8, None)])
def test_compiled_matmuls_are_race_free(m, k, n, requant):
    config = NPUConfig()
    plan = compile_matmul(config, m, k, n, requant=requant, row_block=16)
    npu = GoldenNPU(config, check_races=True)
    [result] = npu.run([ContextSpec(plan.program.words, Segment(0, config.spad_rows),
                                    Segment(0, config.hbm_words))])
    assert result.fault.name == "NONE" and result.races == []
