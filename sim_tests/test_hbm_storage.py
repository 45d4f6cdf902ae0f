"""HBM at real size: the lines live in the simulation harness (pysim's HBMStorage, the
Verilator harness's pages) behind the controller's storage port, so a gigabyte HBM costs
only the lines a run writes; the host's back door (``Driver.load_hbm``) takes no cycles."""

import numpy as np
import pytest

from isa.asm import assemble
from isa.config import NPUConfig
from isa.encoding import Fault, pack_int8
from isa.golden import Segment
from isa.regmap import Status
from runtime.backends.hbm_storage import HBMStorage
from runtime.host.driver import Driver, DriverError
from test_conformance import same_run

DEFAULT = NPUConfig()
TINY = NPUConfig.preset("tiny")


def test_storage_back_door_reads_what_it_wrote():
    """Writes at every alignment and length, read back anywhere: as a flat numpy memory."""
    storage = HBMStorage(TINY)
    reference = np.zeros(TINY.hbm_words, np.int64)
    rng = np.random.default_rng(0)
    for _ in range(300):
        address, count = int(rng.integers(0, 8000)), int(rng.integers(0, 100))
        values = rng.integers(-2**31, 2**32, count)
        storage.write(address, values)
        reference[address:address + count] = values.astype(np.uint32).view(np.int32)
        address, count = int(rng.integers(0, 8000)), int(rng.integers(0, 150))
        assert np.array_equal(storage.read(address, count), reference[address:address + count])
    assert len(storage.lines) <= TINY.hbm_words // TINY.hbm_words_per_cycle
    with pytest.raises(ValueError, match="HBM words 8190..8193 are outside HBM's 8192 words"):
        storage.write(8190, [1, 2, 3, 4])


def test_the_default_hbm_is_a_gigabyte_and_tpu_eight():
    assert DEFAULT.hbm_words * 4 == 1 << 30
    assert NPUConfig.preset("tpu").hbm_words * 4 == 8 << 30


#: A tenant whose segment is HBM's last 8192 words (past 2^27 on default): it loads rows,
#: packed int8 rows and a gather through its table, adds, and stores both kinds back.
TOP = Segment(DEFAULT.hbm_words - 8192, 8192)
SOURCE = """
.dma
    dcfg 8, 8, 1
    dload 0, 0, 4
    dload 6, 128, 1
    dcfg 8, 2, 1, i8
    dload 4, 64, 2
.dma deps(-1)
    dcfg 8, 8, 1
    dbase 256
    dgather 7, 6, 2
.ve deps(-1)
    vaddi 0, 0, 1000, 6
.dma deps(-1, -2) eop
    dcfg 8, 8, 1
    dstore 4096, 0, 9
    dcfg 8, 2, 1, i8
    dstore 6144, 0, 9
"""


def _top_of_hbm(backend):
    words = assemble(SOURCE, config=DEFAULT)
    driver = Driver(DEFAULT, backend)
    driver.load_context(0, words, Segment(0, 64), TOP)
    rng = np.random.default_rng(7)
    driver.load_hbm(TOP.base, rng.integers(-2**31, 2**31, 4 * 8))
    driver.load_hbm(TOP.base + 64, pack_int8(rng.integers(-128, 128, 16)))
    driver.load_hbm(TOP.base + 128, [3, 1])                         # the gather's indices
    driver.load_hbm(TOP.base + 256, rng.integers(-99, 99, 4 * 8))   # its table: 4 rows
    return driver.run(max_cycles=100_000, read_spad=[(0, 9)],
                      read_hbm=[(TOP.base + 4096, 72), (TOP.base + 6144, 18)])


@pytest.fixture(scope="module")
def top_golden():
    return _top_of_hbm("golden")


@pytest.mark.parametrize("backend", [pytest.param("pysim", marks=pytest.mark.slow), "verilator"])
def test_a_tenant_at_the_top_of_a_gigabyte_hbm(backend, top_golden):
    """Loads, packed int8, a gather and stores at HBM words past 2^27, bit-exact with golden;
    the program itself is fetched from just below the segment."""
    run = _top_of_hbm(backend)
    [context] = run.contexts
    assert (context.status, context.fault) == (Status.DONE, Fault.NONE)
    assert 1 << 27 < context.counters["PROG_BASE"] < TOP.base
    for key in top_golden.spad:
        assert np.array_equal(run.spad[key], top_golden.spad[key]), key
    for key in top_golden.hbm:
        assert np.array_equal(run.hbm[key], top_golden.hbm[key]), key
        assert np.any(run.hbm[key]), key


def _loaded_then_written(backend, load_first):
    """A back-door load, then port writes over part of it, read back through the port; and
    the same without the load: the cycles the run took, and what was read."""
    driver = Driver(TINY, backend)
    driver.load_context(0, assemble(".dma eop\n    dstore 0, 0, 1\n", config=TINY),
                        Segment(0, 4), Segment(0, 1024))
    if load_first:
        driver.load_hbm(1003, np.arange(-500, 3001))       # an odd count: a half-filled pair
    driver.write_hbm(1010, [7, 8, 9])
    return driver.run(max_cycles=10_000, read_hbm=[(1000, 40)])


@pytest.mark.parametrize("backend", ["golden", "pysim", "verilator"])
def test_back_door_loads_take_no_cycles(backend):
    loaded, plain = _loaded_then_written(backend, True), _loaded_then_written(backend, False)
    expected = np.zeros(40, np.int64)
    expected[3:] = np.arange(-500, -463)
    expected[10:13] = [7, 8, 9]
    assert np.array_equal(loaded.hbm[(1000, 40)], expected)
    if backend != "golden":
        assert loaded.cycles == plain.cycles
        assert [c.counters for c in loaded.contexts] == [c.counters for c in plain.contexts]


def test_pysim_and_verilator_agree_on_loads_and_port_writes():
    same_run(_loaded_then_written("pysim", True), _loaded_then_written("verilator", True))


@pytest.mark.parametrize("address, words, message", [
    (-1, [1], "HBM words -1..-1 are outside 0..8191"),
    (8190, [1, 2, 3], "HBM words 8190..8192 are outside 0..8191"),
    (0, [1 << 32], "HBM values: 4294967296 does not fit in a 32-bit word"),
])
def test_bad_back_door_loads_name_the_value(address, words, message):
    with pytest.raises(DriverError, match=message):
        Driver(TINY, "golden").load_hbm(address, words)


def test_back_door_loads_in_the_harness_interactive_mode():
    """The Verilator harness's interactive mode (a host in the loop) reads a load's words
    from its count, an odd one included, as the free-running mode does."""
    from runtime.backends import script as ops
    from runtime.backends.verilator import VerilatorBackend
    backend = VerilatorBackend(TINY)
    script = [ops.HbmLoad(5, np.arange(1, 8)), ops.HbmRead(1), ops.HbmRead(2),
              ops.HbmLoad(30, np.array([-7])), ops.HbmRead(7)]
    expected = [[0, 1, 2, 3], [4, 5, 6, 7], [0, 0, -7, 0]]
    assert backend.execute(script) == expected
    assert backend.stepped(script, 64) == expected
