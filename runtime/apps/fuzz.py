"""Fuzzing tenant isolation: hostile programs next to a victim, checked against the golden model.

A campaign runs ``programs`` runs; run i is built from the seed ``seed + i`` alone, so one
failing run replays with ``--seed seed+i --programs 1``. A run loads 1 to 3 *attacker*
contexts with random hostile programs (random words, random µTOps with extreme fields,
long vector loops, faults in the middle of a stream, false ``restartable`` flags) and one
*victim* context with a fixed valid program (DMA loads, a matrix multiply, vector work, a
DMA store) on random input data. Every context gets its own scratchpad and HBM segments,
with gaps between them, and owns one ME and one VE. The checks, per run:

1. every context ends DONE or FAULTED within the cycle bound, and STATUS is FAULTED iff
   FAULT is not NONE;
2. FAULT and FAULT_PC of every context equal the golden model's (WATCHDOG is never
   expected: every context owns an engine of each type), except where a ``dgather``'s
   indices are undefined data (its µTOp races another, or the program is undefined
   anyway): which fault comes first is then a race, and the difference is counted as
   excused;
3. the victim ends DONE and its segments equal a golden run of the victim alone;
4. nothing outside all segments changed;
5. with ``cross_check`` K, the first K runs also run on the other RTL backend, with
   identical results (status, faults, every counter, the memory read back).

An attacker that did not fault also has its segments compared with the golden model's,
unless its result is undefined by the spec (a race, an instruction whose source and
destination rows overlap, an ``ldw`` of rows an earlier ``mm`` of its µTOp wrote, or,
under ``harvest``, a false ``restartable`` flag); after a fault its segments are
unspecified.

On ``pysim`` (slow host reads) the runs write and read back the *arena* only: the memory
from address 0 to the end of the last segment and its gap, where every segment lies;
``golden`` and ``verilator`` write random contents to the whole memory and read it all.
"The whole memory" is the scratchpad and HBM's first ``FUZZ_HBM_WORDS`` words (all of it on
tiny and small): every segment and program lies there; past it HBM stays zero, unchecked.
"""

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np

from isa.config import MAX_DEP_WINDOW
from isa.regmap import Status, register_address
from isa.asm import assemble_program
from isa.encoding import (BY_MNEMONIC, INSTRUCTIONS, DecodeError, Engine, Fault, Instr, UTop,
                          decode_header, decode_instr, encode_header, encode_instr,
                          encode_program, program_hbm_words)
from isa.golden import ContextSpec, GoldenNPU, Segment, loop_operands
from runtime.backends import script as ops
from runtime.host.driver import BACKENDS, POLICIES, Driver, DriverError, make_backend

__all__ = ["POLICIES", "BACKENDS", "CHECKS", "FuzzError", "FuzzCase", "RunOutcome",
           "FuzzFailure", "FuzzReport", "random_program", "hostile_program", "victim_program",
           "make_case", "run_case", "run_campaign"]


#: Loop iterations times rows per iteration that one hostile program may ask for in total
#: (longer loops are shortened): keeps a run to thousands of cycles.
LOOP_BUDGET = 8192
#: Largest loop of one µTOp (iterations x rows of its body).
LOOP_MAX = 4096


class FuzzError(ValueError):
    """A campaign that cannot run: bad arguments, or a configuration too small for it."""


# --- random programs -------------------------------------------------------------------------

def _encodable(field, value):
    """``value`` pulled into the range ``field`` can encode (``Field.min..Field.max``: a flag is
    0..1, a count with bias 1 is 1..2^width, a 3-bit register number 0..7); an out-of-range
    pick lands on the nearer extreme, so extremes stay frequent."""
    return max(field.min, min(field.max, value))


def random_program(rng, config, n_words):
    """Random words, or random µTOps (valid headers, random instructions and fields).

    Every instruction built through ``Instr`` is encodable (operands inside their fields'
    ranges; values the configuration forbids, such as ``ldw`` with k > array_rows, are
    kept: the hardware must fault on them). Undecodable programs come from the random raw
    words and the randomly corrupted word, which bypass the encoder.
    """
    if rng.random() < 0.3:
        return [rng.getrandbits(64) for _ in range(n_words)]
    items = []
    for i in range(rng.randint(1, 6)):
        engine = rng.choice(list(Engine))
        body = []
        for _ in range(rng.randint(0, 4)):
            defn = rng.choice([d for d in INSTRUCTIONS if d.engine == engine])
            body.append(Instr(defn, {f.name: _encodable(f, rng.choice([f.min, f.max,
                                                                       rng.randint(f.min, f.max),
                                                                       rng.randint(0, 8)]))
                                     for f in defn.fields}))
            for f in defn.fields:     # keep most operands small, so work is mostly short
                if not f.flag and rng.random() < 0.8:
                    body[-1].args[f.name] = _encodable(f, rng.randint(0, 8))
        deps = tuple(sorted(rng.sample(range(1, config.dep_window + 1), rng.randint(0, 2))))
        items.append(UTop(engine, body, deps, eop=rng.random() < 0.2))
    words = encode_program(items)
    if rng.random() < 0.3:
        words[rng.randrange(len(words))] = rng.getrandbits(64)
    return words


_BY_ENGINE = {engine: [d for d in INSTRUCTIONS if d.engine == engine] for engine in Engine}
#: Vector instructions that stream a few rows and cost little inside a long loop.
_LOOP_BODY = [d for d in _BY_ENGINE[Engine.VE]
              if d.mnemonic not in ("loop", "vldlut", "vsetq", "vsetvl")
              and not d.mnemonic.startswith("vpool")]


def _operand(rng, f, config, spad_size, hbm_size, extreme):
    """A value for field ``f``: in the segment, at its edges, just past them, or (with
    ``extreme``, or now and then) the field's extremes."""
    lanes = config.ve_lanes
    wild = [f.min, f.max, rng.randint(f.min, f.max)] if extreme or rng.random() < 0.08 else []
    if f.flag:
        return rng.randint(0, 1)
    if f.role in ("dst", "src"):                          # scratchpad rows
        pool = [rng.randint(0, 8), rng.randint(0, 8), rng.randrange(max(spad_size, 1)),
                spad_size - 1, spad_size, spad_size - rng.randint(1, 8)]
    elif f.name == "hbm":                                 # HBM word addresses
        pool = [rng.randint(0, 2 * lanes), rng.randrange(max(hbm_size, 1)),
                hbm_size - lanes, hbm_size - rng.randint(1, lanes), hbm_size]
    elif f.name in ("k", "vl") or (f.name == "len" and f.width == 15):   # ldw, vsetvl, dcfg
        limit = config.array_rows if f.name == "k" else lanes
        pool = [rng.randint(1, limit), rng.randint(1, limit), limit, 0, limit + 1]
    elif f.bias == 1:                                     # counts: rows, iterations, windows
        pool = [1, 1, 2, rng.randint(1, 4), rng.randint(1, 8)]
    elif f.name in ("stride", "pitch", "hstride", "sstride"):
        pool = [0, 1, 1, 2, rng.randint(0, 8), lanes]
    elif f.signed:                                        # immediates, strides, mult, zp
        pool = [0, 1, -1, rng.randint(-8, 8), rng.randint(f.min, f.max)]
    else:                                                 # registers, shift, loop len
        pool = [0, 1, rng.randint(0, min(f.max, 8)), rng.randint(f.min, f.max)]
    return _encodable(f, rng.choice(pool + wild))


def _instr(rng, defn, config, spad_size, hbm_size, extreme=False):
    return Instr(defn, {f.name: _operand(rng, f, config, spad_size, hbm_size, extreme)
                        for f in defn.fields})


def _loop_utop(rng, config, spad_size, hbm_size, valid=False):
    """A long vector loop: hundreds to thousands of iterations of 1-3 cheap instructions.
    With a non-zero stride the rows walk out of the segment: a fault in the middle of it;
    ``valid``: every instruction valid and the strides 0, so it runs to its end."""
    state = {}
    body = []
    for _ in range(rng.randint(0, 1)):        # set-up before the loop (vl, requantization)
        body.append(_instr(rng, rng.choice([BY_MNEMONIC["vsetvl"], BY_MNEMONIC["vsetq"],
                                            BY_MNEMONIC["vld"]]), config, spad_size, hbm_size))
        if valid:
            body[-1:] = _repair(rng, body[-1], config, spad_size, hbm_size, state)
    inner = []
    for _ in range(rng.randint(1, 3)):
        instr = _instr(rng, rng.choice(_LOOP_BODY), config, spad_size, hbm_size)
        for f in instr.op.fields:
            if f.bias == 1:
                instr.args[f.name] = rng.randint(1, 2)
            elif f.role in ("dst", "src") and rng.random() < 0.7:
                instr.args[f.name] = rng.randint(0, min(8, max(spad_size - 1, 0)))
        if valid:
            *before, instr = _repair(rng, instr, config, spad_size, hbm_size, state)
            body += before                    # a vldlut for a vlut: before the loop
        inner.append(instr)
    count = int(math.exp(rng.uniform(math.log(100), math.log(3000))))
    strides = [0] if valid else [0, 0, 0, 1, 1, -1, 2, rng.randint(-4, 4)]
    loop = BY_MNEMONIC["loop"]
    length = len(inner)
    roll = 1.0 if valid else rng.random()
    if roll < 0.05:
        length = 0                            # malformed: ILLEGAL_OPERAND
    elif roll < 0.1:
        length = len(inner) + rng.randint(1, 3)   # runs past the body: ILLEGAL_OPERAND
    body.append(Instr(loop, {"count": _encodable(loop.field("count"), count), "len": length,
                             "dst_stride": rng.choice(strides),
                             "src_stride": rng.choice(strides)}))
    body += inner
    if not valid and rng.random() < 0.05:     # a nested loop inside the body
        body.insert(len(body) - 1, Instr(loop, {"count": 2, "len": 1, "dst_stride": 0,
                                                "src_stride": 0}))
    return UTop(Engine.VE, body)


def _me_utop(rng, config, spad_size, hbm_size):
    body = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.3:                    # a K loop: mmloop, its ldw and its mm
            body += [_instr(rng, BY_MNEMONIC[name], config, spad_size, hbm_size)
                     for name in ("mmloop", "ldw", "mm")]
            continue
        if rng.random() < 0.8:
            body.append(_instr(rng, BY_MNEMONIC["ldw"], config, spad_size, hbm_size))
        for _ in range(rng.randint(0, 2)):
            body.append(_instr(rng, BY_MNEMONIC["mm"], config, spad_size, hbm_size))
    return UTop(Engine.ME, body)


def _dma_utop(rng, config, spad_size, hbm_size):
    body = []
    for _ in range(rng.randint(1, 4)):
        name = rng.choice(["dcfg", "dload", "dload", "dstore", "dstore", "dbase", "dgather"])
        body.append(_instr(rng, BY_MNEMONIC[name], config, spad_size, hbm_size))
    return UTop(Engine.DMA, body)


def _mixed_utop(rng, config, spad_size, hbm_size, extreme=False, loops=True):
    engine = rng.choice(list(Engine))
    defs = [d for d in _BY_ENGINE[engine] if loops or d.mnemonic not in ("loop", "mmloop")]
    body = [_instr(rng, rng.choice(defs), config, spad_size, hbm_size, extreme)
            for _ in range(rng.randint(0, 5))]
    return UTop(engine, body)


def _fit(rng, size, count):
    """A first row (or word) for ``count`` of them inside ``size`` (0 when they cannot fit)."""
    return rng.randint(0, size - count) if size >= count else 0


def _apart(rng, size, count, avoid):
    """A first row for ``count`` rows inside ``size`` that avoids the rows ``avoid``."""
    for _ in range(8):
        row = _fit(rng, size, count)
        if not avoid & set(range(row, row + count)):
            break
    return row


def _repair(rng, instr, config, spad_size, hbm_size, state):
    """Make ``instr`` valid in segments of ``spad_size`` rows and ``hbm_size`` words where it
    can be (its rows inside the segment, its sources and destination apart or equal row for
    row, its counts in range); ``state`` is the µTOp's engine state so far. Returns the
    instructions to emit: an ``mm`` or ``vlut`` gets the load it needs first."""
    a, name, lanes = instr.args, instr.op.mnemonic, config.ve_lanes
    rows_of = lambda first, count, step=1: {first + i * step for i in range(count)}
    before = []
    if name == "ldw":
        limit = config.array_cols if a["t"] else config.array_rows
        a["k"] = max(1, min(rng.randint(1, limit), spad_size))
        a["src"] = _apart(rng, spad_size, a["k"], state.setdefault("mm_rows", set()))
        state["weights"] = True
    elif name == "mm":
        if not state.get("weights"):
            before = _repair(rng, _instr(rng, BY_MNEMONIC["ldw"], config, spad_size, hbm_size),
                             config, spad_size, hbm_size, state)
        a["m"] = max(1, min(a["m"], spad_size // 2))
        a["src"] = _fit(rng, spad_size, a["m"])
        a["dst"] = _apart(rng, spad_size, a["m"], rows_of(a["src"], a["m"]))
        state.setdefault("mm_rows", set()).update(rows_of(a["dst"], a["m"]))
    elif "stride" in a:                                   # reductions across rows
        a["stride"] = rng.choice([0, 1, 1, 2])
        a["n"] = max(1, min(a["n"], (spad_size - 1) // max(a["stride"], 1) + 1))
        a["src"] = _fit(rng, spad_size, (a["n"] - 1) * a["stride"] + 1)
        a["dst"] = _apart(rng, spad_size, 1, rows_of(a["src"], a["n"], a["stride"]))
    elif "pitch" in a:                                    # pooling windows
        a["kh"], a["kw"] = rng.randint(1, 2), rng.randint(1, 2)
        a["pitch"] = rng.randint(a["kw"], a["kw"] + 3)
        a["src"] = _fit(rng, spad_size, (a["kh"] - 1) * a["pitch"] + a["kw"])
        window = {a["src"] + dy * a["pitch"] + dx for dy in range(a["kh"]) for dx in range(a["kw"])}
        a["dst"] = _apart(rng, spad_size, 1, window)
    elif "n" in a and "dst" in a:                         # elementwise, row by row
        if name == "vlut" and not state.get("lut"):
            if spad_size < config.lut_rows:               # no room for a table: a vmaxi
                instr = Instr(BY_MNEMONIC["vmaxi"], {"dst": 0, "a": 0, "imm": 0, "n": a["n"]})
                return _repair(rng, instr, config, spad_size, hbm_size, state)
            before = _repair(rng, Instr(BY_MNEMONIC["vldlut"], {"src": 0}), config,
                             spad_size, hbm_size, state)
        a["n"] = max(1, min(a["n"], spad_size))
        a["dst"] = _fit(rng, spad_size, a["n"])
        for source in ("a", "b", "src"):
            if source in a:
                a[source] = a["dst"] if rng.random() < 0.3 else _apart(
                    rng, spad_size, a["n"], rows_of(a["dst"], a["n"]))
    elif name == "vldlut":
        if spad_size < config.lut_rows:                   # no room for a table
            return _repair(rng, Instr(BY_MNEMONIC["vsetvl"], {"vl": 1}), config, spad_size,
                           hbm_size, state)
        a["src"] = _fit(rng, spad_size, config.lut_rows)
        state["lut"] = True
    elif name in ("vld", "vst"):
        a["src" if name == "vld" else "dst"] = _fit(rng, spad_size, 1)
    elif name == "vsetvl":
        a["vl"] = rng.randint(1, lanes)
    elif name == "dcfg":
        a["len"] = rng.randint(1, lanes)
        a["hstride"] = rng.choice([a["len"], lanes, lanes, 0, 1])
        a["sstride"] = rng.choice([1, 1, 1, 0, 2])
        a["i8"] = int(rng.random() < 0.3)
        span = -(-a["len"] // 4) if a["i8"] else a["len"]
        state.update(len=a["len"], span=span, hstride=a["hstride"], sstride=a["sstride"])
    elif name in ("dload", "dstore", "dgather"):
        length = state.get("span", lanes)        # HBM words per row
        hstride, sstride = state.get("hstride", lanes), state.get("sstride", 1)
        fits_spad = (spad_size - 1) // sstride + 1 if sstride else 256
        fits_hbm = (hbm_size - length) // hstride + 1 if hstride else 256
        a["rows"] = max(1, min(a["rows"], fits_spad, fits_hbm if name != "dgather" else 256))
        row = "dst" if name != "dstore" else "src"
        if name == "dgather":
            # Indices of small data (-8..8) land inside the segment from this base.
            base = 8 * hstride if hbm_size >= 16 * hstride + length else 0
            before = [Instr(BY_MNEMONIC["dbase"], {"hbm": base})]
            a["idx"] = _fit(rng, spad_size, -(-a["rows"] // lanes))
            index_rows = set(range(a["idx"], a["idx"] - (-a["rows"] // lanes)))
            for _ in range(8):
                a["dst"] = _fit(rng, spad_size, (a["rows"] - 1) * sstride + 1)
                if not index_rows & rows_of(a["dst"], a["rows"], sstride):
                    break
        else:
            a[row] = _fit(rng, spad_size, (a["rows"] - 1) * sstride + 1)
            a["hbm"] = _fit(rng, hbm_size, (a["rows"] - 1) * hstride + length)
    elif name == "dbase":
        a["hbm"] = rng.randint(0, max(hbm_size - 1, 0))
    for f in instr.op.fields:
        a[f.name] = _encodable(f, a[f.name])
    return before + [instr]


def _repaired(rng, utop, config, spad_size, hbm_size):
    """``utop`` with every instruction made valid where it can be (see _repair)."""
    state = {}
    body = []
    for instr in utop.body:
        if instr.op is None or instr.op.mnemonic == "loop":
            body.append(instr)
        else:
            body += _repair(rng, instr, config, spad_size, hbm_size, state)
    body = body[:config.max_body]
    for i, instr in enumerate(body):
        if instr.op is not None and instr.op.mnemonic == "mmloop":
            pair = [p.op.mnemonic if p.op else None for p in body[i + 1:i + 3]]
            if pair == ["ldw", "mm"]:
                written = {r for x in body[:i] if x.op is not None and x.op.mnemonic == "mm"
                           for r in range(x.args["dst"], x.args["dst"] + x.args["m"])}
                _fit_loop(rng, instr, *body[i + 1:i + 3], spad_size, written)
            else:                                 # its pair was cut: no loop
                body = body[:i]
                break
    utop.body = body
    return utop


def _fit_loop(rng, loop, ldw, mm, spad_size, written):
    """Strides that keep every iteration of ``loop`` (over ``ldw`` and ``mm``, valid at
    iteration 0) inside the segment and, where a few tries find them, its result defined:
    no iteration's mm source meets its destination, no later ldw reads rows an mm wrote
    (``written``: the rows the µTOp's mm instructions write)."""
    count = loop.args["count"] = rng.randint(1, 4)
    rows = lambda first, n: set(range(first, first + n))
    dst = rows(mm.args["dst"], mm.args["m"])
    written = written | dst

    def pick(instr, span):
        first = instr.args["src"]
        if count == 1:
            return rng.randint(-4, 4)
        return rng.randint(-(first // (count - 1)), max(0, spad_size - span - first) // (count - 1))

    for _ in range(8):
        w_stride, x_stride = pick(ldw, ldw.args["k"]), pick(mm, mm.args["m"])
        if all(not rows(mm.args["src"] + t * x_stride, mm.args["m"]) & dst
               and (t == 0 or not rows(ldw.args["src"] + t * w_stride, ldw.args["k"]) & written)
               for t in range(count)):
            break
    loop.args["w_stride"] = _encodable(loop.op.field("w_stride"), w_stride)
    loop.args["x_stride"] = _encodable(loop.op.field("x_stride"), x_stride)


def _long_body_utop(rng, config, spad_size, hbm_size):
    """A body of exactly ``max_body`` cheap instructions, or one more (BAD_HEADER)."""
    length = min(config.max_body + (rng.random() < 0.3), 255)
    defs = [BY_MNEMONIC[name] for name in ("vsetvl", "vsetq", "vld", "vst", "vaddi")]
    body = []
    for _ in range(length):
        instr = _instr(rng, rng.choice(defs), config, spad_size, hbm_size)
        if "n" in instr.args:
            instr.args["n"] = 1
        body.append(instr)
    return UTop(Engine.VE, body)


def _bad_word(rng, config, spad_size, hbm_size):
    """A word that must fault where it stands: random bits, a header with a reserved bit,
    with dependencies beyond the window, an instruction of another engine type, or an
    instruction with a reserved bit set."""
    roll = rng.random()
    if roll < 0.3:
        return rng.getrandbits(64)
    if roll < 0.5:
        word = encode_header(UTop(rng.choice(list(Engine))))
        return word | 1 << rng.choice([10, 12, 13, 14, 15, 56, 60, 63])
    if roll < 0.6 and config.dep_window < MAX_DEP_WINDOW:
        return encode_header(UTop(Engine.VE, [], (rng.randint(config.dep_window + 1,
                                                              MAX_DEP_WINDOW),)))
    defn = rng.choice(INSTRUCTIONS)
    word = _instr(rng, defn, config, spad_size, hbm_size).encode()
    if roll < 0.8:
        return word                           # inside a µTOp of another engine: ILLEGAL_OPCODE
    spare = [b for b in range(8, 64) if defn.reserved_mask >> b & 1]
    return word | 1 << rng.choice(spare) if spare else rng.getrandbits(64)


def hostile_program(rng, config, spad_size, hbm_size):
    """A random hostile program for a context whose segments hold ``spad_size`` rows and
    ``hbm_size`` words: random raw words, random µTOps (:func:`random_program`), or a stream
    of µTOps mixing valid work, long vector loops (some faulting mid-loop), extreme field
    values, bodies of ``max_body``, bad words in the middle of the stream, random
    dependencies, and the ``restartable`` flag (true or false). About half the streams are
    valid work (chained, so without races), some with one fault somewhere in the middle.
    Some programs are longer than the instruction buffer (``imem_words``): streams of many
    µTOps, or random words past the buffer's size, so µTOps straddle the ring's end. Loops
    are shortened to :data:`LOOP_BUDGET` in total, and the program to
    :func:`max_hostile_words`."""
    roll = rng.random()
    if roll < 0.1:
        words = [rng.getrandbits(64) for _ in range(rng.randint(1, 30))]
    elif roll < 0.2:
        words = random_program(rng, config, rng.randint(1, 30))
    else:
        valid = rng.random() < 0.5
        n_utops = rng.randint(1, 8) if rng.random() < 0.93 else rng.randint(40, 90)
        bad_at = rng.randrange(n_utops) if valid and rng.random() < 0.4 else None
        items = []
        long_loops = 0
        for i in range(n_utops):
            kind = rng.random()
            if i == bad_at:
                kind = rng.choice([0.8, 0.95])        # an extreme µTOp or a bad word
            if kind < 0.25 and long_loops < 2:
                long_loops += 1
                utop = _loop_utop(rng, config, spad_size, hbm_size, valid=valid)
            elif kind < 0.4:
                utop = _me_utop(rng, config, spad_size, hbm_size)
            elif kind < 0.55:
                utop = _dma_utop(rng, config, spad_size, hbm_size)
            elif kind < 0.75:
                utop = _mixed_utop(rng, config, spad_size, hbm_size, loops=not valid)
            elif kind < 0.85:
                utop = _mixed_utop(rng, config, spad_size, hbm_size, extreme=True)
            elif kind < 0.9:
                utop = _long_body_utop(rng, config, spad_size, hbm_size)
            else:
                word = _bad_word(rng, config, spad_size, hbm_size)
                if items and isinstance(items[-1], UTop) and rng.random() < 0.5:
                    items[-1].body.append(Instr(None, raw=word))     # inside the last body
                else:
                    items.append(word)
                continue
            if (valid and i != bad_at) or rng.random() < 0.3:
                utop = _repaired(rng, utop, config, spad_size, hbm_size)
            if valid and rng.random() < 0.8:
                utop.deps = (1,)                      # a chain: no races
            else:
                n_deps = rng.choice([0, 0, 1, 1, 2, 3])
                utop.deps = tuple(sorted(rng.sample(range(1, config.dep_window + 1),
                                                    min(n_deps, config.dep_window))))
            utop.eoo = rng.random() < 0.3
            utop.restartable = rng.random() < 0.15
            utop.tag = rng.choice([0, i, 0xFFFF])
            items.append(utop)
        utops = [item for item in items if isinstance(item, UTop)]
        ending = rng.random()
        if utops and ending < 0.9:
            utops[-1].eop = True                  # usually the last µTOp ends the program
        elif utops and ending < 0.95:
            rng.choice(utops).eop = True          # ends early: the rest is never fetched
        words = encode_program(items)             # else no eop at all: FETCH_OOB at the end
        if rng.random() < 0.05:                   # garbage past the buffer's end
            end = rng.randint(config.imem_words, max_hostile_words(config))
            words += [rng.getrandbits(64) for _ in range(end - len(words))]
    return _shorten_loops(words[:max_hostile_words(config)], config)


def max_hostile_words(config):
    """The longest hostile program: the instruction buffer and a quarter more."""
    return config.imem_words + config.imem_words // 4


def _cost(instr, config):
    """Rows one instruction streams (an estimate of its cycles)."""
    a = instr.args
    if "kh" in a:
        return a["kh"] * a["kw"]
    if instr.op.mnemonic == "vldlut":
        return config.lut_rows
    return max([a[name] for name in ("n", "m", "rows") if name in a] or [1])


def _walk(words, config):
    """(word address, header, body length) of each µTOp the fetch would reach, in order, up
    to the first bad header (a context faults there: nothing after it runs)."""
    pc = 0
    while pc < len(words):
        try:
            utop, length = decode_header(words[pc], config)
        except DecodeError:
            return
        yield pc, utop, length
        pc += 1 + length


def _shorten_loops(words, config, budget=LOOP_BUDGET):
    """Lower the iteration counts of vector loops and ``mmloop``s (in place) so that the
    program's loops stream at most ``budget`` rows in total, and one loop at most LOOP_MAX."""
    words = list(words)
    for pc, utop, length in _walk(list(words), config):
        if utop.engine not in (Engine.VE, Engine.ME):
            continue
        decoded = []
        for word in words[pc + 1:pc + 1 + length]:
            try:
                decoded.append(decode_instr(word, utop.engine))
            except DecodeError:
                decoded.append(None)
        for i, instr in enumerate(decoded):
            if instr is None or not instr.repeats:
                continue
            inner = decoded[i + 1:i + 1 + instr.repeats]
            per_iteration = sum(_cost(x, config) if x else 1 for x in inner) or 1
            count = max(1, min(instr.args["count"], LOOP_MAX // per_iteration,
                               budget // per_iteration))
            budget = max(0, budget - count * per_iteration)
            if count != instr.args["count"]:
                instr.args["count"] = count
                words[pc + 1 + i] = encode_instr(instr.op, instr.args)
    return words


def victim_program(config):
    """The victim's program for ``config`` (assembly text), and the scratchpad rows and HBM
    words its segments need. It loads inputs and a second block by DMA, multiplies on an
    ME, runs vector work (partial vl, requantization, a table lookup, vector registers, a
    restartable loop, reductions) and stores its results to HBM."""
    k, lanes, m = config.array_rows, config.ve_lanes, 8
    rows = {}
    top = 0
    for name, count in (("inp", k + m), ("mm", m), ("e", m), ("f", m), ("q", m), ("v", m),
                        ("x", m), ("s", m), ("l", m), ("r", 1), ("aux", 32), ("walk", 32),
                        ("lut", config.lut_rows)):
        rows[name], top = top, top + count
    stored = rows["aux"] - rows["mm"]                 # rows mm .. r, stored to HBM
    h_aux = (k + m) * lanes
    h_out = h_aux + 32 * lanes
    r = rows
    text = f"""\
inp:    .dma
            dload {r['inp']}, 0, {k + m}
aux:    .dma
            dload {r['aux']}, {h_aux}, 32
gemm:   .me deps(inp) eoo
            ldw {r['inp']}, {k}
            mm {r['mm']}, {r['inp'] + k}, {m}
walk:   .ve deps(aux) restartable
            loop 32, 1, 1, 1
            vaddi {r['walk']}, {r['aux']}, 3, 1
ew:     .ve deps(gemm)
            vaddi {r['e']}, {r['mm']}, 7, {m}
            vsetvl {max(1, lanes // 2)}
            vmul {r['f']}, {r['e']}, {r['mm']}, {m}
            vsetvl {lanes}
            vsetq 1048576, 22, 3
            vrq {r['q']}, {r['f']}, {m}
            vld 5, {r['e']}
            vaddr {r['v']}, {r['q']}, 5, {m}
mix:    .ve deps(ew, walk)
            vmax {r['x']}, {r['v']}, {r['walk']}, {m}
            vlsum {r['s']}, {r['x']}, {m}
            vldlut {r['lut']}
            vlut {r['l']}, {r['q']}, {m}
            vrsum {r['r']}, {r['walk']}, 1, 32
        .dma deps(mix) eop
            dstore {h_out}, {r['mm']}, {stored}
"""
    return text, top, h_out + stored * lanes


# --- one run ---------------------------------------------------------------------------------

@dataclass
class FuzzCase:
    """One run: contexts, their settings and the initial memory, all from ``seed``."""
    seed: int
    policy: str
    contexts: list                 # ContextSpec per context (index = context number)
    victim: int                    # the victim's context number
    masks: list                    # (me_mask, ve_mask) per context
    priorities: list
    time_slice: int
    spad_init: np.ndarray          # the whole scratchpad (rows x lanes)
    hbm_init: np.ndarray           # the whole HBM
    arena: tuple                   # (rows, words) from 0 that hold every segment and gap
    prog_bases: list               # HBM word of each context's program (above the arena)

    @property
    def attackers(self):
        return [c for c in range(len(self.contexts)) if c != self.victim]


#: Largest gap before, between and after segments: rows, and HBM words per lane.
_SPAD_GAP, _HBM_GAP = 48, 40
#: The HBM words a campaign uses and checks, at most: a gigabyte HBM is not filled.
FUZZ_HBM_WORDS = 1 << 18


def _hbm_words(config):
    return min(config.hbm_words, FUZZ_HBM_WORDS)


def _layout(rng, sizes, gaps, total, what):
    """Bases for segments of ``sizes`` in a random physical order, each after a gap from
    ``gaps()``; returns (bases, end of the last gap)."""
    order = list(range(len(sizes)))
    rng.shuffle(order)
    bases = [0] * len(sizes)
    position = gaps()
    for c in order:
        bases[c] = position
        position += sizes[c] + gaps()
    if position > total:
        raise FuzzError(f"the configuration is too small for fuzzing: the segments need "
                        f"{position} {what}, it has {total}")
    return bases, position


def _sizes(rng, n_attackers, victim_size, total, gap_room, small, medium, large):
    """Random attacker segment sizes (rarely empty or one, else small, medium or large),
    scaled down to fit ``total`` with the victim's and room for the gaps."""
    room = max(0, (total - victim_size - gap_room) // max(n_attackers, 1))
    sizes = []
    for _ in range(n_attackers):
        roll = rng.random()
        size = (0 if roll < 0.03 else 1 if roll < 0.08 else rng.randint(2, small) if roll < 0.3
                else rng.randint(small, medium) if roll < 0.7 else rng.randint(medium, large))
        sizes.append(min(size, room))
    return sizes


def make_case(config, seed, policy):
    """The run of ``seed`` under ``policy`` (the policy does not change anything else)."""
    rng = random.Random(seed)
    n_attackers = rng.randint(1, min(3, config.n_ctx - 1))
    n = n_attackers + 1
    victim = rng.randrange(n)
    source, victim_rows, victim_words = victim_program(config)
    victim_words_program = assemble_program(source, source="victim", config=config).words
    lanes = config.ve_lanes
    spad_gaps = lambda: rng.choice([1, rng.randint(2, 8), rng.randint(8, _SPAD_GAP)])
    hbm_gaps = lambda: rng.choice([1, 2, 3, rng.randint(4, 16),
                                   rng.randint(16, _HBM_GAP * lanes)])
    # HBM: the segments from 0, the programs in the top quarter (each from a line's start).
    line = config.hbm_words_per_cycle
    hbm_words = _hbm_words(config)
    prog_area = -(-(hbm_words - hbm_words // 4) // line) * line
    spad_sizes = _sizes(rng, n_attackers, victim_rows, config.spad_rows, _SPAD_GAP * (n + 1),
                        16, 64, 160)
    hbm_sizes = _sizes(rng, n_attackers, victim_words, prog_area,
                       _HBM_GAP * lanes * (n + 1), 4 * lanes, 32 * lanes, 128 * lanes)
    spad_sizes.insert(victim, victim_rows)
    hbm_sizes.insert(victim, victim_words)
    spad_bases, spad_end = _layout(rng, spad_sizes, spad_gaps, config.spad_rows,
                                   "scratchpad rows")
    hbm_bases, hbm_end = _layout(rng, hbm_sizes, hbm_gaps, prog_area, "HBM words")
    contexts, prog_bases = [], []
    prog_next = prog_area
    for c in range(n):
        spad, hbm = Segment(spad_bases[c], spad_sizes[c]), Segment(hbm_bases[c], hbm_sizes[c])
        words = victim_words_program if c == victim else hostile_program(rng, config,
                                                                         spad.size, hbm.size)
        room = (hbm_words - prog_next) // 2 - (n - 1 - c) * len(victim_words_program)
        if c != victim:
            words = words[:max(1, room)]
        if prog_next + 2 * len(words) > hbm_words:
            raise FuzzError(f"the configuration is too small for fuzzing: the programs need "
                            f"more than the top quarter of HBM ({hbm_words // 4} words)")
        prog_bases.append(prog_next)
        prog_next += -(-2 * len(words) // line) * line
        contexts.append(ContextSpec(words, spad, hbm))
    masks = [(1 << c % config.n_me, 1 << c % config.n_ve) for c in range(n)]
    priorities = [rng.randint(0, 15) for _ in range(n)]
    time_slice = rng.choice([1, 8, 64, 512, 4096])
    # Memory: random words everywhere; an attacker's segments sometimes hold small values
    # (gather indices and the like that land inside the segment).
    data = np.random.default_rng(seed)
    spad_init = data.integers(-2**31, 2**31, (config.spad_rows, lanes), dtype=np.int64)
    hbm_init = data.integers(-2**31, 2**31, hbm_words, dtype=np.int64)
    for c in range(n):
        if c != victim and rng.random() < 0.5:
            spad, hbm = contexts[c].spad, contexts[c].hbm
            spad_init[spad.base:spad.base + spad.size] = data.integers(-8, 9, (spad.size, lanes))
            hbm_init[hbm.base:hbm.base + hbm.size] = data.integers(-8, 9, hbm.size)
    for base, spec in zip(prog_bases, contexts):      # the programs, where they are fetched
        halves = program_hbm_words(spec.program)
        hbm_init[base:base + len(halves)] = np.asarray(halves, np.int64).astype(np.uint32) \
            .view(np.int32)
    return FuzzCase(seed, policy, contexts, victim, masks, priorities, time_slice,
                    spad_init, hbm_init, (spad_end, hbm_end), prog_bases)


def _overlap(first, second, count):
    return count > 0 and first < second + count and second < first + count


class _Reference(GoldenNPU):
    """The golden model (race check on) that also notes, per context, where the spec leaves
    the result undefined within one µTOp: an instruction whose destination rows overlap
    its source rows (other than row for row, for the elementwise vector instructions), and
    an ``ldw`` of rows an earlier ``mm`` of its µTOp wrote."""

    def __init__(self, config):
        super().__init__(config, check_races=True)
        self._notes = []
        self._mm_rows = set()
        self._sstride = 1

    def _run_context(self, ctx):
        self._notes = []
        result = super()._run_context(ctx)
        result.undefined = self._notes
        return result

    def execute(self, engine, body, ctx):
        self._mm_rows, self._sstride = set(), 1
        super().execute(engine, body, ctx)

    def _check(self, instr):
        instr = super()._check(instr)
        a, name = instr.args, instr.op.mnemonic
        if name == "ldw" and self._mm_rows & set(range(a["src"], a["src"] + a["k"])):
            self._notes.append("ldw of rows an earlier mm of its µTOp wrote")
        elif name == "mm":
            if _overlap(a["dst"], a["src"], a["m"]):
                self._notes.append("mm with overlapping rows")
            self._mm_rows.update(range(a["dst"], a["dst"] + a["m"]))
        elif name == "dcfg":
            self._sstride = a["sstride"]
        elif name == "dgather":
            lanes = self.config.ve_lanes
            indices = range(a["idx"], a["idx"] + (a["rows"] + lanes - 1) // lanes)
            if any(a["dst"] + i * self._sstride in indices for i in range(a["rows"])):
                self._notes.append("dgather writing its index rows")
        return instr

    def _ve_instr(self, instr, ctx, state, dst_offset, src_offset):
        a = loop_operands(instr, dst_offset, src_offset)
        name = instr.op.mnemonic
        if "n" in a and "dst" in a and "stride" not in a:   # elementwise, row by row
            for source in ("a", "b", "src"):
                if source in a and a[source] != a["dst"] and _overlap(a["dst"], a[source], a["n"]):
                    self._notes.append(f"{name} with overlapping rows")
        elif "stride" in a and a["dst"] in {a["src"] + i * a["stride"] for i in range(a["n"])}:
            self._notes.append(f"{name} writing a row it reduces")
        elif "pitch" in a and a["dst"] in {a["src"] + dy * a["pitch"] + dx
                                           for dy in range(a["kh"]) for dx in range(a["kw"])}:
            self._notes.append(f"{name} writing a row it pools")
        return super()._ve_instr(instr, ctx, state, dst_offset, src_offset)


@dataclass
class _Expected:
    results: list                  # golden ContextOutcome per context (with .undefined)
    spad: np.ndarray               # memories after the golden run of every context
    hbm: np.ndarray
    victim_spad: np.ndarray        # after a golden run of the victim alone
    victim_hbm: np.ndarray
    undefined: list                # per context: whether the spec leaves its result undefined


def _expected(config, case):
    reference = _Reference(config)
    words = len(case.hbm_init)
    reference.spad[:], reference.hbm[:words] = case.spad_init, case.hbm_init
    results = reference.run(case.contexts)
    alone = GoldenNPU(config)
    alone.spad[:], alone.hbm[:words] = case.spad_init, case.hbm_init
    [victim] = alone.run([case.contexts[case.victim]])
    if victim.fault:
        raise AssertionError(f"seed {case.seed}: the victim's program faults on golden: "
                             f"{victim.fault.name} at {victim.fault_pc} ({victim.fault_detail})")
    # A false restartable flag matters only where µTOps restart: on borrowed engines.
    undefined = [bool(r.races or r.undefined or (r.restart_hazards and case.policy == "harvest"))
                 for r in results]
    return _Expected(results, reference.spad, reference.hbm[:words], alone.spad,
                     alone.hbm[:words], undefined)


@dataclass
class _Observed:
    """What a backend reports for one run (the golden model's own run on ``golden``)."""
    timed_out: bool
    cycles: int
    contexts: list                 # (Status, Fault, fault_pc) per context
    counters: list                 # counters per context (RTL only)
    engines: list
    spad: np.ndarray               # the memory read back (arena or whole)
    hbm: np.ndarray


def _observe_golden(expected, case):
    contexts = [(Status.FAULTED if r.fault else Status.DONE, r.fault,
                 r.fault_pc if r.fault else 0) for r in expected.results]
    return _Observed(False, 0, contexts, [], [], expected.spad, expected.hbm)


def _observe_rtl(config, backend, case, full, max_cycles):
    driver = Driver(config, backend)
    driver.set_policy(case.policy)
    driver.set_time_slice(case.time_slice)
    for c, spec in enumerate(case.contexts):
        me_mask, ve_mask = case.masks[c]
        driver.load_context(c, spec.program, spec.spad, spec.hbm, prog_base=case.prog_bases[c],
                            me_mask=me_mask,
                            ve_mask=ve_mask, priority=case.priorities[c])
    rows, words = (config.spad_rows, len(case.hbm_init)) if full else case.arena
    driver.write_spad(0, case.spad_init[:rows])
    driver.write_hbm(0, case.hbm_init[:words])
    run = driver.run(max_cycles=max_cycles, read_spad=[(0, rows)], read_hbm=[(0, words)])
    return _Observed(run.timed_out, run.cycles,
                     [(c.status, c.fault, c.fault_pc) for c in run.contexts],
                     [dict(c.counters) for c in run.contexts], run.engines,
                     run.spad[(0, rows)], run.hbm[(0, words)])


def _first_difference(label, observed, wanted, mask=None):
    """(number of differing words, a phrase naming the first) of two memories."""
    differ = observed != wanted
    if mask is not None:
        differ &= mask
    count = int(differ.sum())
    if not count:
        return 0, ""
    where = tuple(int(i) for i in np.argwhere(differ)[0])
    place = (f"{label} row {where[0]} lane {where[1]}" if len(where) == 2
             else f"{label} word {where[0]}")
    return count, f"{place}: {int(observed[where])} != {int(wanted[where])}"


def _masks(case, rows, words):
    """Boolean masks over the memory read back: outside every segment, and per context."""
    outside_rows, outside_words = np.ones(rows, bool), np.ones(words, bool)
    own = []
    for spec in case.contexts:
        spad, hbm = np.zeros(rows, bool), np.zeros(words, bool)
        spad[spec.spad.base:spec.spad.base + spec.spad.size] = True
        hbm[spec.hbm.base:spec.hbm.base + spec.hbm.size] = True
        outside_rows &= ~spad
        outside_words &= ~hbm
        own.append((spad, hbm))
    return outside_rows, outside_words, own


@dataclass
class RunOutcome:
    """The checks of one run: failures by check, and what was counted."""
    case: FuzzCase
    failures: list = field(default_factory=list)       # (check, reason)
    outcomes: list = field(default_factory=list)       # attackers' outcomes (DONE or fault)
    victim_done: bool = False
    victim_words_changed: int = 0
    outside_words_changed: int = 0
    attackers_compared: int = 0
    attackers_undefined: int = 0
    faults_excused: int = 0
    cross_checked: bool = False


def _check(config, case, expected, observed):
    outcome = RunOutcome(case)
    fail = lambda check, reason: outcome.failures.append((check, reason))
    # 1. every context finished; STATUS and FAULT agree.
    if observed.timed_out:
        states = ", ".join(f"ctx {c} {s.name}" for c, (s, _, _) in enumerate(observed.contexts))
        fail("hang", f"still running after {observed.cycles} cycles ({states})")
    for c, (status, fault, pc) in enumerate(observed.contexts):
        if status not in (Status.DONE, Status.FAULTED) and not observed.timed_out:
            fail("hang", f"ctx {c} ends {status.name}")
        elif status in (Status.DONE, Status.FAULTED) and \
                (status == Status.FAULTED) != (fault != Fault.NONE):
            fail("status", f"ctx {c}: STATUS {status.name} with FAULT {fault.name}")
    # 2. faults as on golden.
    for c, ((status, fault, pc), wanted) in enumerate(zip(observed.contexts, expected.results)):
        if c != case.victim:
            outcome.outcomes.append(fault.name if fault else status.name)
        if status not in (Status.DONE, Status.FAULTED):
            continue
        if fault != wanted.fault or (fault and pc != wanted.fault_pc):
            got = f"{fault.name} at {pc}" if fault else "no fault"
            want = f"{wanted.fault.name} at {wanted.fault_pc}" if wanted.fault else "no fault"
            program = case.contexts[c].program
            if _gathers(program) and (expected.undefined[c] or any(
                    _racy_gather(program, at, config)
                    for kind, at in ((fault, pc), (wanted.fault, wanted.fault_pc))
                    if kind == Fault.HBM_OOB)):
                outcome.faults_excused += 1     # gather indices from undefined data
                continue
            fail("fault", f"ctx {c}: {got}, golden {want}")
    rows, words = len(observed.spad), len(observed.hbm)
    outside_rows, outside_words, own = _masks(case, rows, words)
    # 3. the victim is done and its segments are those of its run alone.
    status, fault, _ = observed.contexts[case.victim]
    outcome.victim_done = status == Status.DONE and not fault
    if not outcome.victim_done:
        fail("victim", f"victim ctx {case.victim} ends {status.name} {fault.name}")
    spad, hbm = own[case.victim]
    changed = 0
    firsts = []
    for label, memory, wanted, mask in (("scratchpad", observed.spad, expected.victim_spad[:rows],
                                         spad[:, None]),
                                        ("HBM", observed.hbm, expected.victim_hbm[:words], hbm)):
        count, first = _first_difference(label, memory, wanted, mask)
        changed += count
        firsts += [first] if first else []
    outcome.victim_words_changed = changed
    if changed:
        fail("victim", f"victim ctx {case.victim}: {changed} words differ from its run alone "
                       f"({firsts[0]})")
    # 4. nothing outside every segment changed.
    changed = 0
    firsts = []
    for label, memory, initial, mask in (("scratchpad", observed.spad, case.spad_init[:rows],
                                          outside_rows[:, None]),
                                         ("HBM", observed.hbm, case.hbm_init[:words],
                                          outside_words)):
        count, first = _first_difference(label, memory, initial, mask)
        changed += count
        firsts += [first] if first else []
    outcome.outside_words_changed = changed
    if changed:
        fail("outside", f"{changed} words outside every segment changed ({firsts[0]})")
    # Attackers that did not fault: their own segments as on golden, where defined.
    for c in case.attackers:
        wanted = expected.results[c]
        if wanted.fault or observed.contexts[c][1]:
            continue
        if expected.undefined[c]:
            outcome.attackers_undefined += 1
            continue
        outcome.attackers_compared += 1
        spad, hbm = own[c]
        for label, memory, golden, mask in (("scratchpad", observed.spad, expected.spad[:rows],
                                             spad[:, None]),
                                            ("HBM", observed.hbm, expected.hbm[:words], hbm)):
            count, first = _first_difference(label, memory, golden, mask)
            if count:
                fail("attacker", f"ctx {c}: {count} words of its own segments differ from "
                                 f"golden ({first})")
    return outcome


def _gathers(words):
    """Whether a program holds a ``dgather`` (its faults depend on data)."""
    return any(w & 0xFF == BY_MNEMONIC["dgather"].opcode for w in words)


def _racy_gather(words, pc, config):
    """Whether the µTOp at word ``pc`` holds a ``dgather`` and is unordered with another
    µTOp closer than the window: that one may write the gather's indices, so which of
    them faults first is a race (the golden model, stopping at its first fault, does not
    see it)."""
    headers, target = [], None
    for position, utop, length in _walk(words, config):
        if position == pc:
            target = len(headers)
            if not _gathers(words[position + 1:position + 1 + length]):
                return False
        headers.append(utop.deps)
    if target is None:
        return False
    window = config.dep_window
    before = []                   # per µTOp: the µTOps known to retire before it starts
    for j, deps in enumerate(headers):
        known = set()
        for distance in list(deps) + [window]:
            if j - distance >= 0:
                known |= {j - distance} | before[j - distance]
        before.append(known)
    near = range(max(0, target - window + 1), min(len(headers), target + window))
    return any(i not in before[target] if i < target else target not in before[i]
               for i in near if i != target)


def _compare_runs(first, second):
    """Reasons two RTL runs of one script differ (empty when identical)."""
    reasons = []
    if (first.timed_out, first.cycles) != (second.timed_out, second.cycles):
        reasons.append(f"run of {first.cycles} vs {second.cycles} cycles")
    for c, (a, b) in enumerate(zip(first.contexts, second.contexts)):
        if a != b:
            reasons.append(f"ctx {c}: {a[0].name} {a[1].name} at {a[2]} vs "
                           f"{b[0].name} {b[1].name} at {b[2]}")
    for c, (a, b) in enumerate(zip(first.counters, second.counters)):
        for name in a:
            if a[name] != b.get(name):
                reasons.append(f"ctx {c}: {name} {a[name]} vs {b.get(name)}")
    for e, (a, b) in enumerate(zip(first.engines, second.engines)):
        for name in a:
            if a[name] != b.get(name):
                reasons.append(f"engine {e}: {name} {a[name]} vs {b.get(name)}")
    for label, a, b in (("scratchpad", first.spad, second.spad), ("HBM", first.hbm, second.hbm)):
        count, where = _first_difference(label, a, b)
        if count:
            reasons.append(f"{count} {label} words differ ({where})")
    return reasons


def run_case(config, case, backend="golden", *, full=True, max_cycles=100_000, other=None):
    """Run one case on ``backend`` (a name or a backend object) and check it; with
    ``other`` (a backend object) run it there too and compare. Returns a RunOutcome."""
    expected = _expected(config, case)
    if backend == "golden":
        observed = _observe_golden(expected, case)
    else:
        observed = _observe_rtl(config, backend, case, full, max_cycles)
    outcome = _check(config, case, expected, observed)
    if other is not None:
        second = _observe_rtl(config, other, case, full, max_cycles)
        outcome.cross_checked = True
        outcome.failures += [("cross-check", f"{getattr(other, 'name', other)}: {reason}")
                             for reason in _compare_runs(observed, second)]
    return outcome


# --- a campaign ------------------------------------------------------------------------------

@dataclass
class FuzzFailure:
    seed: int
    policy: str
    reasons: list                  # one line each

    def to_dict(self):
        return {"seed": self.seed, "policy": self.policy, "reasons": list(self.reasons)}


CHECKS = ("hang", "status", "fault", "victim", "outside", "attacker", "cross-check")


@dataclass
class FuzzReport:
    backend: str
    config: str
    seed: int
    programs: int
    policies: list
    full_memory: bool
    seconds: float = 0.0           # wall clock of the runs (not the build)
    setup_seconds: float = 0.0     # building the backend(s)
    outcomes: dict = field(default_factory=dict)     # policy -> outcome -> attacker contexts
    runs_per_policy: dict = field(default_factory=dict)
    checks: dict = field(default_factory=lambda: {check: 0 for check in CHECKS})
    victims_done: int = 0
    victim_words_changed: int = 0
    outside_words_changed: int = 0
    attackers_compared: int = 0
    attackers_undefined: int = 0
    faults_excused: int = 0        # fault mismatches of gathers whose indices race
    cross_checked: int = 0
    cross_check_backend: str | None = None
    mismatches: int = 0            # runs where a backend disagreed with golden or the other
    failures: list = field(default_factory=list)     # FuzzFailure

    @property
    def programs_per_second(self):
        return self.programs / self.seconds if self.seconds > 0 else 0.0

    @property
    def hangs(self):
        return self.checks["hang"]

    @property
    def passed(self):
        return not self.failures

    def add(self, outcome):
        case = outcome.case
        self.runs_per_policy[case.policy] = self.runs_per_policy.get(case.policy, 0) + 1
        counts = self.outcomes.setdefault(case.policy, {})
        for name in outcome.outcomes:
            counts[name] = counts.get(name, 0) + 1
        self.victims_done += outcome.victim_done
        self.victim_words_changed += outcome.victim_words_changed
        self.outside_words_changed += outcome.outside_words_changed
        self.attackers_compared += outcome.attackers_compared
        self.attackers_undefined += outcome.attackers_undefined
        self.faults_excused += outcome.faults_excused
        self.cross_checked += outcome.cross_checked
        checks = {check for check, _ in outcome.failures}
        for check in checks:
            self.checks[check] += 1
        self.mismatches += bool(checks & {"status", "fault", "attacker", "cross-check"})
        if outcome.failures:
            self.failures.append(FuzzFailure(case.seed, case.policy,
                                             [reason for _, reason in outcome.failures]))

    def to_dict(self):
        return {
            "backend": self.backend, "config": self.config, "seed": self.seed,
            "programs": self.programs, "policies": list(self.policies),
            "memory_checked": "whole" if self.full_memory else "arena",
            "seconds": round(self.seconds, 3), "setup_seconds": round(self.setup_seconds, 3),
            "programs_per_second": round(self.programs_per_second, 3),
            "runs_per_policy": dict(self.runs_per_policy),
            "outcomes": {policy: dict(sorted(counts.items()))
                         for policy, counts in self.outcomes.items()},
            "victims_done": self.victims_done, "mismatches": self.mismatches,
            "hangs": self.hangs, "checks_failed": dict(self.checks),
            "victim_words_changed": self.victim_words_changed,
            "outside_words_changed": self.outside_words_changed,
            "attackers_compared": self.attackers_compared,
            "attackers_undefined": self.attackers_undefined,
            "faults_excused": self.faults_excused,
            "cross_checked": self.cross_checked,
            "cross_check_backend": self.cross_check_backend,
            "failed": len(self.failures),
            "failures": [failure.to_dict() for failure in self.failures],
            "passed": self.passed,
        }

    def text(self):
        lines = [f"fuzz: {self.programs} programs on {self.backend} (config {self.config}, "
                 f"seeds {self.seed}..{self.seed + self.programs - 1}, policies "
                 f"{', '.join(self.policies)})",
                 f"  speed       {self.programs_per_second:.2f} programs/s ({self.seconds:.1f} s"
                 f"; setup {self.setup_seconds:.1f} s not counted)"]
        for policy in self.policies:
            counts = self.outcomes.get(policy, {})
            done = counts.get("DONE", 0)
            faults = ", ".join(f"{name} {n}" for name, n in sorted(counts.items())
                               if name != "DONE")
            faulted = sum(n for name, n in counts.items() if name != "DONE")
            lines.append(f"  {policy:<11} {self.runs_per_policy.get(policy, 0)} runs; attackers "
                         f"done {done}, faulted {faulted}" + (f" ({faults})" if faults else ""))
        lines += [
            f"  victims     {self.victims_done} of {self.programs} done, "
            f"{self.victim_words_changed} victim words changed",
            f"  outside     {self.outside_words_changed} words outside the segments changed "
            f"({'whole memory' if self.full_memory else 'arena'} read back)",
            f"  attackers   {self.attackers_compared} unfaulted compared with golden, "
            f"{self.attackers_undefined} skipped (result undefined by the spec); "
            f"{self.faults_excused} fault differences excused (gather indices racing)",
            f"  mismatches  {self.mismatches}",
            f"  hangs       {self.hangs}",
        ]
        if self.cross_check_backend:
            lines.append(f"  cross-check {self.cross_checked} runs also on "
                         f"{self.cross_check_backend}: "
                         f"{self.checks['cross-check']} differ")
        for failure in self.failures:
            more = f" (+{len(failure.reasons) - 1} more)" if len(failure.reasons) > 1 else ""
            lines.append(f"FAIL seed {failure.seed} [{failure.policy}]: "
                         f"{failure.reasons[0]}{more}")
        lines.append(f"{self.programs - len(self.failures)} passed, {len(self.failures)} failed"
                     + ("; replay one with --seed SEED --programs 1 --policy POLICY"
                        if self.failures else ""))
        return "\n".join(lines)


def _policies(policies):
    if isinstance(policies, str):
        policies = list(POLICIES) if policies == "all" else [policies]
    policies = list(policies)
    for policy in policies:
        if policy not in POLICIES:
            raise FuzzError(f"unknown policy {policy!r}; expected one of "
                            f"{', '.join(POLICIES)} or all")
    if not policies:
        raise FuzzError("no policy given")
    return policies


def _warm(backend):
    """Build what a backend builds once (the Verilator model, the pysim simulation)."""
    backend.execute([ops.CsrRead(register_address("ID"))])


def run_campaign(config, backend="golden", programs=100, seed=0, policies="all",
                 cross_check=0, *, config_name="custom", full_memory=None,
                 max_cycles=100_000, progress=None):
    """Run ``programs`` runs (seeds ``seed``, ``seed + 1``, ...) on ``backend`` and check
    each (see the module docstring). The policy of seed s is ``policies[s % len]``, so a
    run replays alone with the same seed. ``cross_check`` K: the first K runs also run on
    the other RTL backend. ``full_memory``: write and read the whole memory (default: on
    golden and verilator; pysim writes and reads the arena only). ``progress(done, total)``
    is called after each run. Returns a FuzzReport."""
    policies = _policies(policies)
    if backend not in BACKENDS:
        raise FuzzError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    for name, value, low in (("programs", programs, 1), ("cross-check", cross_check, 0),
                             ("max cycles", max_cycles, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise FuzzError(f"{name} must be an integer >= {low}, not {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise FuzzError(f"seed must be an integer >= 0, not {seed!r}")
    if cross_check and backend == "golden":
        raise FuzzError("cross-check needs an RTL backend (pysim or verilator)")
    if cross_check > programs:
        raise FuzzError(f"cross-check {cross_check} is more than the {programs} programs")
    if config.n_ctx < 2:
        raise FuzzError(f"fuzzing needs at least 2 contexts (an attacker and the victim); the "
                        f"configuration has {config.n_ctx}")
    source, victim_rows, victim_words = victim_program(config)
    try:
        words = assemble_program(source, source="victim", config=config).words
        [alone] = GoldenNPU(config, check_races=True).run(
            [ContextSpec(words, Segment(0, victim_rows), Segment(0, victim_words))])
    except ValueError as error:
        raise FuzzError(f"the victim's program does not fit the configuration: {error}") from None
    if alone.fault or alone.races or alone.restart_hazards:
        raise FuzzError(f"the victim's program is not valid on this configuration: "
                        f"{alone.fault.name} {alone.fault_detail} {alone.races} "
                        f"{alone.restart_hazards}")
    n = min(3, config.n_ctx - 1) + 1
    for what, need, total in (("scratchpad rows", victim_rows + _SPAD_GAP * (n + 1),
                               config.spad_rows),
                              ("HBM words", victim_words + _HBM_GAP * config.ve_lanes * (n + 1),
                               _hbm_words(config))):
        if need > total:
            raise FuzzError(f"the configuration is too small for fuzzing: the victim and the "
                            f"gaps need {need} {what}, it has {total}")
    full = backend != "pysim" if full_memory is None else full_memory
    report = FuzzReport(backend, config_name, seed, programs, policies, full)
    start = time.perf_counter()
    primary = other = None
    try:
        if backend != "golden":
            primary = make_backend(backend, config)
            _warm(primary)
            if cross_check:
                report.cross_check_backend = "verilator" if backend == "pysim" else "pysim"
                other = make_backend(report.cross_check_backend, config)
                _warm(other)
    except DriverError as error:
        raise FuzzError(str(error)) from None
    report.setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(programs):
        s = seed + i
        case = make_case(config, s, policies[s % len(policies)])
        outcome = run_case(config, case, primary or "golden", full=full, max_cycles=max_cycles,
                           other=other if i < cross_check else None)
        report.add(outcome)
        if progress:
            progress(i + 1, programs)
    report.seconds = time.perf_counter() - start
    return report
