"""The compiler: ML operators lowered to µTOp programs, tiled to ONE engine.

Tiles are sized to one engine (one systolic array, one vector engine, one DMA engine),
never to the number of engines: independent µTOps carry no dependency on each other, so
the dispatcher spreads them over however many engines the vNPU has, or harvests.

Dependencies are listed only within the dependency window: a µTOp ``dep_window`` or more
positions back is already ordered by the window rule (isa/SPEC.md).
"""

from dataclasses import dataclass, field

from isa.asm import assemble_program

__all__ = ["CompileError", "MatmulPlan", "Program", "compile_matmul", "row_spans"]


class CompileError(ValueError):
    """The operator cannot be compiled for this vNPU; the message names the limit."""


@dataclass
class _UTop:
    engine: str                 # "me", "ve", "dma"
    body: list
    name: str
    deps: list = field(default_factory=list)   # names of producers
    eoo: bool = False


@dataclass
class Program:
    """Assembly, words, and µTOp count of a compiled program."""
    source: str
    words: list
    n_utops: int


@dataclass
class MatmulPlan:
    """Where a matmul lives: HBM word addresses (segment-relative) and scratchpad use."""
    m: int
    k: int
    n: int
    a_addr: int
    b_addr: int
    c_addr: int
    spad_rows: int              # rows of scratchpad the program uses
    program: Program
    requantized: bool


def _emit(utops, config):
    """Assembly for µTOps in order, with dependencies by distance (within the window)."""
    index = {u.name: i for i, u in enumerate(utops)}
    lines = []
    for i, u in enumerate(utops):
        distances = sorted({i - index[d] for d in u.deps if 0 < i - index[d] <= config.dep_window})
        flags = []
        if distances:
            flags.append("deps(" + ", ".join(f"-{d}" for d in distances) + ")")
        if u.eoo:
            flags.append("eoo")
        if i == len(utops) - 1:
            flags.append("eop")
        lines.append(f".{u.engine} {' '.join(flags)}".rstrip() + f"    # {u.name}")
        lines += [f"    {instr}" for instr in u.body]
    source = "\n".join(lines) + "\n"
    return Program(source, assemble_program(source, source="<compiled>",
                                            dep_window=config.dep_window).words, len(utops))


def row_spans(count, most=256):
    """(offset, size) pieces of a row range: one instruction moves at most ``most`` rows."""
    return [(first, min(most, count - first)) for first in range(0, count, most)]


def _ceil(a, b):
    return -(-a // b)


def compile_matmul(config, m, k, n, *, a_addr=0, b_addr=None, c_addr=None, spad_rows=None,
                   requant=None, row_block=None):
    """C (m x n) = A (m x k) @ B (k x n), int8 inputs, int32 (or requantized int8) output.

    A, B and C are row-major in HBM at the given segment-relative word addresses. K is
    split into tiles of ``array_rows`` (the last one partial: ``ldw`` zeroes the rest), N
    into tiles of ``array_cols`` (the DMA zero-fills short rows); M needs no padding. One
    ME µTOp computes a block of ``row_block`` output rows of one column tile over all K
    tiles (accumulating), so the blocks of a column tile run on any free MEs at once.
    With ``requant=(mult, shift, zp)`` a VE µTOp per column tile requantizes to int8.
    """
    for name, value in (("m", m), ("k", k), ("n", n)):
        if not isinstance(value, int) or value < 1:
            raise CompileError(f"matmul dimension {name} must be a positive integer, not {value!r}")
    kt_size, nt_size, lanes = config.array_rows, config.array_cols, config.ve_lanes
    k_tiles, n_tiles = _ceil(k, kt_size), _ceil(n, nt_size)
    if 2 * k_tiles > config.max_body:
        raise CompileError(f"k = {k} needs {k_tiles} weight tiles; one ME µTOp holds at most "
                           f"{config.max_body // 2} (max_body {config.max_body})")
    b_addr = m * k if b_addr is None else b_addr
    c_addr = b_addr + k * n if c_addr is None else c_addr
    row_block = row_block or min(m, 64)

    # Scratchpad layout: A's K-slices, B's tiles, C's column tiles (int32), then int8 C.
    a_row = lambda kt: kt * m
    b_base = k_tiles * m
    b_row = lambda kt, ct: b_base + (ct * k_tiles + kt) * kt_size
    c_base = b_base + n_tiles * k_tiles * kt_size
    c_row = lambda ct: c_base + ct * m
    q_base = c_base + n_tiles * m
    used = q_base + (n_tiles * m if requant else 0)
    limit = config.spad_rows if spad_rows is None else spad_rows
    if used > limit:
        raise CompileError(f"matmul {m}x{k}x{n} needs {used} scratchpad rows; the vNPU has "
                           f"{limit}")

    utops = []
    # Load A, one K-slice per µTOp (each DMA µTOp is one engine's work).
    for kt in range(k_tiles):
        width = min(kt_size, k - kt * kt_size)
        body = [f"dcfg {width}, {k}, 1"]
        body += [f"dload {a_row(kt) + r}, {a_addr + r * k + kt * kt_size}, {count}"
                 for r, count in row_spans(m)]
        utops.append(_UTop("dma", body, f"load_a{kt}"))
    for ct in range(n_tiles):
        width = min(nt_size, n - ct * nt_size)
        body = [f"dcfg {width}, {n}, 1"]
        for kt in range(k_tiles):
            rows = min(kt_size, k - kt * kt_size)
            body.append(f"dload {b_row(kt, ct)}, {b_addr + kt * kt_size * n + ct * nt_size}, {rows}")
        utops.append(_UTop("dma", body, f"load_b{ct}"))
        blocks = []
        for first, count in row_spans(m, row_block):
            body = []
            for kt in range(k_tiles):
                rows = min(kt_size, k - kt * kt_size)
                body += [f"ldw {b_row(kt, ct)}, {rows}",
                         f"mm {c_row(ct) + first}, {a_row(kt) + first}, {count}"
                         + (", acc" if kt else "")]
            name = f"mm{ct}_{first}"
            utops.append(_UTop("me", body, name,
                               deps=[f"load_b{ct}"] + [f"load_a{kt}" for kt in range(k_tiles)]))
            blocks.append(name)
        source_rows, producers = c_row(ct), blocks
        if requant:
            mult, shift, zp = requant
            body = [f"vsetq {mult}, {shift}, {zp}"]
            body += [f"vrq {q_base + ct * m + r}, {c_row(ct) + r}, {count}"
                     for r, count in row_spans(m)]
            utops.append(_UTop("ve", body, f"rq{ct}", deps=blocks))
            source_rows, producers = q_base + ct * m, [f"rq{ct}"]
        body = [f"dcfg {width}, {n}, 1"]
        body += [f"dstore {c_addr + r * n + ct * nt_size}, {source_rows + r}, {count}"
                 for r, count in row_spans(m)]
        utops.append(_UTop("dma", body, f"store{ct}", deps=producers, eoo=ct == n_tiles - 1))
    for u in utops:
        if len(u.body) > config.max_body:
            raise CompileError(f"µTOp {u.name} has {len(u.body)} instructions; max_body is "
                               f"{config.max_body}")
    program = _emit(utops, config)
    if len(program.words) > config.imem_words:
        raise CompileError(f"matmul {m}x{k}x{n} compiles to {len(program.words)} words; the "
                           f"instruction memory holds {config.imem_words}")
    return MatmulPlan(m, k, n, a_addr, b_addr, c_addr, used, program, bool(requant))
