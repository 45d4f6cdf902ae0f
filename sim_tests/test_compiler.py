"""The matmul compiler: any M, K, N, exact against numpy on golden, pysim and verilator."""

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.golden import requantize
from runtime.apps.cli import main
from runtime.compiler.matmul import CompileError, compile_matmul
from runtime.apps.matmul import MatmulError, matmul

TINY = NPUConfig.preset("tiny")
DEFAULT = NPUConfig()


def operands(m, k, n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
    a.flat[0] = b.flat[0] = -128
    return a, b


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (8, 8, 8), (37, 29, 19), (300, 17, 9),
                                     (5, 64, 3), (16, 7, 33), (2, 100, 2), (33, 300, 17),
                                     (70, 520, 30)])
def test_golden_matches_numpy(m, k, n):
    a, b = operands(m, k, n, m * k * n)
    c, _ = matmul(a, b, config=DEFAULT, backend="golden")
    assert np.array_equal(c, a @ b)


@pytest.mark.parametrize("m, k, n, spad_rows", [(100, 24, 40, 96), (96, 16, 8, 64)])
def test_operands_larger_than_the_scratchpad(m, k, n, spad_rows):
    """A and B do not fit: A panels and B column panels stream through double buffers."""
    a, b = operands(m, k, n, spad_rows)
    plan = compile_matmul(DEFAULT, m, k, n, spad_rows=spad_rows)
    assert plan.spad_rows <= spad_rows < (m * k + k * n) // DEFAULT.ve_lanes
    c, _ = matmul(a, b, config=DEFAULT, backend="golden", spad_rows=spad_rows)
    assert np.array_equal(c, a @ b)


def test_requantized_output():
    a, b = operands(20, 13, 11, 3)
    c, _ = matmul(a, b, config=DEFAULT, backend="golden", requant=(1 << 22, 30, -3))
    assert np.array_equal(c, requantize(a @ b, 1 << 22, 30, -3))


def test_pysim_small_shape():
    a, b = operands(13, 11, 9, 4)
    c, run = matmul(a, b, config=TINY, backend="pysim")
    assert np.array_equal(c, a @ b) and run.makespan > 0


def test_verilator_larger_shape():
    a, b = operands(40, 16, 21, 5)
    c, _ = matmul(a, b, config=TINY, backend="verilator", row_block=16)
    assert np.array_equal(c, a @ b)


def test_same_program_on_one_and_two_mes():
    """The program does not name engines: more MEs give the same result in fewer cycles."""
    a, b = operands(64, 8, 8, 6)
    one, run1 = matmul(a, b, config=TINY, backend="verilator", policy="static", n_me=1,
                       row_block=8)
    two, run2 = matmul(a, b, config=TINY, backend="verilator", policy="static", n_me=2,
                       row_block=8)
    assert np.array_equal(one, a @ b) and np.array_equal(two, a @ b)
    assert run2.makespan < run1.makespan
    assert run1.engines[1]["BUSY"] == 0 and run2.engines[1]["BUSY"] > 0


@pytest.mark.slow
def test_one_two_four_mes_on_the_default_npu():
    """The µTOp program of one tenant on 1, 2 and 4 MEs (pysim, default config)."""
    a, b = operands(32, 64, 32, 8)
    cycles = []
    for n_me in (1, 2, 4):
        c, run = matmul(a, b, config=DEFAULT, backend="pysim", policy="static", n_me=n_me)
        assert np.array_equal(c, a @ b)
        assert all(e["BUSY"] == 0 for e in run.engines[n_me:DEFAULT.n_me])
        cycles.append(run.makespan)
    assert cycles[0] > cycles[1] > cycles[2]


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((3, 4), int), np.zeros((5, 2), int), "shapes (3, 4) and (5, 2) do not match"),
    (np.zeros(3, int), np.zeros((3, 2), int), "matmul needs two matrices"),
    (np.full((2, 2), 200), np.zeros((2, 2), int), "A holds values outside int8"),
    (np.zeros((2, 2), int), np.zeros((2, 2)), "B must hold integers"),
])
def test_bad_operands(a, b, message):
    with pytest.raises(MatmulError, match=message.replace("(", r"\(").replace(")", r"\)")):
        matmul(a, b, config=TINY)


def test_too_large_for_the_vnpu():
    # Each limit's error names the config field that lifts it.
    with pytest.raises(CompileError, match="needs at least .* scratchpad rows .* of the vNPU.s "
                                           "16 are free .a larger `spad_rows`"):
        compile_matmul(TINY, 100, 16, 16, spad_rows=16)
    with pytest.raises(MatmulError, match="needs 13860 HBM words; the NPU has 8192 .a config "
                                          "with a larger `hbm_words` lifts the limit"):
        matmul(*operands(120, 60, 37, 1), config=TINY)
    from runtime.compiler.models import compile_model
    from runtime.compiler.onnx_import import OnnxError
    with pytest.raises(OnnxError, match="HBM words; .* of the vNPU's .* are left .a config "
                                        "with a larger `hbm_words` lifts the limit"):
        compile_model("dlrm[vocab=4096]", TINY)
    with pytest.raises(CompileError, match="matmul dimension k must be a positive integer"):
        compile_matmul(TINY, 4, 0, 4)


def test_cli(tmp_path, capsys):
    a, b = operands(9, 6, 5, 7)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    assert main(["matmul", "--a", str(tmp_path / "a.npy"), "--b", str(tmp_path / "b.npy"),
                 "-o", str(tmp_path / "c.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "c.npy"), a @ b)
    np.save(tmp_path / "bad.npy", np.zeros((4, 4), int))
    assert main(["matmul", "--a", str(tmp_path / "a.npy"), "--b", str(tmp_path / "bad.npy"),
                 "-o", str(tmp_path / "c.npy")]) == 2
    assert "do not match" in capsys.readouterr().err
    assert main(["matmul", "--a", str(tmp_path / "nope.npy"), "--b", str(tmp_path / "b.npy"),
                 "-o", str(tmp_path / "c.npy")]) == 2
