"""Golden model: executes NeuISA programs in numpy and defines the bit-exact results.

It models what a program computes, not when: each context runs its µTOps in program
order (a valid schedule of any dispatcher, since dependencies only point backwards), and
contexts run one after another (their segments are disjoint, so order cannot matter).
"""

import re
from dataclasses import dataclass, field, replace

import numpy as np

from .config import LUT_ENTRIES, VREGS, NPUConfig
from .encoding import (DecodeError, Engine, Fault, decode_header, decode_instr, pack_int8,
                       unpack_int8)

__all__ = ["Segment", "ContextSpec", "ContextOutcome", "GoldenNPU", "ProgramFault", "Race",
           "RestartHazard", "loop_operands", "requantize", "wrap32"]

_INT32 = np.int32
_ALU = re.compile(r"^v(add|sub|mul|min|max|shl|sra|srl)(r|i)?(\.s8)?$")


def wrap32(values):
    """Wrap integers modulo 2^32 into int32 (two's complement)."""
    return np.asarray(values, dtype=np.int64).astype(_INT32)


def requantize(x, mult, shift, zp, even=False, wide=False):
    """The exact `vrq` rule: (x * mult) rounded-shifted right, plus zp, saturated to int8,
    or with ``wide`` to int32 (``mult`` one multiplier, or one per lane as `vrqr` takes
    them); exact halves round up, or with ``even`` to even."""
    product = np.asarray(x, dtype=np.int64) * np.asarray(mult, dtype=np.int64)  # exact: <= 2^62
    if shift:
        # (p + 2^(s-1)) >> s without overflow: halve p >> (s-1), rounding the half up.
        half = product >> np.int64(shift - 1)
        rounded = (half + 1) >> np.int64(1)
        if even:     # a tie: p's low shift bits are exactly 2^(shift-1)
            tie = (half & 1).astype(bool) & (product & np.int64((1 << (shift - 1)) - 1) == 0)
            rounded = rounded - (tie & (rounded & 1).astype(bool))
        product = rounded
    top = (1 << 31) - 1 if wide else 127
    return np.clip(product + zp, -top - 1, top).astype(_INT32)


@dataclass(frozen=True)
class Segment:
    """A context's window of a memory: physical = base + relative, valid for relative < size."""
    base: int
    size: int

    def overlaps(self, other):
        """Whether the two segments share a location (an empty segment shares none)."""
        return (self.size > 0 and other.size > 0 and self.base < other.base + other.size
                and other.base < self.base + self.size)


@dataclass
class ContextSpec:
    """One context as the golden model (and the hardware) sees it."""
    program: list            # 64-bit words
    spad: Segment            # rows
    hbm: Segment             # words


@dataclass
class Race:
    """Two µTOps closer than dep_window, unordered, touching one location (one writes)."""
    first_pc: int
    second_pc: int
    space: str            # "spad" or "hbm"
    address: int          # a physical row or word they both touch


@dataclass
class RestartHazard:
    """A µTOp flagged ``restartable`` that reads a location before it writes it, and also
    writes it: run again after a partial run, it would read its own output."""
    pc: int
    space: str            # "spad" or "hbm"
    address: int          # a physical row or word


@dataclass
class ContextOutcome:
    """What the golden model reports of one context's run (the host's view of a run, on
    every backend, is the driver's ContextResult)."""
    fault: Fault = Fault.NONE
    fault_pc: int | None = None      # word address of the faulting µTOp's header
    fault_detail: str = ""
    #: Instructions of the faulting µTOp that ran before the one that faulted (loop
    #: iterations counted one by one); None for a fault of fetch.
    fault_step: int | None = None
    utops_retired: int = 0
    races: list = field(default_factory=list)
    restart_hazards: list = field(default_factory=list)

    @property
    def status(self):
        return "done" if self.fault == Fault.NONE else "faulted"


class ProgramFault(Exception):
    """Raised inside the model when a µTOp faults; never escapes ``GoldenNPU.run``."""

    def __init__(self, fault, detail):
        super().__init__(detail)
        self.fault, self.detail = fault, detail


@dataclass
class _VEState:
    lanes: int
    vl: int = 0
    mult: int = 1
    shift: int = 0
    zp: int = 0
    even: int = 0
    wide: int = 0
    lut: np.ndarray | None = None
    vregs: np.ndarray = field(default=None)

    def __post_init__(self):
        self.vl = self.lanes
        self.vregs = np.zeros((VREGS, self.lanes), dtype=_INT32)


class GoldenNPU:
    """A pNPU's memories plus the reference semantics of every instruction."""

    def __init__(self, config: NPUConfig, *, check_races=False):
        self.config = config
        self.spad = np.zeros((config.spad_rows, config.ve_lanes), dtype=_INT32)
        self.hbm = np.zeros(config.hbm_words, dtype=_INT32)
        #: With check_races, each ContextOutcome lists its races (see _RaceCheck) and the
        #: µTOps flagged restartable that are not (see RestartHazard).
        self.check_races = check_races
        self._accesses = None
        self._restart = None     # accesses of a restartable µTOp, instruction by instruction
        self._steps = 0          # instructions of the current µTOp checked so far
        self._decoded = {}       # (engine or "header", word) -> what it decodes to

    # --- running --------------------------------------------------------------------------

    def check_contexts(self, contexts):
        """Raise ValueError for context settings the hardware could not hold."""
        cfg = self.config
        if len(contexts) > cfg.n_ctx:
            raise ValueError(f"{len(contexts)} contexts given; this NPU has {cfg.n_ctx}")
        for index, ctx in enumerate(contexts):
            for name, segment, total, unit in (("scratchpad", ctx.spad, cfg.spad_rows, "rows"),
                                               ("HBM", ctx.hbm, cfg.hbm_words, "words")):
                if segment.base < 0 or segment.size < 0 or segment.base + segment.size > total:
                    raise ValueError(
                        f"context {index}: {name} segment base={segment.base} size={segment.size} "
                        f"does not fit in {total} {unit}")
            if len(ctx.program) > cfg.max_prog_words:
                raise ValueError(f"context {index}: program of {len(ctx.program)} words does "
                                 f"not fit in HBM (at most {cfg.max_prog_words})")
        for space in ("spad", "hbm"):
            for i, first in enumerate(contexts):
                for j in range(i):
                    a, b = getattr(first, space), getattr(contexts[j], space)
                    if a.overlaps(b):
                        raise ValueError(
                            f"context {i}: {'scratchpad' if space == 'spad' else 'HBM'} segment "
                            f"base={a.base} size={a.size} overlaps context {j}'s (base={b.base} "
                            f"size={b.size}); segments must be disjoint")

    def run(self, contexts):
        """Run every context to its end or its fault; return one ContextOutcome per context."""
        self.check_contexts(contexts)
        return [self._run_context(ctx) for ctx in contexts]

    def _run_context(self, ctx):
        cfg = self.config
        result = ContextOutcome()
        races = _RaceCheck(cfg.dep_window) if self.check_races else None
        pc = 0
        while True:
            header_pc = pc
            self._steps = None
            try:
                if pc >= len(ctx.program):
                    raise ProgramFault(Fault.FETCH_OOB, f"µTOp header at word {pc} is past the "
                                       f"end of the program ({len(ctx.program)} words)")
                utop, length = self._header(ctx.program[pc])
                if pc + 1 + length > len(ctx.program):
                    raise ProgramFault(Fault.FETCH_OOB, f"µTOp body of {length} words at word "
                                       f"{pc} runs past the end of the program")
                body = ctx.program[pc + 1:pc + 1 + length]
                pc += 1 + length
                if self.check_races:
                    self._accesses = {(space, w): [] for space in ("spad", "hbm")
                                      for w in (False, True)}
                    if utop.restartable:
                        self._restart = _RestartCheck()
                self.execute(utop.engine, body, ctx)
                if self._accesses is not None:      # the checks (check_races)
                    locations = {key: _Locations(accesses) for key, accesses
                                 in self._accesses.items()}
                    if self._restart is not None:
                        result.restart_hazards += [
                            RestartHazard(header_pc, space, address)
                            for space, address in self._restart.hazards(locations)]
                        self._restart = None
            except ProgramFault as fault:
                self._accesses = self._restart = None
                result.fault, result.fault_pc, result.fault_detail = \
                    fault.fault, header_pc, fault.detail
                if self._steps is not None:
                    result.fault_step = max(0, self._steps - 1)
                return result
            if self._accesses is not None:
                races.add(header_pc, utop.deps, locations)
                self._accesses = None
            result.utops_retired += 1
            if utop.eop:
                if self.check_races:
                    result.races = races.races
                return result

    def _decode(self, kind, word):
        """What ``word`` decodes to as a header (``kind`` "header": (UTop, body length)) or
        as an instruction of engine ``kind``, or the DecodeError it raises. Decoded words
        are kept: a program repeats most of its words."""
        decoded = self._decoded.get((kind, word))
        if decoded is None:
            try:
                decoded = (decode_header(word, self.config) if kind == "header"
                           else decode_instr(word, kind))
            except DecodeError as error:
                decoded = error
            self._decoded[kind, word] = decoded
        return decoded

    def _header(self, word):
        """(UTop, body length) of a header word; ProgramFault if it is not one."""
        decoded = self._decode("header", word)
        if isinstance(decoded, DecodeError):
            raise ProgramFault(decoded.fault, str(decoded))
        return decoded

    # --- one µTOp -------------------------------------------------------------------------

    def execute(self, engine, body, ctx):
        """Execute one µTOp body (a list of words) for ``engine`` in context ``ctx``."""
        self._steps = 0
        # A word that does not decode faults as the engine reaches it; earlier words run.
        instrs = [self._decode(engine, word) for word in body]
        run = {Engine.ME: self._run_me, Engine.VE: self._run_ve, Engine.DMA: self._run_dma}
        run[Engine(engine)](instrs, ctx)

    def _check(self, instr):
        """Every instruction passes here before it runs: it faults if it did not decode, and
        the restart check closes the previous instruction's accesses."""
        self._steps += 1
        if self._restart is not None:
            self._restart.next_instruction()
        if isinstance(instr, DecodeError):
            raise ProgramFault(instr.fault, str(instr))
        return instr

    def _track(self, space, locations, write):
        """Record an access to ``locations`` for the checks: an int array of locations, or
        runs (starts, stops) of consecutive ones [start, stop), as two ints (one run) or
        two int arrays (several)."""
        if self._accesses is not None:
            self._accesses[space, write].append(locations)
        if self._restart is not None:
            self._restart.access(space, locations, write)

    def _rows(self, ctx, first, count=1, stride=1, write=False):
        """Physical scratchpad rows first + i*stride, i < count; SPAD_OOB if any is outside."""
        if (stride == 1 or count == 1) and 0 <= first and first + count <= ctx.spad.size:
            start = ctx.spad.base + first        # consecutive rows: tracked as one run
            self._track("spad", (start, start + count), write)
            return np.arange(start, start + count, dtype=np.int64)
        return self._segment_rows(ctx, first + stride * np.arange(count, dtype=np.int64), write)

    def _segment_rows(self, ctx, rel, write=False):
        """Physical rows for segment-relative rows ``rel``; SPAD_OOB if any is outside."""
        bad = (rel < 0) | (rel >= ctx.spad.size)
        if bad.any():
            raise ProgramFault(Fault.SPAD_OOB, f"scratchpad row {int(rel[bad][0])} is outside "
                               f"the segment of {ctx.spad.size} rows")
        rows = ctx.spad.base + rel
        self._track("spad", np.atleast_1d(rows), write)
        return rows

    def _words(self, ctx, firsts, count, write=False):
        """Physical HBM words of ``count`` words from each segment-relative start in
        ``firsts`` (rows x count); HBM_OOB, naming the first row with a word outside the
        segment, if any is."""
        firsts = np.asarray(firsts, np.int64).reshape(-1)
        bad = (firsts < 0) | (firsts + count > ctx.hbm.size)
        if bad.any():
            first = int(firsts[bad][0])
            raise ProgramFault(Fault.HBM_OOB, f"HBM words {first}..{first + count - 1} are "
                               f"outside the segment of {ctx.hbm.size} words")
        starts = ctx.hbm.base + firsts
        self._track("hbm", (starts, starts + count), write)
        return starts[:, None] + np.arange(count)

    # --- matrix engine --------------------------------------------------------------------

    def _run_me(self, instrs, ctx):
        state = {"weights": None}
        position = 0
        while position < len(instrs):
            instr = self._check(instrs[position])
            if instr.op.mnemonic != "mmloop":
                self._me_instr(instr, ctx, state)
                position += 1
                continue
            a = instr.args
            if position + 3 > len(instrs):
                raise ProgramFault(Fault.ILLEGAL_OPERAND, "mmloop: its ldw and mm do not fit in "
                                   "the µTOp body")
            pair = instrs[position + 1:position + 3]
            if self._mmloop_at_once(a, pair, ctx, state):
                position += 3
                continue
            for t in range(a["count"]):
                for inner, mnemonic, stride in zip(pair, ("ldw", "mm"),
                                                   (a["w_stride"], a["x_stride"])):
                    inner = self._check(inner)
                    if inner.op.mnemonic != mnemonic:
                        raise ProgramFault(Fault.ILLEGAL_OPERAND, f"mmloop: {inner.op.mnemonic} "
                                           f"where its {mnemonic} must be")
                    args = inner.args
                    if t:      # later iterations: sources moved, the mm accumulating
                        args = dict(args, src=args["src"] + t * stride)
                        if mnemonic == "mm":
                            args["acc"] = 1
                    self._me_instr(inner, ctx, state, args)
            position += 3

    def _mmloop_at_once(self, loop, pair, ctx, state):
        """An mmloop whose iterations all decode, stay in the segment and read no row its
        mm writes, run as one sum of products (the same result and accesses as iteration
        by iteration: the first iteration's ldw and mm, then the others' accesses as one
        step, since they write only the rows the first mm wrote). False, with nothing
        done, otherwise (the iterations then run one by one)."""
        cfg = self.config
        if any(isinstance(i, DecodeError) for i in pair) \
                or [i.op.mnemonic for i in pair] != ["ldw", "mm"]:
            return False
        ldw, mm = pair[0].args, pair[1].args
        count, size = loop["count"], ctx.spad.size
        k, m = ldw["k"], mm["m"]
        if not 1 <= k <= (cfg.array_cols if ldw["t"] else cfg.array_rows):
            return False
        w_first = ldw["src"] + loop["w_stride"] * np.arange(count)
        x_first = mm["src"] + loop["x_stride"] * np.arange(count)
        dst = mm["dst"]
        if (min(w_first.min(), x_first.min(), dst) < 0
                or max(w_first.max() + k, x_first.max() + m, dst + m) > size
                or ((x_first < dst + m) & (x_first + m > dst)).any()    # undefined: as
                or ((w_first < dst + m) & (w_first + k > dst)).any()):  # they run
            return False
        for instr in pair:               # the first iteration, as it runs
            self._me_instr(self._check(instr), ctx, state)
        if count == 1:
            return True
        self._check(pair[0])             # the other iterations' accesses, as one step
        w_rows = self._segment_rows(ctx, (w_first[1:, None] + np.arange(k)).ravel())
        x_rows = self._segment_rows(ctx, (x_first[1:, None] + np.arange(m)).ravel())
        dst = self._rows(ctx, dst, m, write=True)
        self._track("spad", dst, False)
        w = self.spad[w_rows].reshape(count - 1, k, -1).astype(np.int8).astype(np.int64)
        weights = np.zeros((count - 1, cfg.array_rows, cfg.array_cols), np.int64)
        if ldw["t"]:
            weights[:, :, :k] = w[:, :, :cfg.array_rows].transpose(0, 2, 1)
        else:
            weights[:, :k] = w[:, :, :cfg.array_cols]
        x = self.spad[x_rows, :cfg.array_rows].reshape(count - 1, m, -1)
        product = np.einsum("tmr,trc->mc", x.astype(np.int8).astype(np.int64), weights)
        self.spad[dst, :cfg.array_cols] = wrap32(product + self.spad[dst, :cfg.array_cols])
        state["weights"] = weights[-1]
        return True

    def _me_instr(self, instr, ctx, state, args=None):
        cfg = self.config
        a = instr.args if args is None else args
        if instr.op.mnemonic == "ldw":
            limit, dim = ((cfg.array_cols, "array_cols") if a["t"]
                          else (cfg.array_rows, "array_rows"))
            if not 1 <= a["k"] <= limit:
                raise ProgramFault(Fault.ILLEGAL_OPERAND, f"ldw: k = {a['k']} is outside "
                                   f"1..{limit} ({dim})")
            rows = self._rows(ctx, a["src"], a["k"])
            weights = np.zeros((cfg.array_rows, cfg.array_cols), dtype=np.int64)
            if a["t"]:
                weights[:, :a["k"]] = self.spad[rows, :cfg.array_rows].astype(np.int8).T
            else:
                weights[:a["k"]] = self.spad[rows, :cfg.array_cols].astype(np.int8)
            state["weights"] = weights
        else:  # mm
            weights = state["weights"]
            if weights is None:
                raise ProgramFault(Fault.UNLOADED_STATE, "mm before any ldw in this µTOp")
            src = self._rows(ctx, a["src"], a["m"])
            dst = self._rows(ctx, a["dst"], a["m"], write=True)
            if a["acc"] or cfg.array_cols < cfg.ve_lanes:    # read-modify-write
                self._track("spad", dst, False)
            inputs = self.spad[src, :cfg.array_rows].astype(np.int8).astype(np.int64)
            product = inputs @ weights
            if a["acc"]:
                product = product + self.spad[dst, :cfg.array_cols]
            self.spad[dst, :cfg.array_cols] = wrap32(product)

    # --- vector engine --------------------------------------------------------------------

    def _run_ve(self, instrs, ctx):
        cfg = self.config
        state = _VEState(cfg.ve_lanes)
        position = 0
        while position < len(instrs):
            instr = self._check(instrs[position])
            if instr.op.mnemonic != "loop":
                self._ve_instr(instr, ctx, state, 0, 0)
                position += 1
                continue
            a = instr.args
            end = position + 1 + a["len"]
            if a["len"] < 1 or end > len(instrs):
                raise ProgramFault(Fault.ILLEGAL_OPERAND, f"loop: body of {a['len']} "
                                   f"instructions does not fit in the µTOp body")
            body = instrs[position + 1:end]
            for t in range(a["count"]):
                for inner in body:
                    inner = self._check(inner)
                    if inner.op.mnemonic == "loop":
                        raise ProgramFault(Fault.ILLEGAL_OPERAND, "loop: nested loop")
                    self._ve_instr(inner, ctx, state, t * a["dst_stride"], t * a["src_stride"])
            position = end

    def _ve_instr(self, instr, ctx, state, dst_offset, src_offset):
        cfg = self.config
        name = instr.op.mnemonic
        a = loop_operands(instr, dst_offset, src_offset)
        vl = state.vl
        spad = self.spad

        def write(rows, values):
            if vl < cfg.ve_lanes:      # lanes >= vl keep their value: a read-modify-write
                self._track("spad", np.atleast_1d(rows), False)
            spad[rows, :vl] = values[..., :vl] if values.ndim == 2 else values[:vl]

        alu = _ALU.match(name)
        if alu:
            op, form, sat = alu.groups()
            n = a["n"]
            x = spad[self._rows(ctx, a["a"], n)].astype(np.int64)
            if form is None:
                y = spad[self._rows(ctx, a["b"], n)].astype(np.int64)
            elif form == "r":
                y = np.broadcast_to(state.vregs[a["vb"]].astype(np.int64), x.shape)
            else:
                y = np.full(x.shape, a["imm"], dtype=np.int64)
            result = wrap32(_alu(op, x, y))
            if sat:
                result = np.clip(result, -128, 127)
            write(self._rows(ctx, a["dst"], n, write=True), result)
        elif name == "vsetq":
            state.mult, state.shift, state.zp = a["mult"], a["shift"], a["zp"]
            state.even, state.wide = a["even"], a["wide"]
        elif name in ("vrq", "vrqr"):
            x = spad[self._rows(ctx, a["src"], a["n"])]
            mult = state.mult if name == "vrq" else state.vregs[a["vb"]]
            write(self._rows(ctx, a["dst"], a["n"], write=True),
                  requantize(x, mult, state.shift, state.zp, state.even, state.wide))
        elif name == "vldlut":
            rows = self._rows(ctx, a["src"], cfg.lut_rows)
            state.lut = spad[rows].reshape(-1)[:LUT_ENTRIES].copy()
        elif name == "vlut":
            if state.lut is None:
                raise ProgramFault(Fault.UNLOADED_STATE, "vlut before any vldlut in this µTOp")
            x = spad[self._rows(ctx, a["src"], a["n"])]
            write(self._rows(ctx, a["dst"], a["n"], write=True), state.lut[np.clip(x, -128, 127) + 128])
        elif name == "vld":
            state.vregs[a["vd"], :vl] = spad[self._rows(ctx, a["src"])[0], :vl]
        elif name == "vst":
            spad[self._rows(ctx, a["dst"], write=True)[0], :vl] = state.vregs[a["vs"], :vl]
        elif name == "vsetvl":
            if not 1 <= a["vl"] <= cfg.ve_lanes:
                raise ProgramFault(Fault.ILLEGAL_OPERAND, f"vsetvl: vl = {a['vl']} is outside "
                                   f"1..{cfg.ve_lanes} (ve_lanes)")
            state.vl = a["vl"]
        elif name in ("vrsum", "vrmax", "vrmin"):
            x = spad[self._rows(ctx, a["src"], a["n"], a["stride"])].astype(np.int64)
            write(self._rows(ctx, a["dst"], write=True)[0], wrap32(_reduce(name[2:], x, axis=0)))
        elif name in ("vlsum", "vlmax", "vlmin"):
            x = spad[self._rows(ctx, a["src"], a["n"])][:, :vl].astype(np.int64)
            reduced = wrap32(_reduce(name[2:], x, axis=1))
            write(self._rows(ctx, a["dst"], a["n"], write=True),
                  np.repeat(reduced[:, None], cfg.ve_lanes, axis=1))
        elif name in ("vpoolmax", "vpoolsum"):
            offsets = (np.arange(a["kh"])[:, None] * a["pitch"] + np.arange(a["kw"])).reshape(-1)
            x = spad[self._segment_rows(ctx, a["src"] + offsets)].astype(np.int64)
            write(self._rows(ctx, a["dst"], write=True)[0], wrap32(_reduce(name[5:], x, axis=0)))
        else:  # pragma: no cover - every VE mnemonic is handled above
            raise AssertionError(name)

    # --- DMA engine -----------------------------------------------------------------------

    def _run_dma(self, instrs, ctx):
        cfg = self.config
        length, packed, hstride, sstride, gbase = cfg.ve_lanes, False, cfg.ve_lanes, 1, 0
        span = length                   # HBM words per row

        def read_rows(firsts):
            """The len elements of the rows at HBM words ``firsts`` (E in the spec)."""
            words = self.hbm[self._words(ctx, firsts, span)]
            if not packed:
                return words
            return unpack_int8(words).reshape(len(words), -1)[:, :length]

        for instr in instrs:
            instr = self._check(instr)
            a = instr.args
            name = instr.op.mnemonic
            if name == "dcfg":
                if not 1 <= a["len"] <= cfg.ve_lanes:
                    raise ProgramFault(Fault.ILLEGAL_OPERAND, f"dcfg: len = {a['len']} is outside "
                                       f"1..{cfg.ve_lanes} (ve_lanes)")
                length, packed = a["len"], bool(a["i8"])
                span = -(-length // 4) if packed else length
                hstride, sstride = a["hstride"], a["sstride"]
            elif name == "dbase":
                gbase = a["hbm"]
            elif name == "dload":
                rows = self._rows(ctx, a["dst"], a["rows"], sstride, write=True)
                values = read_rows(a["hbm"] + hstride * np.arange(a["rows"]))
                self.spad[rows, :length] = values
                self.spad[rows, length:] = 0
            elif name == "dstore":
                rows = self._rows(ctx, a["src"], a["rows"], sstride)
                words = self._words(ctx, a["hbm"] + hstride * np.arange(a["rows"]), span,
                                    write=True)
                x = self.spad[rows, :length]
                if packed:              # each row padded to whole words on its own
                    padded = np.zeros((len(rows), 4 * span), np.int64)
                    padded[:, :length] = x
                    x = pack_int8(padded).reshape(len(rows), span)
                if hstride >= span or len(rows) == 1:        # rows do not overlap
                    self.hbm[words] = x
                else:
                    for row in range(len(rows)):      # in order: a later row overwrites
                        self.hbm[words[row]] = x[row]
            else:  # dgather
                lanes = cfg.ve_lanes
                n = a["rows"]
                index_rows = self._rows(ctx, a["idx"], (n + lanes - 1) // lanes)
                indices = self.spad[index_rows].reshape(-1)[:n].astype(np.int64)
                rows = self._rows(ctx, a["dst"], n, sstride, write=True)
                values = read_rows(gbase + indices * hstride)
                self.spad[rows, :length] = values
                self.spad[rows, length:] = 0


class _RestartCheck:
    """Accesses of one µTOp in instruction order. Within an instruction reads come before
    writes. A location whose first access is a read and that the µTOp also writes makes it
    unsafe to run again after a partial run (see the header's ``restartable`` flag).

    Accesses are kept as the engines give them (see ``GoldenNPU._track``), per
    instruction; the order only matters for a location the µTOp both reads and writes, so
    the instruction-by-instruction walk runs only when there is one."""

    def __init__(self):
        self.steps = []             # per instruction: [(space, write, locations)]
        self.current = []

    def access(self, space, locations, write):
        self.current.append((space, write, locations))

    def next_instruction(self):
        if self.current:
            self.steps.append(self.current)
            self.current = []

    def hazards(self, locations):
        """(space, location) of every hazard, given the µTOp's accesses as ``_Locations``
        per (space, write)."""
        self.next_instruction()
        found = []
        for space in ("hbm", "spad"):
            if locations[space, False].first_common(locations[space, True]) is None:
                continue
            # A location both read and written whose first read comes no later than its
            # first write (within an instruction, reads come first).
            read_at, read_step = self._first_steps(space, False)
            write_at, write_step = self._first_steps(space, True)
            both, r, w = np.intersect1d(read_at, write_at, assume_unique=True,
                                        return_indices=True)
            found += [(space, int(x)) for x in both[read_step[r] <= write_step[w]]]
        return found

    def _first_steps(self, space, write):
        """(locations, the first step each was accessed at) of the µTOp's accesses to
        ``space`` one way, sorted by location."""
        return _first_steps([(x, k) for k, step in enumerate(self.steps)
                             for s, w, x in step if s == space and w == write])


def _first_steps(accesses):
    """(locations, the first step each was accessed at) of (access, step) pairs, sorted
    by location."""
    arrays = [(_expand(x), k) for x, k in accesses]
    at = np.concatenate([x for x, _ in arrays])
    steps = np.concatenate([np.full(len(x), k) for x, k in arrays])
    order = np.lexsort((steps, at))
    at, steps = at[order], steps[order]
    first = np.concatenate(([True], at[1:] != at[:-1]))
    return at[first], steps[first]


def _expand(access):
    """The int array of locations of an access (see ``GoldenNPU._track``)."""
    if not isinstance(access, tuple):
        return access
    starts, stops = access
    if np.ndim(starts) == 0:
        return np.arange(starts, stops, dtype=np.int64)
    sizes = stops - starts
    offsets = np.arange(sizes.sum(), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.repeat(starts, sizes) + offsets


def _as_runs(access):
    """(starts, stops) arrays of an access (see ``GoldenNPU._track``): runs, possibly
    unsorted, overlapping or empty."""
    if isinstance(access, tuple):
        return np.atleast_1d(access[0]), np.atleast_1d(access[1])
    return _runs(access) if access.size else (access, access)


class _Locations:
    """The locations a µTOp touched one way, from the accesses the engines gave (see
    ``GoldenNPU._track``), as sorted, disjoint runs [starts[i], stops[i]): an access is
    nearly always one run or a few (rows of a tile, words of HBM rows), so comparing two
    µTOps' accesses costs a binary search per run, not a set of every location. ``lo``
    and ``hi`` bound them all (Python ints, for the quick no); a few runs given as ints
    are merged in plain Python."""

    def __init__(self, accesses):
        if all(isinstance(a, tuple) and isinstance(a[0], int) for a in accesses):
            runs = sorted(a for a in accesses if a[1] > a[0])
            merged = []
            for start, stop in runs:
                if merged and start <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], stop)
                else:
                    merged.append([start, stop])
            self.size = len(merged)
            self.lo, self.hi = (merged[0][0], merged[-1][1]) if merged else (0, 0)
            self.starts = np.array([r[0] for r in merged], np.int64)
            self.stops = np.array([r[1] for r in merged], np.int64)
            return
        runs = [_as_runs(a) for a in accesses]
        if len(runs) == 1:
            starts, stops = runs[0]
        else:
            starts = np.concatenate([r[0] for r in runs])
            stops = np.concatenate([r[1] for r in runs])
        keep = stops > starts
        if not keep.all():
            starts, stops = starts[keep], stops[keep]
        if len(starts) > 1:                      # sort, merge overlapping and adjacent runs
            order = np.argsort(starts, kind="stable")
            starts, stops = starts[order], stops[order]
            reach = np.maximum.accumulate(stops)
            first = np.concatenate(([0], np.flatnonzero(starts[1:] > reach[:-1]) + 1))
            starts, stops = starts[first], np.maximum.reduceat(stops, first)
        self.starts, self.stops = starts, stops
        self.size = len(starts)
        self.lo, self.hi = (int(starts[0]), int(stops[-1])) if self.size else (0, 0)

    def first_common(self, other):
        """The least location both touched, or None."""
        if not self.size or not other.size or self.hi <= other.lo or other.hi <= self.lo:
            return None
        if self.size == 1 and other.size == 1:
            return max(self.lo, other.lo)
        # Per run, the first of the other's runs that ends after it starts.
        j = np.searchsorted(other.stops, self.starts, side="right")
        ok = j < other.size
        lo = np.maximum(self.starts[ok], other.starts[j[ok]])
        hit = lo < self.stops[ok]
        return int(lo[hit].min()) if hit.any() else None


def _runs(a):
    """(starts, stops) of the runs of consecutive locations in a non-empty int array."""
    first = a[0]
    if a.size == 1 or (a[-1] - first == a.size - 1 and (a.size == 2 or (
            np.diff(a) == 1).all())):
        return np.array([first]), np.array([a[-1] + 1])
    steps = np.diff(a)
    if not (steps > 0).all():
        a = np.unique(a)
        steps = np.diff(a)
    breaks = np.flatnonzero(steps != 1)
    starts = np.empty(len(breaks) + 1, a.dtype)
    stops = np.empty(len(breaks) + 1, a.dtype)
    starts[0], starts[1:] = a[0], a[breaks + 1]
    stops[:-1], stops[-1] = a[breaks] + 1, a[-1] + 1
    return starts, stops


def loop_operands(instr, dst_offset, src_offset):
    """A VE instruction's operands inside a loop: its destination rows moved by
    ``dst_offset`` and its source rows by ``src_offset`` (fields by role)."""
    args = dict(instr.args)
    for f in instr.op.fields:
        if f.role == "dst":
            args[f.name] += dst_offset
        elif f.role == "src":
            args[f.name] += src_offset
    return args


class _RaceCheck:
    """Races among executed µTOps, found as they retire (program order).

    µTOp j is ordered after i when a chain of dependencies leads from j back to i, where
    the window rule counts as a dependency of j on j - window. Only pairs closer than the
    window can race; a race is a location one writes and the other reads or writes. Only
    the last ``window`` µTOps are kept, so the check's memory does not grow with the
    program.
    """

    def __init__(self, window):
        self.window = window
        self.recent = {}      # index -> (pc, accesses, the µTOps within 2*window known before it)
        self.count = 0
        self.races = []

    def add(self, pc_j, deps, acc_j):
        j, window = self.count, self.window
        known = set()
        for distance in list(deps) + [window]:
            d = j - distance
            if d >= 0:
                known.add(d)
                known |= self.recent[d][2]
        before = {i for i in known if i > j - 2 * window}
        for i in range(max(0, j - window + 1), j):
            if i in before:
                continue
            pc_i, acc_i, _ = self.recent[i]
            for space in ("spad", "hbm"):
                w_i, w_j = acc_i[space, True], acc_j[space, True]
                if not w_i.size and not w_j.size:
                    continue
                clash = [c for c in (w_i.first_common(acc_j[space, False]),
                                     w_i.first_common(w_j), acc_i[space, False].first_common(w_j))
                         if c is not None]
                if clash:
                    self.races.append(Race(pc_i, pc_j, space, min(clash)))
        self.recent[j] = (pc_j, acc_j, before)
        self.recent.pop(j - window, None)
        self.count += 1


def _alu(op, x, y):
    """int64 lanes in, int64 out (wrapped to int32 by the caller)."""
    if op == "add":
        return x + y
    if op == "sub":
        return x - y
    if op == "mul":
        return x * y
    if op == "min":
        return np.minimum(x, y)
    if op == "max":
        return np.maximum(x, y)
    amount = y & 31
    if op == "shl":
        return x << amount
    if op == "sra":
        return x >> amount
    return (x & 0xFFFFFFFF) >> amount  # srl


def _reduce(kind, x, axis):
    if kind == "sum":
        return x.sum(axis=axis)
    if kind == "max":
        return x.max(axis=axis)
    return x.min(axis=axis)
