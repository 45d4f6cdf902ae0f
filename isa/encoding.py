"""NeuISA encoding: µTOp headers and engine instructions, as one table every tool reads.

A program is a stream of 64-bit little-endian words. A µTOp is one header word followed
by ``length`` body words, each an instruction of the one engine type the header names.
"""

import enum
from dataclasses import dataclass, field

import numpy as np

from .config import MAX_DEP_WINDOW, VREGS

__all__ = [
    "Engine", "Fault", "Field", "InstrDef", "HeaderDef", "HEADER", "INSTRUCTIONS",
    "BY_MNEMONIC", "BY_OPCODE", "Instr", "instr", "UTop", "EncodeError", "DecodeError",
    "encode_header", "decode_header", "encode_instr", "decode_instr", "encode_program",
    "decode_program", "dma_words", "program_hbm_words", "program_from_hbm_words", "pack_int8",
    "unpack_int8",
    "WORD_BITS", "WORD_BYTES",
]

WORD_BITS = 64
WORD_BYTES = 8


class Engine(enum.IntEnum):
    """Engine types: a µTOp runs on exactly one engine of one type."""
    ME = 0   # matrix engine (systolic array)
    VE = 1   # vector engine (SIMD lanes)
    DMA = 2  # DMA engine (HBM <-> scratchpad)


class Fault(enum.IntEnum):
    """Fault codes. A fault stops the faulting context only."""
    NONE = 0
    BAD_HEADER = 1       # header magic/engine unknown, reserved bits set, deps beyond window, body too long
    ILLEGAL_OPCODE = 2   # unknown opcode, opcode of another engine type, or reserved bits set
    ILLEGAL_OPERAND = 3  # a field outside the range the configuration allows
    UNLOADED_STATE = 4   # engine state (weights, lookup table) used before this µTOp loaded it
    SPAD_OOB = 5         # scratchpad access outside the context's segment
    HBM_OOB = 6          # HBM access outside the context's segment
    FETCH_OOB = 7        # a µTOp header or body lies past the end of the program
    WATCHDOG = 8         # an engine or the whole NPU made no progress for watchdog_cycles (hardware only)
    CONFIG = 9           # START found the context's settings invalid (hardware only)


FAULT_DOCS = {
    Fault.NONE: "No fault.",
    Fault.BAD_HEADER: "The header's magic byte names no engine type, a reserved header bit "
                      "is set, a dependency bit at or beyond the configured `dep_window` is "
                      "set, or the body length exceeds the configured `max_body`.",
    Fault.ILLEGAL_OPCODE: "A body word's opcode is not defined, belongs to another engine "
                          "type than the header's, or has a reserved bit set.",
    Fault.ILLEGAL_OPERAND: "A field holds a value outside the range the configuration allows "
                           "(see each instruction), or a `loop` or `mmloop` is malformed.",
    Fault.UNLOADED_STATE: "`mm` before any `ldw` in the same µTOp, or `vlut` before any "
                          "`vldlut` in the same µTOp. Engine state does not survive from one "
                          "µTOp to the next: a µTOp may run on any engine of its type.",
    Fault.SPAD_OOB: "A scratchpad row address (after loop offsets) is negative or at or "
                    "beyond the context's scratchpad segment size.",
    Fault.HBM_OOB: "An HBM word address (including a gathered index) falls outside the "
                   "context's HBM segment.",
    Fault.FETCH_OOB: "A µTOp header or body word lies at or past the end of the context's "
                     "program (a program must end with an `eop` µTOp).",
    Fault.WATCHDOG: "An engine running one of the context's µTOps made no progress (no "
                    "instruction consumed, no memory request granted or answered) for "
                    "`watchdog_cycles` cycles: that engine is reset and only its context "
                    "faults, with FAULT_PC at the stuck µTOp. Or no engine was busy and no "
                    "context fetched, issued or retired a µTOp for `watchdog_cycles` cycles "
                    "while some ran (e.g. a context under `static` that owns no engine of a "
                    "type it needs): every running context faults. A long µTOp that makes "
                    "progress never trips it, and a context that waits for an engine "
                    "another context is using never does either. Raised by the hardware "
                    "only; the golden model does not model time.",
    Fault.CONFIG: "START found the context's settings invalid: a scratchpad or HBM segment "
                  "runs past the end of its memory, the program (PROG_BASE, 2 x PROG_LEN "
                  "HBM words) runs past the end of HBM, or PROG_BASE is not a multiple of "
                  "the HBM line's words. The "
                  "context does not run; FAULT_PC is 0. Raised by the hardware only (the "
                  "driver and the golden model refuse such settings before a run).",
}


@dataclass(frozen=True)
class Field:
    """One field of an encoded word.

    ``bias`` is added on decode and subtracted on encode: a count field with bias 1 holds
    count-1, so 8 bits express counts 1..256. ``role`` marks scratchpad row operands
    ("dst" or "src"): inside a vector-engine ``loop``, they advance by the loop's
    destination or source stride.
    """
    name: str
    lsb: int
    width: int
    doc: str
    signed: bool = False
    bias: int = 0
    role: str | None = None
    flag: bool = False

    @property
    def msb(self):
        return self.lsb + self.width - 1

    @property
    def mask(self):
        return ((1 << self.width) - 1) << self.lsb

    @property
    def min(self):
        return (-(1 << (self.width - 1)) if self.signed else 0) + self.bias

    @property
    def max(self):
        return ((1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1) + self.bias

    def encode(self, value):
        if not self.min <= value <= self.max:
            raise EncodeError(f"{self.name} = {value} is out of range {self.min}..{self.max}")
        return ((value - self.bias) & ((1 << self.width) - 1)) << self.lsb

    def decode(self, word):
        raw = (word >> self.lsb) & ((1 << self.width) - 1)
        if self.signed and raw >> (self.width - 1):
            raw -= 1 << self.width
        return raw + self.bias


@dataclass(frozen=True)
class InstrDef:
    """One instruction of one engine type."""
    mnemonic: str
    engine: Engine
    opcode: int
    fields: tuple
    summary: str
    semantics: str
    faults: tuple = ()

    @property
    def reserved_mask(self):
        used = 0xFF
        for f in self.fields:
            used |= f.mask
        return ((1 << WORD_BITS) - 1) & ~used

    def field(self, name):
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


@dataclass(frozen=True)
class HeaderDef:
    """The µTOp header word."""
    magic: dict
    fields: tuple

    @property
    def reserved_mask(self):
        used = 0xFF
        for f in self.fields:
            used |= f.mask
        return ((1 << WORD_BITS) - 1) & ~used


class EncodeError(ValueError):
    """A value cannot be encoded; the message names the field, the value and the range."""


class DecodeError(ValueError):
    """A word cannot be decoded; ``fault`` is the fault the hardware raises for it."""

    def __init__(self, message, fault):
        super().__init__(message)
        self.fault = fault


# --- Header ---------------------------------------------------------------------------------

HEADER = HeaderDef(
    magic={Engine.ME: 0xA0, Engine.VE: 0xA1, Engine.DMA: 0xA2},
    fields=(
        Field("eoo", 8, 1, "end of operator: the last µTOp of an ML operator (used by the "
                           "`v10` policy to gang-issue operators)", flag=True),
        Field("eop", 9, 1, "end of program: the context is done once this µTOp and all "
                           "earlier ones have retired", flag=True),
        Field("restartable", 11, 1, "running this µTOp again from its start, after a partial "
                                    "run, gives the same result (it reads no location before "
                                    "writing it that it also writes). Under `harvest` only "
                                    "restartable µTOps run on borrowed engines, and the owner "
                                    "takes its engine back at once by restarting them later",
              flag=True),
        Field("length", 16, 8, "number of body words that follow (0..`max_body`)"),
        Field("deps", 24, MAX_DEP_WINDOW, "dependency mask: bit j set means this µTOp waits "
                                          "until the µTOp j+1 positions earlier in the same "
                                          "context has retired"),
        Field("tag", 40, 16, "free for the compiler (operator id); the hardware only "
                             "reports it in traces"),
    ),
)


# --- Instructions ---------------------------------------------------------------------------

def _row(name, lsb, role, doc=None):
    return Field(name, lsb, 16, doc or f"scratchpad row ({'destination' if role == 'dst' else 'source'})",
                 role=role)


def _count(name, lsb, width, doc):
    return Field(name, lsb, width, doc, bias=1)


_N = _count("n", 56, 8, "rows to process, 1..256")

_ALU_OPS = [
    # name, summary, expression on int32 lanes (wrapping), reference numpy-like formula
    ("add", "add", "a + b (wraps modulo 2^32)"),
    ("sub", "subtract", "a - b (wraps modulo 2^32)"),
    ("mul", "multiply", "low 32 bits of a * b"),
    ("min", "minimum", "min(a, b), signed"),
    ("max", "maximum", "max(a, b), signed"),
    ("shl", "shift left", "a << (b & 31), low 32 bits"),
    ("sra", "arithmetic shift right", "a >> (b & 31), sign-filling"),
    ("srl", "logical shift right", "a >>> (b & 31), zero-filling"),
]

_ALU_FORMS = [
    # mnemonic suffix, operand-b field, operand b in lane l of row i, short description
    ("", _row("b", 40, "src", "scratchpad row of operand b (source)"), "row(b + i)[l]", "b a row"),
    ("r", Field("vb", 40, 3, f"vector register holding operand b (0..{VREGS - 1})"), "V[vb][l]",
     "b a vector register"),
    ("i", Field("imm", 40, 16, "signed immediate operand b, broadcast to all lanes", signed=True),
     "imm", "b an immediate"),
]


def _build_instructions():
    defs = []

    def add(mnemonic, engine, opcode, fields, summary, semantics, faults=()):
        defs.append(InstrDef(mnemonic, engine, opcode, tuple(fields), summary, semantics,
                             tuple(faults)))

    # Matrix engine ------------------------------------------------------------------------
    add("ldw", Engine.ME, 0x01,
        [_row("src", 24, "src"),
         Field("k", 40, 16, "rows to load: weight rows, 1..`array_rows`; with `t`, weight "
               "columns, 1..`array_cols`"),
         Field("t", 56, 1, "transposed: row src + c becomes weight column c", flag=True)],
        "load a weight tile",
        "For r < `array_rows`, c < `array_cols`: W[r][c] = int8(row(src + r)[c]) if r < k, "
        "else 0; with `t`, W[r][c] = int8(row(src + c)[r]) if c < k, else 0 (so "
        "`mm` computes x @ B^T from the rows of B as they are, as attention's Q K^T "
        "needs). int8(x) takes the low 8 bits of x as a two's complement byte. W becomes "
        "the weight tile of the following `mm` instructions of this µTOp (the hardware "
        "double-buffers it: the load overlaps the previous `mm`; an `ldw` that reads rows "
        "written by an earlier `mm` of the same µTOp gives undefined weights).",
        [Fault.ILLEGAL_OPERAND, Fault.SPAD_OOB])
    add("mm", Engine.ME, 0x02,
        [_row("dst", 8, "dst"), _row("src", 24, "src"),
         _count("m", 40, 16, "input rows to stream, 1..65536"),
         Field("acc", 56, 1, "accumulate into dst instead of overwriting it", flag=True)],
        "stream rows through the systolic array",
        "For i < m, c < `array_cols`: y = sum over r < `array_rows` of "
        "int8(row(src + i)[r]) * W[r][c], exact in int32 (it cannot overflow for "
        "array_rows < 2^17). If acc: row(dst + i)[c] = row(dst + i)[c] + y, wrapping "
        "modulo 2^32; else row(dst + i)[c] = y. Lanes c >= `array_cols` are unchanged. "
        "Undefined if rows dst..dst+m-1 overlap rows src..src+m-1.",
        [Fault.UNLOADED_STATE, Fault.SPAD_OOB])

    add("mmloop", Engine.ME, 0x03,
        [_count("count", 8, 16, "iterations, 1..65536"),
         Field("w_stride", 24, 16, "added to the `ldw` source row per iteration", signed=True),
         Field("x_stride", 40, 16, "added to the `mm` source row per iteration", signed=True)],
        "repeat the next ldw and mm (a K loop)",
        "The next two instructions must be an `ldw` and an `mm`; they run count times. In "
        "iteration t (from 0), the `ldw` reads from src + t * w_stride and the `mm` from "
        "src + t * x_stride, and the `mm` accumulates (as with `acc`) when t >= 1: "
        "dst = sum over t of x_t @ W_t (plus dst's old value with `acc`), the tile loop of "
        "a weight-stationary GEMM over K in three words. Execution then continues after "
        "the `mm`. The pair must lie inside the µTOp body (else ILLEGAL_OPERAND at the "
        "`mmloop`); a word of the pair that is not the `ldw` or the `mm` it must be faults "
        "ILLEGAL_OPERAND. Each iteration's instructions fault as written with their offset "
        "rows; the iterations before a fault have taken effect.",
        [Fault.ILLEGAL_OPERAND])

    # Vector engine: ALU --------------------------------------------------------------------
    opcode = 0x10
    for name, summary, expr in _ALU_OPS:
        for suffix, b_field, b_expr, b_text in _ALU_FORMS:
            for sat in (False, True):
                mnemonic = f"v{name}{suffix}" + (".s8" if sat else "")
                add(mnemonic, Engine.VE, opcode,
                    [_row("dst", 8, "dst"), _row("a", 24, "src", "scratchpad row of operand a (source)"),
                     b_field, _N],
                    f"{summary}, {b_text}" + (", int8 saturation" if sat else ""),
                    f"For i < n, lanes l < vl: row(dst + i)[l] = {expr}"
                    + (", then clamped to int8 [-128, 127]" if sat else "")
                    + f", with a = row(a + i)[l] and b = {b_expr}.",
                    [Fault.SPAD_OOB])
                opcode += 1
    assert opcode <= 0x40

    # Vector engine: the rest ---------------------------------------------------------------
    src_dst_n = lambda: [_row("dst", 8, "dst"), _row("src", 24, "src"), _N]
    add("vsetq", Engine.VE, 0x40,
        [Field("mult", 8, 32, "fixed-point multiplier", signed=True),
         Field("shift", 40, 6, "rounding right shift, 0..63"),
         Field("zp", 46, 8, "output zero point", signed=True),
         Field("even", 54, 1, "exact halves round to even (as ONNX's QuantizeLinear) instead "
                              "of up", flag=True),
         Field("wide", 55, 1, "results saturate to int32 instead of int8 (an intermediate "
                              "with fractional bits, e.g. before a per-lane bias)", flag=True)],
        "set requantization parameters",
        "Sets the parameters of `vrq` (and the shift, zp, rounding and width of `vrqr`, which "
        "takes its multipliers from a vector register). At the start of every µTOp they are "
        "mult = 1, shift = 0, zp = 0, even = 0, wide = 0.")
    add("vrq", Engine.VE, 0x41, src_dst_n(),
        "requantize int32 to int8",
        "For i < n, lanes l < vl: with x = row(src + i)[l], p = x * mult computed exactly "
        "(64 bits), r = p if shift == 0 else (p + 2^(shift-1)) >> shift computed exactly "
        "(65 bits; arithmetic shift: ties round towards +infinity); with `vsetq`'s even "
        "flag, a tie (shift > 0 and p mod 2^shift = 2^(shift-1)) whose r is odd gives r - 1 "
        "instead (ties round to even); row(dst + i)[l] = clamp(r + zp, -128, 127), or with "
        "the wide flag clamp(r + zp, -2^31, 2^31 - 1).",
        [Fault.SPAD_OOB])
    add("vrqr", Engine.VE, 0x50,
        [_row("dst", 8, "dst"), _row("src", 24, "src"),
         Field("vb", 40, 3, f"vector register holding each lane's multiplier (0..{VREGS - 1})"),
         _N],
        "requantize int32 to int8, a multiplier per lane",
        "As `vrq`, with lane l's multiplier V[vb][l] in place of mult (a scale per output "
        "channel: per-channel quantized weights); shift, zp and the even and wide flags are "
        "those of `vsetq`.",
        [Fault.SPAD_OOB])
    add("vldlut", Engine.VE, 0x42, [_row("src", 24, "src")],
        "load the lookup table",
        "LUT[j] = row(src + j / ve_lanes)[j % ve_lanes] for j < 256 (256 / `ve_lanes` rows). "
        "The table lives in the engine only for the rest of this µTOp.",
        [Fault.SPAD_OOB])
    add("vlut", Engine.VE, 0x43, src_dst_n(),
        "table lookup (nonlinear functions)",
        "For i < n, lanes l < vl: row(dst + i)[l] = LUT[clamp(row(src + i)[l], -128, 127) + 128].",
        [Fault.UNLOADED_STATE, Fault.SPAD_OOB])
    add("vld", Engine.VE, 0x44,
        [Field("vd", 40, 3, f"destination vector register (0..{VREGS - 1})"),
         _row("src", 24, "src")],
        "load a vector register",
        "For lanes l < vl: V[vd][l] = row(src)[l]. Vector registers are 0 at the start of "
        "every µTOp.",
        [Fault.SPAD_OOB])
    add("vst", Engine.VE, 0x45,
        [_row("dst", 8, "dst"),
         Field("vs", 40, 3, f"source vector register (0..{VREGS - 1})")],
        "store a vector register",
        "For lanes l < vl: row(dst)[l] = V[vs][l].",
        [Fault.SPAD_OOB])
    add("vsetvl", Engine.VE, 0x46,
        [Field("vl", 8, 16, "active lanes, 1..`ve_lanes`")],
        "set the active vector length",
        "Sets vl, the number of active lanes: VE instructions write lanes l < vl only and "
        "lane reductions read lanes l < vl only. vl is `ve_lanes` at the start of every µTOp.",
        [Fault.ILLEGAL_OPERAND])
    for opcode, (name, op) in enumerate([("sum", "wrapping sum"), ("max", "maximum"),
                                         ("min", "minimum")], start=0x47):
        add(f"vr{name}", Engine.VE, opcode,
            [_row("dst", 8, "dst"), _row("src", 24, "src"),
             Field("stride", 40, 16, "row distance between reduced rows"), _N],
            f"reduce across rows ({op})",
            f"For lanes l < vl: row(dst)[l] = {op} over i < n of row(src + i * stride)[l].",
            [Fault.SPAD_OOB])
    for opcode, (name, op) in enumerate([("sum", "wrapping sum"), ("max", "maximum"),
                                         ("min", "minimum")], start=0x4A):
        add(f"vl{name}", Engine.VE, opcode, src_dst_n(),
            f"reduce across lanes ({op}), broadcast",
            f"For i < n: s = {op} over lanes l < vl of row(src + i)[l]; row(dst + i)[l] = s "
            f"for lanes l < vl.",
            [Fault.SPAD_OOB])
    for opcode, (name, op) in enumerate([("max", "maximum"), ("sum", "wrapping sum")], start=0x4D):
        add(f"vpool{name}", Engine.VE, opcode,
            [_row("dst", 8, "dst"), _row("src", 24, "src"),
             Field("pitch", 40, 16, "rows between two lines of the window (the image width)"),
             _count("kh", 56, 4, "window height, 1..16"),
             _count("kw", 60, 4, "window width, 1..16")],
            f"2-D window pooling ({op})",
            f"For lanes l < vl: row(dst)[l] = {op} over dy < kh, dx < kw of "
            f"row(src + dy * pitch + dx)[l].",
            [Fault.SPAD_OOB])
    add("loop", Engine.VE, 0x4F,
        [_count("count", 8, 16, "iterations, 1..65536"),
         Field("len", 24, 8, "instructions in the loop body, 1..255 (the assembler accepts a "
                             "label placed after the body)"),
         Field("dst_stride", 32, 16, "added to destination rows per iteration", signed=True),
         Field("src_stride", 48, 16, "added to source rows per iteration", signed=True)],
        "repeat the next instructions",
        "Runs the next len instructions count times. In iteration t (from 0), every "
        "destination row operand of those instructions is offset by t * dst_stride and every "
        "source row operand by t * src_stride. Execution then continues after the loop body. "
        "The body must lie inside the µTOp body and contain no `loop`; len must be >= 1.",
        [Fault.ILLEGAL_OPERAND])

    # DMA engine ----------------------------------------------------------------------------
    add("dcfg", Engine.DMA, 0x80,
        [Field("len", 8, 15, "elements per row, 1..`ve_lanes`"),
         Field("i8", 23, 1, "HBM holds int8 elements packed four per word", flag=True),
         Field("hstride", 24, 24, "HBM words between two rows"),
         Field("sstride", 48, 16, "scratchpad rows between two rows")],
        "set the copy shape",
        "Sets len, i8, hstride and sstride for the following copies. At the start of every "
        "µTOp: len = `ve_lanes`, i8 = 0, hstride = `ve_lanes`, sstride = 1. A row of a copy "
        "spans w = len HBM words, or w = ceil(len / 4) with i8. With i8, element l of a row "
        "that starts at HBM word h is byte l % 4 (little-endian: bits 8 * (l % 4) up) of "
        "word h + l / 4: E(h, l) = that byte as a two's complement int8; without i8, "
        "E(h, l) = HBM[h + l].",
        [Fault.ILLEGAL_OPERAND])
    add("dload", Engine.DMA, 0x81,
        [_row("dst", 8, "dst"), Field("hbm", 24, 32, "HBM word address (source)"),
         _count("rows", 56, 8, "rows to copy, 1..256")],
        "copy HBM to the scratchpad (strided)",
        "For i < rows, in order: row(dst + i * sstride)[l] = E(hbm + i * hstride, l) for "
        "l < len, and 0 for len <= l < `ve_lanes`.",
        [Fault.SPAD_OOB, Fault.HBM_OOB])
    add("dstore", Engine.DMA, 0x82,
        [Field("hbm", 24, 32, "HBM word address (destination)"), _row("src", 8, "src"),
         _count("rows", 56, 8, "rows to copy, 1..256")],
        "copy the scratchpad to HBM (strided)",
        "For i < rows, in order, with h = hbm + i * hstride and x = row(src + i * sstride): "
        "without i8, HBM[h + l] = x[l] for l < len; with i8, for j < ceil(len / 4), "
        "HBM[h + j] = the four bytes int8(x[4j + b]) for b < 4 (little-endian), a byte of "
        "a lane at or past len being 0.",
        [Fault.SPAD_OOB, Fault.HBM_OOB])
    add("dbase", Engine.DMA, 0x83,
        [Field("hbm", 8, 32, "HBM word address of the gather table")],
        "set the gather table base",
        "Sets gbase for `dgather`. It is 0 at the start of every µTOp.")
    add("dgather", Engine.DMA, 0x84,
        [_row("dst", 8, "dst"), _row("idx", 24, "src", "scratchpad row of the first index"),
         _count("rows", 56, 8, "rows to gather, 1..256")],
        "gather table rows by index (embedding lookup)",
        "For i < rows, in order: x = row(idx + i / ve_lanes)[i % ve_lanes] (a signed index); "
        "row(dst + i * sstride)[l] = E(gbase + x * hstride, l) for l < len, and 0 for "
        "len <= l < `ve_lanes`.",
        [Fault.SPAD_OOB, Fault.HBM_OOB])
    return tuple(defs)


INSTRUCTIONS = _build_instructions()
BY_MNEMONIC = {d.mnemonic: d for d in INSTRUCTIONS}
BY_OPCODE = {d.opcode: d for d in INSTRUCTIONS}
assert len(BY_MNEMONIC) == len(INSTRUCTIONS) == len(BY_OPCODE)


# --- Programs -------------------------------------------------------------------------------

@dataclass
class Instr:
    """One body instruction: a definition and its field values (``raw`` words are kept as-is)."""
    op: InstrDef | None
    args: dict = field(default_factory=dict)
    raw: int | None = None

    def encode(self):
        if self.op is None:
            return self.raw
        return encode_instr(self.op, self.args)

    @property
    def repeats(self):
        """How many of the instructions after this one it repeats: a `loop`'s len, an
        `mmloop`'s pair (its ldw and mm); 0 for any other."""
        mnemonic = self.op.mnemonic if self.op is not None else None
        return self.args["len"] if mnemonic == "loop" else 2 if mnemonic == "mmloop" else 0


def instr(mnemonic, *operands, **flags):
    """One body instruction from its mnemonic and operands, as the assembler reads them:
    ``instr("vadd", 2, 0, 1, 4)``; flags by name (``instr("vrsum", 0, 1, 1, 8, acc=1)``).
    Raises EncodeError naming an unknown mnemonic, a missing operand or a value out of range."""
    defn = BY_MNEMONIC.get(mnemonic)
    if defn is None:
        raise EncodeError(f"unknown instruction {mnemonic!r}")
    positional = [f for f in defn.fields if not f.flag]
    if len(operands) != len(positional):
        raise EncodeError(f"{mnemonic}: {len(operands)} operands given; expected "
                          f"{', '.join(f.name for f in positional)}")
    args = {f.name: 0 for f in defn.fields if f.flag}
    for name, value in flags.items():
        if name not in args:
            raise EncodeError(f"{mnemonic}: no flag named {name!r}")
        args[name] = int(value)
    for f, value in zip(positional, operands):
        args[f.name] = int(value)
    for f in defn.fields:
        if not f.min <= args[f.name] <= f.max:
            raise EncodeError(f"{mnemonic}: operand {f.name} = {args[f.name]} is out of range "
                              f"{f.min}..{f.max}")
    return Instr(defn, args)


@dataclass
class UTop:
    """One µTOp: header fields and body. ``deps`` are distances (1 = the previous µTOp)."""
    engine: Engine
    body: list = field(default_factory=list)
    deps: tuple = ()
    eoo: bool = False
    eop: bool = False
    tag: int = 0
    restartable: bool = False


def encode_header(utop):
    for distance in utop.deps:
        if not 1 <= distance <= MAX_DEP_WINDOW:
            raise EncodeError(f"dependency distance {distance} is out of range 1..{MAX_DEP_WINDOW}")
    mask = 0
    for distance in utop.deps:
        mask |= 1 << (distance - 1)
    values = {"eoo": int(utop.eoo), "eop": int(utop.eop), "length": len(utop.body),
              "deps": mask, "tag": utop.tag, "restartable": int(utop.restartable)}
    word = HEADER.magic[Engine(utop.engine)]
    for f in HEADER.fields:
        word |= f.encode(values[f.name])
    return word


def decode_header(word, config=None):
    """Decode a header word for the NPU of ``config`` (its dep_window and max_body; without
    one, the ISA's limits); raise DecodeError(BAD_HEADER) when it is not a valid header."""
    dep_window = MAX_DEP_WINDOW if config is None else config.dep_window
    max_body = 255 if config is None else config.max_body
    magic = word & 0xFF
    engines = {v: k for k, v in HEADER.magic.items()}
    if magic not in engines:
        raise DecodeError(f"bad header: magic byte 0x{magic:02x} names no engine type",
                          Fault.BAD_HEADER)
    if word & HEADER.reserved_mask:
        raise DecodeError(f"bad header: reserved bits set (0x{word & HEADER.reserved_mask:016x})",
                          Fault.BAD_HEADER)
    values = {f.name: f.decode(word) for f in HEADER.fields}
    if values["deps"] >> dep_window:
        raise DecodeError(f"bad header: dependency mask 0x{values['deps']:04x} reaches beyond "
                          f"the window of {dep_window}", Fault.BAD_HEADER)
    if values["length"] > max_body:
        raise DecodeError(f"bad header: body length {values['length']} exceeds max_body "
                          f"{max_body}", Fault.BAD_HEADER)
    deps = tuple(j + 1 for j in range(MAX_DEP_WINDOW) if values["deps"] >> j & 1)
    return UTop(engines[magic], [], deps, bool(values["eoo"]), bool(values["eop"]),
                values["tag"], bool(values["restartable"])), values["length"]


def encode_instr(defn, args):
    word = defn.opcode
    for f in defn.fields:
        if f.name not in args:
            raise EncodeError(f"{defn.mnemonic}: missing operand {f.name}")
        try:
            word |= f.encode(args[f.name])
        except EncodeError as error:
            raise EncodeError(f"{defn.mnemonic}: {error}") from None
    extra = set(args) - {f.name for f in defn.fields}
    if extra:
        raise EncodeError(f"{defn.mnemonic}: unknown operand {sorted(extra)[0]}")
    return word


def decode_instr(word, engine):
    """Decode one body word of a µTOp for ``engine``; raise DecodeError(ILLEGAL_OPCODE)."""
    opcode = word & 0xFF
    defn = BY_OPCODE.get(opcode)
    if defn is None:
        raise DecodeError(f"illegal opcode 0x{opcode:02x}", Fault.ILLEGAL_OPCODE)
    if defn.engine != engine:
        raise DecodeError(f"opcode 0x{opcode:02x} ({defn.mnemonic}) is a {defn.engine.name} "
                          f"instruction in a {Engine(engine).name} µTOp", Fault.ILLEGAL_OPCODE)
    if word & defn.reserved_mask:
        raise DecodeError(f"{defn.mnemonic}: reserved bits set "
                          f"(0x{word & defn.reserved_mask:016x})", Fault.ILLEGAL_OPCODE)
    return Instr(defn, {f.name: f.decode(word) for f in defn.fields})


def encode_program(items):
    """Encode a list of UTop (and raw int words, emitted as they are) to a list of words."""
    words = []
    for item in items:
        if isinstance(item, int):
            words.append(item)
            continue
        words.append(encode_header(item))
        words.extend(instr.encode() for instr in item.body)
    return words


def program_hbm_words(words):
    """A program's 64-bit words as HBM holds them (isa/SPEC.md, "Where programs live"): two
    unsigned 32-bit words each, the low half first."""
    return [half for word in words for half in (int(word) & 0xFFFFFFFF, int(word) >> 32)]


def program_from_hbm_words(halves):
    """The 64-bit program words of HBM words laid out by :func:`program_hbm_words` (each
    taken modulo 2^32, so signed int32 values read back from a memory work too)."""
    halves = [int(h) & 0xFFFFFFFF for h in halves]
    return [lo | hi << 32 for lo, hi in zip(halves[0::2], halves[1::2])]


def decode_program(words):
    """Decode words to a list of UTop and raw int words, never failing on content.

    A word that is not a valid header starts a run of raw words to the end; a body word
    that is not a valid instruction is kept raw inside its µTOp. Raises DecodeError only
    when a header's body runs past the end of the words (a truncated program).
    """
    items, pc = [], 0
    while pc < len(words):
        try:
            utop, length = decode_header(words[pc])
        except DecodeError:
            items.extend(words[pc:])
            break
        if pc + 1 + length > len(words):
            raise DecodeError(f"word {pc}: µTOp body of {length} words runs past the end of the "
                              f"program ({len(words) - pc - 1} words left)", Fault.FETCH_OOB)
        for word in words[pc + 1:pc + 1 + length]:
            try:
                utop.body.append(decode_instr(word, utop.engine))
            except DecodeError:
                utop.body.append(Instr(None, raw=word))
        items.append(utop)
        pc += 1 + length
    return items


def dma_words(body, config):
    """HBM words a DMA µTOp's body copies (dload, dstore and dgather rows of w words each,
    w as isa/SPEC.md's dcfg gives it: len words, or ceil(len / 4) with i8; len = ve_lanes
    until the body's first dcfg). Instructions that do not decode move nothing."""
    length, packed, words = config.ve_lanes, False, 0
    for instruction in body:
        name = instruction.op.mnemonic if instruction.op is not None else None
        if name == "dcfg":
            length, packed = instruction.args["len"], bool(instruction.args["i8"])
        elif name in ("dload", "dstore", "dgather"):
            words += instruction.args["rows"] * ((length + 3) // 4 if packed else length)
    return words


def pack_int8(values):
    """int8(values) packed four per 32-bit HBM word, little-endian, the last word padded
    with zero bytes: the layout of `dcfg ... i8` copies. Words as int32 values."""
    x = np.asarray(values, np.int64).reshape(-1) & 0xFF
    x = np.concatenate([x, np.zeros(-len(x) % 4, np.int64)]).reshape(-1, 4)
    words = (x << np.array([0, 8, 16, 24])).sum(axis=1)
    return words - ((words >> 31) << 32)


def unpack_int8(words):
    """The int8 values of packed HBM words (four per word, little-endian), sign-extended."""
    w = np.asarray(words, np.int64).reshape(-1, 1) & 0xFFFFFFFF
    x = (w >> np.array([0, 8, 16, 24])) & 0xFF
    return (x - ((x & 0x80) << 1)).reshape(-1)
