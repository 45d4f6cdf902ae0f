"""ISA conformance cases: one TOML file each, run on any backend and checked against what it expects.

A case file::

    description = "vadd adds rows lane by lane"
    config = "tiny"                  # a preset, or a table: [config] preset = "tiny", ve_lanes = 8
    watchdog = 200                   # optional: overrides the config's watchdog_cycles

    [[context]]
    spad = [0, 64]                   # scratchpad segment: base row, size in rows
    hbm = [0, 256]                   # HBM segment: base word, size in words
    program = '''
    .ve eop
        vadd 2, 0, 1, 1
    '''
    fault = "none"                   # expected fault (default "none")
    fault_at = "label"               # optional: label (or word address) of the faulting µTOp

    [[init]]                         # initial memory (any number of blocks)
    context = 0                      # optional: addresses relative to that context's segment,
                                     # and the block must lie inside that segment
    spad = 0                         # first row; a list of rows follows (short rows are 0-padded)
    data = [[1, 2, 3, 4], [10, 20, 30, 40]]

    [[expect]]                       # expected memory, same form; hbm = WORD takes a flat list
    context = 0
    spad = 2
    data = [[11, 22, 33, 44]]

Integers are TOML integers (``true`` is not 1); an unknown key anywhere is an error.

Each context is checked for its fault (and ``fault_at``) and its final status: FAULTED
when a fault is expected, DONE otherwise. A failure lists every mismatch: the first
``SHOWN_MISMATCHES`` differing values of each expected block (row, lane, got, expected)
with their count; a WATCHDOG fault and a run still going at ``max_cycles`` (a failure
too) name the run's cycle count.
"""

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from isa.asm import AsmError, assemble_program
from isa.config import ConfigError, NPUConfig
from isa.encoding import Fault
from isa.golden import ContextSpec, GoldenNPU, Segment
from isa.regmap import Status
from runtime.host.device import Device
from runtime.host.driver import BACKENDS

__all__ = ["CaseError", "Case", "load_case", "run_case", "default_case_paths", "BACKENDS",
           "BackendUnavailable", "CaseOutcome"]

CASE_DIR = Path(__file__).resolve().parents[2] / "sim_tests" / "conformance"
#: Differing values of one expected block that a failure lists (it counts them all).
SHOWN_MISMATCHES = 4


def _is_int(value):
    """A TOML integer: Python's bool is an int, but ``true`` is not a number here."""
    return isinstance(value, int) and not isinstance(value, bool)


class CaseError(ValueError):
    """A malformed case file; the message names the file and what is wrong."""


class BackendUnavailable(RuntimeError):
    """The chosen backend is not built (yet) on this machine."""


@dataclass
class MemoryBlock:
    space: str                # "spad" or "hbm"
    address: int              # physical first row (spad) or word (hbm)
    data: np.ndarray          # (rows, lanes) for spad, flat for hbm
    context: int | None


@dataclass
class ExpectedContext:
    fault: Fault
    fault_at: int | None


@dataclass
class Case:
    name: str
    path: Path
    description: str
    config: NPUConfig
    contexts: list            # ContextSpec
    expected: list            # ExpectedContext per context
    init: list = field(default_factory=list)
    expect: list = field(default_factory=list)


@dataclass
class CaseOutcome:
    passed: bool
    failures: list
    run: object = None        # the driver's RunResult


def default_case_paths():
    return sorted(CASE_DIR.glob("*.toml"))


def load_case(path):
    path = Path(path)

    def fail(message):
        raise CaseError(f"{path}: {message}")

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        fail(f"cannot read case: {error.strerror}")
    except UnicodeDecodeError:
        fail("not a UTF-8 text file (TOML is UTF-8)")
    except tomllib.TOMLDecodeError as error:
        fail(f"malformed TOML: {error}")
    known = {"description", "config", "watchdog", "context", "init", "expect"}
    for key in raw:
        if key not in known:
            fail(f"unknown key {key!r}; expected one of {', '.join(sorted(known))}")

    config_value = raw.get("config", "default")
    try:
        if isinstance(config_value, str):
            config = NPUConfig.preset(config_value)
        elif isinstance(config_value, dict):
            config = NPUConfig.from_dict(config_value, source=str(path))
        else:
            fail(f"config must be a preset name or a table, not {config_value!r}")
    except ConfigError as error:
        fail(str(error).removeprefix(f"{path}: "))
    if "watchdog" in raw:
        watchdog = raw["watchdog"]
        if not _is_int(watchdog) or watchdog < 1:
            fail(f"watchdog must be a positive integer (cycles), not {watchdog!r}")
        try:
            config = config.replace(watchdog_cycles=watchdog)
        except ConfigError as error:
            fail(str(error))

    raw_contexts = raw.get("context")
    if not isinstance(raw_contexts, list) or not raw_contexts:
        fail("needs at least one [[context]] table")
    contexts, expected = [], []
    for index, entry in enumerate(raw_contexts):
        where = f"context {index}"
        if not isinstance(entry, dict):
            fail(f"{where} must be a table ([[context]]), not {entry!r}")
        for key in entry:
            if key not in ("spad", "hbm", "program", "fault", "fault_at"):
                fail(f"{where}: unknown key {key!r}; expected spad, hbm, program, fault, fault_at")
        segments = []
        for name in ("spad", "hbm"):
            value = entry.get(name)
            if not (isinstance(value, list) and len(value) == 2
                    and all(_is_int(v) and v >= 0 for v in value)):
                fail(f"{where}: {name} must be [base, size] with non-negative integers, "
                     f"not {value!r}")
            segments.append(Segment(*value))
        program = entry.get("program")
        if not isinstance(program, str):
            fail(f"{where}: program must be a string of assembly")
        try:
            assembly = assemble_program(program, source=f"{path} [{where}]", config=config)
        except AsmError as error:
            raise CaseError(str(error)) from None
        fault_name = entry.get("fault", "none")
        try:
            fault = Fault[str(fault_name).upper()]
        except KeyError:
            fail(f"{where}: unknown fault {fault_name!r}; expected one of "
                 f"{', '.join(f.name.lower() for f in Fault)}")
        fault_at = entry.get("fault_at")
        if isinstance(fault_at, str):
            if fault_at not in assembly.labels:
                fail(f"{where}: fault_at names no label: {fault_at!r}")
            fault_at = assembly.labels[fault_at]
        elif fault_at is not None and not (_is_int(fault_at) and fault_at >= 0):
            fail(f"{where}: fault_at must be a label or a word address, not {fault_at!r}")
        contexts.append(ContextSpec(assembly.words, *segments))
        expected.append(ExpectedContext(fault, fault_at))
    try:
        GoldenNPU(config).check_contexts(contexts)
    except ValueError as error:
        fail(str(error))

    def blocks(key):
        result = []
        for index, entry in enumerate(raw.get(key, [])):
            where = f"{key} block {index}"
            if not isinstance(entry, dict):
                fail(f"{where} must be a table ([[{key}]]), not {entry!r}")
            for name in entry:
                if name not in ("context", "spad", "hbm", "data"):
                    fail(f"{where}: unknown key {name!r}; expected context, spad or hbm, data")
            spaces = [s for s in ("spad", "hbm") if s in entry]
            if len(spaces) != 1:
                fail(f"{where}: needs exactly one of spad = ROW or hbm = WORD")
            space = spaces[0]
            context = entry.get("context")
            address = entry[space]
            if not _is_int(address) or address < 0:
                fail(f"{where}: {space} must be a non-negative integer, not {address!r}")
            if context is not None and not (_is_int(context) and 0 <= context < len(contexts)):
                fail(f"{where}: context {context!r} is not one of the case's "
                     f"{len(contexts)} contexts")
            data = entry.get("data")
            rows_given = space == "spad"
            if not (isinstance(data, list) and all(
                    isinstance(v, list) and all(_is_int(x) for x in v) if rows_given
                    else _is_int(v) for v in data)):
                fail(f"{where}: data must be a list of {'rows of ' if rows_given else ''}integers")
            values = [x for row in data for x in row] if rows_given else data
            if any(not -(1 << 31) <= v < 1 << 31 for v in values):
                fail(f"{where}: data values must fit in 32 bits")
            if rows_given:
                array = np.zeros((len(data), config.ve_lanes), dtype=np.int32)
                for r, row in enumerate(data):
                    if len(row) > config.ve_lanes:
                        fail(f"{where}: row {r} has {len(row)} values; rows hold "
                             f"{config.ve_lanes}")
                    array[r, :len(row)] = row
                limit = config.spad_rows
            else:
                array = np.array(data, dtype=np.int32)
                limit = config.hbm_words
            units = "rows" if space == "spad" else "words"
            if context is not None:
                segment = getattr(contexts[context], space)
                if address + len(array) > segment.size:
                    fail(f"{where}: {len(array)} {units} at {address} run past context "
                         f"{context}'s {space} segment (base {segment.base}, size "
                         f"{segment.size})")
                address += segment.base
            if address + len(array) > limit:
                fail(f"{where}: {len(array)} {units} at {address} run past the end of "
                     f"{space} ({limit})")
            result.append(MemoryBlock(space, address, array, context))
        return result

    for key in ("init", "expect"):
        if not isinstance(raw.get(key, []), list):
            fail(f"{key} must be an array of tables ([[{key}]])")
    return Case(path.stem, path, str(raw.get("description", "")), config, contexts, expected,
                blocks("init"), blocks("expect"))


def place(case, device):
    """The case's contexts as vNPUs: its segments, and context c owns ME (c mod n_me) and VE
    (c mod n_ve), so every context owns one engine of each type (the static policy can run
    it); with more contexts than engines, engines are shared (oversubscribed)."""
    cfg = case.config
    return [device.place(spec.spad, spec.hbm, me_mask=1 << (c % cfg.n_me),
                         ve_mask=1 << (c % cfg.n_ve), name=f"context {c}")
            for c, spec in enumerate(case.contexts)]


def _final_status(fault):
    return Status.DONE if fault == Fault.NONE else Status.FAULTED


def run_case(case, backend="golden", policy="harvest", max_cycles=50_000, vcd=None,
             timeline=False):
    """Run a case on a backend; return a CaseOutcome listing every mismatch (its run with
    a timeline with ``timeline``, on a timed backend)."""
    from runtime.host.driver import DriverError
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    try:
        device = Device(case.config, backend, policy, **({"vcd": vcd} if vcd else {}))
        vnpus = place(case, device)
        # Programs go where no block of the case is.
        blocks = [Segment(b.address, len(b.data)) for b in case.init + case.expect
                  if b.space == "hbm"]
        driver = device.driver({vnpu.name: spec.program
                                for vnpu, spec in zip(vnpus, case.contexts)}, reserve=blocks)
    except DriverError as error:
        raise BackendUnavailable(str(error)) from None
    for block in case.init:
        if block.space == "spad":
            driver.write_spad(block.address, block.data)
        else:
            driver.write_hbm(block.address, block.data)
    run = driver.run(max_cycles=max_cycles, timeline=timeline,
                     read_spad=[(b.address, len(b.data)) for b in case.expect if b.space == "spad"],
                     read_hbm=[(b.address, len(b.data)) for b in case.expect if b.space == "hbm"])

    failures = []
    if run.timed_out:
        failures.append(f"timed out: still running after {run.cycles} cycles on {backend}")
    for index, (result, want) in enumerate(zip(run.contexts, case.expected)):
        if result.fault != want.fault:
            detail = f" ({result.fault_detail})" if result.fault_detail else ""
            if result.fault == Fault.WATCHDOG:
                detail += f" after {run.cycles} cycles"
            failures.append(f"context {index}: fault {result.fault.name.lower()}{detail}, "
                            f"expected {want.fault.name.lower()}")
        elif want.fault_at is not None and (result.fault_pc if result.fault else None) \
                != want.fault_at:
            failures.append(f"context {index}: fault at word "
                            f"{result.fault_pc if result.fault else None}, expected word "
                            f"{want.fault_at}")
        # A wrong fault already failed: the status is news only when it does not match the
        # fault reported either.
        want_status = _final_status(want.fault)
        if result.status != want_status and (result.fault == want.fault
                                             or result.status != _final_status(result.fault)):
            failures.append(f"context {index}: status {result.status.name.lower()} with fault "
                            f"{result.fault.name.lower()}, expected "
                            f"{want_status.name.lower()}")
    for block in case.expect:
        got = (run.spad if block.space == "spad" else run.hbm)[(block.address, len(block.data))]
        mismatch = np.argwhere(got != block.data)
        if len(mismatch):
            unit = "row" if block.space == "spad" else "word"
            shown = []
            for position in mismatch[:SHOWN_MISMATCHES]:
                at = tuple(int(i) for i in position)
                where = f"{block.space} {unit} {block.address + at[0]}" + (
                    f" lane {at[1]}" if len(at) > 1 else "")
                shown.append(f"{where}: got {int(got[at])}, expected {int(block.data[at])}")
            count = f"{len(mismatch)} value{'s differ' if len(mismatch) > 1 else ' differs'}"
            if len(mismatch) > SHOWN_MISMATCHES:
                count += f", first {SHOWN_MISMATCHES} shown"
            failures.append(f"{'; '.join(shown)} ({count})")
    return CaseOutcome(not failures, failures, run)
