"""Host interface: every register of the declared map is decoded as declared."""

import random

from hw.config import NPUConfig
from hw.regmap import CONTEXT, GLOBAL, ID_VALUE, Access, register_address
from isa.encoding import Fault
from runtime.pysim_backend import PysimBackend

TINY = NPUConfig.preset("tiny")
WIDTHS = {"POLICY": 2, "TIME_SLICE": 32, "PROG_LEN": 17, "SPAD_BASE": 17, "SPAD_SIZE": 17,
          "HBM_BASE": 32, "HBM_SIZE": 33, "ME_MASK": TINY.n_me, "VE_MASK": TINY.n_ve,
          "PRIORITY": 4}


def test_registers_read_back_and_identify():
    rng = random.Random(1)
    script, expected = [], []
    for register in GLOBAL:
        if register.access == Access.RW:
            value = rng.getrandbits(64)
            address = register_address(register.name)
            script += [("csr_write", address, value), ("csr_read", address)]
            expected.append(value & ((1 << WIDTHS[register.name]) - 1))
    for ctx in range(TINY.n_ctx):
        for register in CONTEXT:
            if register.access == Access.RW:
                value = rng.getrandbits(64)
                address = register_address(register.name, ctx=ctx)
                script += [("csr_write", address, value), ("csr_read", address)]
                expected.append(value & ((1 << WIDTHS[register.name]) - 1))
    script += [("csr_read", register_address("ID")), ("csr_read", register_address("SHAPE")),
               ("csr_read", 0x0FFF)]
    cfg = TINY
    expected += [ID_VALUE, cfg.n_ctx | cfg.n_me << 8 | cfg.n_ve << 16 | cfg.n_dma << 24
                 | cfg.array_rows << 32 | cfg.array_cols << 40 | cfg.ve_lanes << 48, 0]
    assert PysimBackend(TINY).execute(script) == expected


def test_start_status_and_fault_registers():
    """A context started with an empty program faults FETCH_OOB at word 0."""
    script = [("csr_write", register_address("PROG_LEN", ctx=2), 0),
              ("csr_write", register_address("SPAD_SIZE", ctx=2), 8),
              ("csr_write", register_address("START"), 1 << 2),
              ("run", 1000),
              ("csr_read", register_address("STATUS")),
              ("csr_read", register_address("STATUS", ctx=2)),
              ("csr_read", register_address("FAULT", ctx=2)),
              ("csr_read", register_address("FAULT_PC", ctx=2))]
    (waited, busy), packed, status, fault, fault_pc = PysimBackend(TINY).execute(script)
    assert not busy
    assert packed == 3 << 4 and status == 3
    assert (fault, fault_pc) == (Fault.FETCH_OOB, 0)
