"""Host interface: every register of the declared map is decoded as declared, and bad
settings are refused by the hardware (HOST_ERROR, CONFIG faults), never wrapped."""

import random

import pytest

from isa.config import NPUConfig
from isa.regmap import (CONTEXT, GLOBAL, ID_VALUE, Access, HostError, Policy, Status,
                        register_address)
from isa.asm import assemble
from isa.encoding import Fault, program_hbm_words
from runtime.backends import script as ops
from runtime.backends.pysim import PysimBackend
from runtime.host.driver import make_backend

TINY = NPUConfig.preset("tiny")


@pytest.fixture(params=["pysim", "golden"])
def backend(request):
    """The RTL, and the golden model reading the same register writes: the host interface
    refuses, records and answers the same on both (the golden model has no time, so a
    context is never seen running)."""
    return make_backend(request.param, TINY)
WIDTHS = {"POLICY": 2, "TIME_SLICE": 32, "PROG_BASE": 32, "PROG_LEN": 32, "SPAD_BASE": 17, "SPAD_SIZE": 17,
          "HBM_BASE": 32, "HBM_SIZE": 33, "ME_MASK": TINY.n_me, "VE_MASK": TINY.n_ve,
          "PRIORITY": 4}


def test_registers_read_back_and_identify(backend):
    rng = random.Random(1)
    # Reset values first: POLICY static, TIME_SLICE 4096.
    script = [ops.CsrRead(register_address("POLICY")), ops.CsrRead(register_address("TIME_SLICE"))]
    expected = [Policy.STATIC, 4096]
    for register in GLOBAL:
        if register.access == Access.RW and register.name != "HOST_ERROR":
            value = rng.randrange(1, 1 << WIDTHS[register.name])
            address = register_address(register.name)
            script += [ops.CsrWrite(address, value), ops.CsrRead(address)]
            expected.append(value)
    for ctx in range(TINY.n_ctx):
        for register in CONTEXT:
            if register.access == Access.RW:
                value = rng.randrange(1 << WIDTHS[register.name])
                address = register_address(register.name, ctx=ctx)
                script += [ops.CsrWrite(address, value), ops.CsrRead(address)]
                expected.append(value)
    script.append(ops.CsrRead(register_address("HOST_ERROR")))
    expected.append(HostError.NONE)
    script += [ops.CsrRead(register_address("ID")), ops.CsrRead(register_address("SHAPE")),
               ops.CsrRead(0x0FFF)]
    cfg = TINY
    expected += [ID_VALUE, cfg.n_ctx | cfg.n_me << 8 | cfg.n_ve << 16 | cfg.n_dma << 24
                 | cfg.array_rows << 32 | cfg.array_cols << 40 | cfg.ve_lanes << 48, 0]
    assert backend.execute(script) == expected


def test_start_status_and_fault_registers(backend):
    """A context started with an empty program faults FETCH_OOB at word 0."""
    script = [ops.CsrWrite(register_address("PROG_LEN", ctx=2), 0),
              ops.CsrWrite(register_address("SPAD_SIZE", ctx=2), 8),
              ops.CsrWrite(register_address("START"), 1 << 2),
              ops.Run(1000),
              ops.CsrRead(register_address("STATUS")),
              ops.CsrRead(register_address("STATUS", ctx=2)),
              ops.CsrRead(register_address("FAULT", ctx=2)),
              ops.CsrRead(register_address("FAULT_PC", ctx=2))]
    (waited, busy), packed, status, fault, fault_pc = backend.execute(script)
    assert not busy
    assert packed == 3 << 4 and status == 3
    assert (fault, fault_pc) == (Fault.FETCH_OOB, 0)


HOST_ERROR = register_address("HOST_ERROR")
LONG = assemble(".ve eop\n loop 200, 1, 0, 0\n vaddi 0, 0, 1, 1\n")    # ~200+ cycles


def error(code, address):
    return code | address << 32


#: Where configure() puts programs: context c's at PROG_AREA + c * 256 (outside segments).
PROG_AREA = TINY.hbm_words // 2


def program_writes(base, program):
    """HBM writes that put ``program`` (64-bit words) at HBM word ``base`` (a line's first),
    low halves first, as isa/SPEC.md lays programs out."""
    per_line = TINY.hbm_words_per_cycle
    halves = program_hbm_words(program)
    halves += [0] * (-len(halves) % per_line)
    return [ops.HbmWrite((base + i) // per_line, tuple(halves[i:i + per_line]),
                         (1 << per_line) - 1) for i in range(0, len(halves), per_line)]


def configure(ctx, program, spad=(0, 64), hbm=(0, 256)):
    """Host writes that load a program (into HBM) and valid segments into ``ctx``."""
    base = PROG_AREA + ctx * 256
    script = program_writes(base, program)
    for name, value in (("PROG_BASE", base), ("PROG_LEN", len(program)),
                        ("SPAD_BASE", spad[0]), ("SPAD_SIZE", spad[1]),
                        ("HBM_BASE", hbm[0]), ("HBM_SIZE", hbm[1]), ("ME_MASK", 1), ("VE_MASK", 1)):
        script.append(ops.CsrWrite(register_address(name, ctx=ctx), value))
    return script


@pytest.mark.parametrize("name, ctx", [(r.name, None) for r in GLOBAL
                                       if r.access == Access.RW and r.name != "HOST_ERROR"]
                         + [(r.name, 1) for r in CONTEXT if r.access == Access.RW])
def test_a_value_wider_than_its_register_is_refused(backend, name, ctx):
    address = register_address(name, ctx=ctx)
    width = WIDTHS[name]
    script = [ops.CsrWrite(address, 1), ops.CsrWrite(address, (1 << width) | 2),
              ops.CsrRead(address), ops.CsrRead(HOST_ERROR),
              ops.CsrWrite(HOST_ERROR, 0), ops.CsrRead(HOST_ERROR)]
    value, host_error, cleared = backend.execute(script)
    assert value == 1                                 # unchanged, not truncated to 2
    assert host_error == error(HostError.VALUE_RANGE, address)
    assert cleared == 0


def test_time_slice_zero_and_unmapped_writes_are_refused(backend):
    address = register_address("TIME_SLICE")
    script = [ops.CsrWrite(address, 0), ops.CsrRead(address), ops.CsrRead(HOST_ERROR),
              ops.CsrWrite(HOST_ERROR, 0), ops.CsrWrite(0x0FFF, 5), ops.CsrRead(HOST_ERROR),
              ops.CsrWrite(HOST_ERROR, 0), ops.CsrWrite(register_address("CYCLES", ctx=0), 5),
              ops.CsrRead(HOST_ERROR)]
    value, zero, unmapped, read_only = backend.execute(script)
    assert value == 4096 and zero == error(HostError.VALUE_RANGE, address)
    assert unmapped == error(HostError.UNMAPPED, 0x0FFF)
    assert read_only == error(HostError.UNMAPPED, register_address("CYCLES", ctx=0))


def test_first_error_sticks_until_cleared(backend):
    script = [ops.CsrWrite(0x0FFF, 5), ops.CsrWrite(register_address("POLICY"), 7),
              ops.CsrRead(HOST_ERROR)]
    assert backend.execute(script) == [error(HostError.UNMAPPED, 0x0FFF)]


def test_the_program_is_fetched_from_hbm_at_prog_base(backend):
    """Two programs in HBM; PROG_BASE chooses which one runs: the one writing 2 to row 0."""
    first = assemble(".ve eop\n vaddi 0, 0, 1, 1\n")
    second = assemble(".ve eop\n vaddi 0, 0, 2, 1\n")
    other = PROG_AREA + 1024
    script = configure(0, first) + program_writes(other, second) + [
        ops.CsrWrite(register_address("PROG_BASE", ctx=0), other),
        ops.CsrWrite(register_address("START"), 1), ops.Run(2000),
        ops.CsrRead(register_address("STATUS", ctx=0)), ops.CsrRead(register_address("FAULT", ctx=0)),
        ops.SpadRead(0), ops.CsrRead(HOST_ERROR)]
    (_, busy), status, fault, row, host_error = backend.execute(script)
    assert not busy and (status, fault) == (Status.DONE, Fault.NONE)
    assert list(row) == [2] * TINY.ve_lanes and host_error == 0


@pytest.mark.parametrize("name, value", [
    ("PROG_LEN", (TINY.hbm_words - PROG_AREA - 3 * 256) // 2 + 1),  # runs past HBM's end
    ("PROG_BASE", TINY.hbm_words),                      # a line past HBM's end
    ("PROG_BASE", PROG_AREA + 2),                       # not at the start of an HBM line
    ("SPAD_BASE", TINY.spad_rows - 32),                # base + size (64) runs past the end
    ("SPAD_SIZE", TINY.spad_rows + 1),
    ("HBM_BASE", TINY.hbm_words - 1),
    ("HBM_SIZE", TINY.hbm_words + 4),
])
def test_start_with_invalid_settings_faults_config(backend, name, value):
    program = assemble(".ve eop\n vaddi 0, 0, 1, 1\n")
    script = configure(3, program) + [
        ops.CsrWrite(register_address(name, ctx=3), value),
        ops.CsrWrite(register_address("START"), 1 << 3), ops.Run(2000),
        ops.CsrRead(register_address("STATUS", ctx=3)), ops.CsrRead(register_address("FAULT", ctx=3)),
        ops.CsrRead(register_address("FAULT_PC", ctx=3)), ops.CsrRead(register_address("ISSUED", ctx=3)),
        ops.CsrRead(HOST_ERROR)]
    (_, busy), status, fault, fault_pc, issued, host_error = backend.execute(script)
    assert not busy
    assert (status, fault, fault_pc, issued) == (Status.FAULTED, Fault.CONFIG, 0, 0)
    assert host_error == error(HostError.BAD_CONTEXT, register_address("START"))


def test_start_and_reconfiguration_of_a_running_context_are_refused():
    """The second START would restart the program and mix the old run's in-flight µTOps
    into the new run's counts; rewriting a running context's segment or program base
    would move it under its feet."""
    script = configure(0, LONG) + [
        ops.CsrWrite(register_address("START"), 1), ops.Run(40),
        ops.CsrWrite(register_address("START"), 1), ops.CsrRead(HOST_ERROR),
        ops.CsrWrite(HOST_ERROR, 0),
        ops.CsrWrite(register_address("SPAD_BASE", ctx=0), 100), ops.CsrRead(HOST_ERROR),
        ops.CsrWrite(HOST_ERROR, 0),
        ops.CsrWrite(register_address("PROG_BASE", ctx=0), 0), ops.CsrRead(HOST_ERROR),
        ops.Run(5000),
        ops.CsrRead(register_address("STATUS", ctx=0)), ops.CsrRead(register_address("ISSUED", ctx=0)),
        ops.CsrRead(register_address("RETIRED", ctx=0)), ops.CsrRead(register_address("SPAD_BASE", ctx=0))]
    (_, busy_early), restart, segment, imem, (_, busy), status, issued, retired, base = \
        PysimBackend(TINY).execute(script)
    assert busy_early
    start = register_address("START")
    assert restart == error(HostError.CONTEXT_RUNNING, start)
    assert segment == error(HostError.CONTEXT_RUNNING, register_address("SPAD_BASE", ctx=0))
    assert imem == error(HostError.CONTEXT_RUNNING, register_address("PROG_BASE", ctx=0))
    assert not busy and status == Status.DONE and issued == retired == 1 and base == 0


def test_start_bits_beyond_the_contexts_are_refused(backend):
    start = register_address("START")
    script = [ops.CsrWrite(start, 1 << TINY.n_ctx), ops.CsrRead(HOST_ERROR),
              ops.CsrRead(register_address("STATUS"))]
    assert backend.execute(script) == [error(HostError.VALUE_RANGE, start), 0]
