"""ISA conformance cases: one TOML file each, run on any backend and checked against what it expects.

A case file::

    description = "vadd adds rows lane by lane"
    config = "tiny"                  # a preset, or a table: [config] preset = "tiny", ve_lanes = 8

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
    context = 0                      # optional: addresses relative to that context's segment
    spad = 0                         # first row; a list of rows follows (short rows are 0-padded)
    data = [[1, 2, 3, 4], [10, 20, 30, 40]]

    [[expect]]                       # expected memory, same form; hbm = WORD takes a flat list
    context = 0
    spad = 2
    data = [[11, 22, 33, 44]]
"""

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hw.config import ConfigError, NPUConfig
from isa.asm import AsmError, assemble_program
from isa.encoding import Fault
from isa.golden import ContextSpec, GoldenNPU, Segment

__all__ = ["CaseError", "Case", "load_case", "run_case", "default_case_paths", "BACKENDS",
           "BackendUnavailable", "CaseOutcome"]

#: Backends a case can run on; only "golden" exists until the RTL lands.
BACKENDS = ("golden", "pysim", "verilator")
CASE_DIR = Path(__file__).resolve().parent.parent / "sim_tests" / "conformance"


def _run_on_rtl(case, backend, policy, max_cycles, vcd):
    """Run on an RTL backend through the driver; per-context results, a reader, the run."""
    from .driver import Driver, DriverError
    try:
        driver = Driver(case.config, backend, **({"vcd": vcd} if vcd else {}))
    except DriverError as error:
        raise BackendUnavailable(str(error)) from None
    driver.set_policy(policy)
    for c, (spec, (me_mask, ve_mask)) in enumerate(zip(
            case.contexts, ownership_masks(case.config, len(case.contexts)))):
        driver.load_context(c, spec.program, spec.spad, spec.hbm, me_mask=me_mask,
                            ve_mask=ve_mask)
    for block in case.init:
        if block.space == "spad":
            driver.write_spad(block.address, block.data)
        else:
            driver.write_hbm(block.address, block.data)
    run = driver.run(max_cycles=max_cycles,
                     read_spad=[(b.address, len(b.data)) for b in case.expect if b.space == "spad"],
                     read_hbm=[(b.address, len(b.data)) for b in case.expect if b.space == "hbm"])
    if run.timed_out:
        raise CaseError(f"{case.path}: still running after {max_cycles} cycles on {backend}")
    results = [_RTLContext(r.fault, r.fault_pc if r.fault else None) for r in run.contexts]
    return results, lambda block: (run.spad if block.space == "spad" else run.hbm)[
        (block.address, len(block.data))], run


@dataclass
class _RTLContext:
    fault: Fault
    fault_pc: int | None


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
    run: object = None        # the driver's RunResult, on RTL backends


def default_case_paths():
    return sorted(CASE_DIR.glob("*.toml"))


def load_case(path):
    path = Path(path)

    def fail(message):
        raise CaseError(f"{path}: {message}")

    try:
        raw = tomllib.loads(path.read_text())
    except OSError as error:
        fail(f"cannot read case: {error.strerror}")
    except tomllib.TOMLDecodeError as error:
        fail(f"malformed TOML: {error}")
    known = {"description", "config", "context", "init", "expect"}
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

    raw_contexts = raw.get("context")
    if not isinstance(raw_contexts, list) or not raw_contexts:
        fail("needs at least one [[context]] table")
    contexts, expected = [], []
    for index, entry in enumerate(raw_contexts):
        where = f"context {index}"
        for key in entry:
            if key not in ("spad", "hbm", "program", "fault", "fault_at"):
                fail(f"{where}: unknown key {key!r}; expected spad, hbm, program, fault, fault_at")
        segments = []
        for name in ("spad", "hbm"):
            value = entry.get(name)
            if not (isinstance(value, list) and len(value) == 2
                    and all(isinstance(v, int) and v >= 0 for v in value)):
                fail(f"{where}: {name} must be [base, size] with non-negative integers, "
                     f"not {value!r}")
            segments.append(Segment(*value))
        program = entry.get("program")
        if not isinstance(program, str):
            fail(f"{where}: program must be a string of assembly")
        try:
            assembly = assemble_program(program, source=f"{path} [{where}]",
                                        dep_window=config.dep_window)
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
        elif fault_at is not None and not isinstance(fault_at, int):
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
            spaces = [s for s in ("spad", "hbm") if s in entry]
            if len(spaces) != 1:
                fail(f"{where}: needs exactly one of spad = ROW or hbm = WORD")
            space = spaces[0]
            context = entry.get("context")
            address = entry[space]
            if not isinstance(address, int) or address < 0:
                fail(f"{where}: {space} must be a non-negative integer, not {address!r}")
            if context is not None:
                if not isinstance(context, int) or not 0 <= context < len(contexts):
                    fail(f"{where}: context {context!r} is not one of the case's "
                         f"{len(contexts)} contexts")
                address += getattr(contexts[context], space).base
            data = entry.get("data")
            rows_given = space == "spad"
            if not (isinstance(data, list) and all(
                    isinstance(v, list) and all(isinstance(x, int) for x in v) if rows_given
                    else isinstance(v, int) for v in data)):
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
            if address + len(array) > limit:
                fail(f"{where}: {len(array)} {'rows' if space == 'spad' else 'words'} at "
                     f"{address} run past the end of {space} ({limit})")
            result.append(MemoryBlock(space, address, array, context))
        return result

    for key in ("init", "expect"):
        if not isinstance(raw.get(key, []), list):
            fail(f"{key} must be an array of tables ([[{key}]])")
    return Case(path.stem, path, str(raw.get("description", "")), config, contexts, expected,
                blocks("init"), blocks("expect"))


def ownership_masks(config, n_contexts):
    """Context c owns ME (c mod n_me) and VE (c mod n_ve): every context owns one engine of
    each type (so the static policy can run it); with more contexts than engines, engines
    are shared (oversubscribed)."""
    return [(1 << (c % config.n_me), 1 << (c % config.n_ve)) for c in range(n_contexts)]


def run_case(case, backend="golden", policy="harvest", max_cycles=50_000, vcd=None):
    """Run a case on a backend; return a CaseOutcome listing every mismatch."""
    run = None
    if backend == "golden":
        npu = GoldenNPU(case.config)
        for block in case.init:
            memory = npu.spad if block.space == "spad" else npu.hbm
            memory[block.address:block.address + len(block.data)] = block.data
        results = npu.run(case.contexts)
        read = lambda block: (npu.spad if block.space == "spad" else npu.hbm)[
            block.address:block.address + len(block.data)]
    elif backend in BACKENDS:
        results, read, run = _run_on_rtl(case, backend, policy, max_cycles, vcd)
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")

    failures = []
    for index, (result, want) in enumerate(zip(results, case.expected)):
        if result.fault != want.fault:
            detail = f" ({result.fault_detail})" if getattr(result, "fault_detail", "") else ""
            failures.append(f"context {index}: fault {result.fault.name.lower()}{detail}, "
                            f"expected {want.fault.name.lower()}")
        elif want.fault_at is not None and result.fault_pc != want.fault_at:
            failures.append(f"context {index}: fault at word {result.fault_pc}, expected word "
                            f"{want.fault_at}")
    for block in case.expect:
        got = read(block)
        mismatch = np.argwhere(got != block.data)
        if len(mismatch):
            first = tuple(int(i) for i in mismatch[0])
            unit = "row" if block.space == "spad" else "word"
            where = f"{block.space} {unit} {block.address + first[0]}" + (
                f" lane {first[1]}" if len(first) > 1 else "")
            failures.append(f"{where}: got {int(got[first])}, expected {int(block.data[first])} "
                            f"({len(mismatch)} value{'s' if len(mismatch) > 1 else ''} differ)")
    return CaseOutcome(not failures, failures, run)
