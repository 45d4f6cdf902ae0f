"""Program builder: µTOps with the memory they touch, dependencies derived from it.

The compiler's lowerings append µTOps together with the scratchpad rows and HBM words
they read and write. The builder turns that into dependency masks: a µTOp waits for every
earlier µTOp closer than ``dep_window`` that writes what it reads (RAW), reads what it
writes (WAR) or writes what it writes (WAW). Older µTOps are ordered by the window rule
(isa/SPEC.md), so nothing else is needed, and µTOps that share no memory stay free to run
on different engines at once: that is how a program tiled to one engine spreads over any
number of them.

The builder also owns the vNPU's two address spaces: a first-fit allocator of scratchpad
rows (regions are freed and reused; the dependency rule makes reuse safe) and a bump
allocator of HBM words, with the host data (weights, inputs) that belongs in HBM.
"""

import bisect
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from isa.asm import format_items
from isa.encoding import BY_MNEMONIC, Engine, Instr, UTop, encode_program, instr

__all__ = ["CompileError", "Program", "ProgramBuilder", "Region", "PlannedUTop", "k_runs", "row_spans", "run_body",
           "split_body"]


class CompileError(ValueError):
    """The operator cannot be compiled for this vNPU; the message names the limit."""


def row_spans(count, most=256):
    """(offset, size) pieces of a row range: one instruction moves at most ``most`` rows."""
    return [(first, min(most, count - first)) for first in range(0, count, most)]


def k_runs(w_src, x_src, first, stop, key=lambda kt: None):
    """K tiles first..stop-1 of a GEMM as runs (first tile, count, ldw source stride, mm
    source stride) in which the ``ldw`` source ``w_src(kt)`` and the ``mm`` source
    ``x_src(kt)`` move by fixed strides and ``key(kt)`` (the ldw's other fields) stays the
    same: an ``mmloop`` each (:func:`run_body`)."""
    stride_field = BY_MNEMONIC["mmloop"].field("w_stride")
    most = BY_MNEMONIC["mmloop"].field("count").max
    runs, kt = [], first
    while kt < stop:
        n, w_stride, x_stride = 1, 0, 0
        if kt + 1 < stop:
            w_stride, x_stride = w_src(kt + 1) - w_src(kt), x_src(kt + 1) - x_src(kt)
            if all(stride_field.min <= s <= stride_field.max for s in (w_stride, x_stride)):
                w0, x0, k0 = w_src(kt), x_src(kt), key(kt)
                while (kt + n < stop and n < most and w_src(kt + n) == w0 + n * w_stride
                       and x_src(kt + n) == x0 + n * x_stride and key(kt + n) == k0):
                    n += 1
        if n == 1:
            w_stride = x_stride = 0
        runs.append((kt, n, w_stride, x_stride))
        kt += n
    return runs


def run_body(run, ldw, mm):
    """The instructions of a :func:`k_runs` run: ``ldw(kt)`` and ``mm(kt)`` of its first
    tile, after an ``mmloop`` when it has more than one (the mm then accumulates)."""
    kt, n, w_stride, x_stride = run
    return ([instr("mmloop", n, w_stride, x_stride)] if n > 1 else []) + [ldw(kt), mm(kt)]


def _state_key(i):
    """The engine state an instruction sets (it lasts until the µTOp ends), or None:
    weights (ldw), requantization (vsetq), lookup table (vldlut), a vector register (vld),
    vector length (vsetvl), copy shape (dcfg), gather base (dbase)."""
    mnemonic = i.op.mnemonic if i.op is not None else None
    if mnemonic == "vld":
        return ("vld", i.args["vd"])
    if mnemonic in ("ldw", "vsetq", "vldlut", "vsetvl", "dcfg", "dbase"):
        return mnemonic
    return None


def split_body(body, room, what):
    """A µTOp body of any length as bodies of at most ``room`` instructions that run one
    after the other to the same effect. State instructions are held back until the next
    instruction that works, so each piece starts by setting the engine state the earlier
    pieces left set (state does not survive a µTOp, isa/SPEC.md), each once, with its
    latest value; a `loop` stays in one piece with its body, an `mmloop` with its pair (the
    weights it leaves are its last iteration's). Memory carries everything
    else, so the body must not write the rows its state instructions read (the compiler's
    tables, weights and parameters never are). A body that fits is returned as it is; one
    that must be split may not use `vsetvl` (a replayed `vld` would see another vl) or set
    state inside a loop."""
    if len(body) <= room:
        return [list(body)]
    for i in body:
        if i.op is not None and i.op.mnemonic == "vsetvl":
            raise CompileError(f"{what}: a body with vsetvl cannot be split across µTOps "
                               f"(max_body {room})")
    atoms, i = [], 0
    while i < len(body):
        size = 1 + body[i].repeats
        looping = body[i].op is not None and body[i].op.mnemonic == "loop"
        if looping and any(_state_key(j) for j in body[i + 1:i + size]):
            raise CompileError(f"{what}: a loop that sets engine state cannot be split "
                               f"across µTOps (max_body {room})")
        atoms.append(body[i:i + size])
        i += size
    pieces, piece, state, pending = [], [], {}, []
    for atom in atoms:
        key = _state_key(atom[0]) if len(atom) == 1 else None
        if key is not None:
            state.pop(key, None)
            state[key] = atom[0]
            pending = [p for p in pending if _state_key(p) != key] + atom
            continue
        mmloop = atom[0].op is not None and atom[0].op.mnemonic == "mmloop"
        if len(piece) + len(pending) + len(atom) > room and piece:
            pieces.append(piece)
            piece, pending = [], list(state.values())
        if mmloop:                      # it loads its own weights
            pending = [p for p in pending if _state_key(p) != "ldw"]
        if len(piece) + len(pending) + len(atom) > room:
            raise CompileError(f"{what}: {len(pending) + len(atom)} instructions must share one "
                               f"µTOp ({len(pending)} setting engine state, then "
                               f"{'a loop' if len(atom) > 1 else 'one that uses it'}); "
                               f"max_body is {room}")
        piece += pending + atom
        pending = []
        if mmloop:                      # the weights it leaves are its last iteration's
            a, ldw = atom[0].args, atom[1]
            state.pop("ldw", None)
            state["ldw"] = Instr(ldw.op, dict(ldw.args, src=ldw.args["src"]
                                               + (a["count"] - 1) * a["w_stride"]))
    if piece:
        pieces.append(piece)
    return pieces


@dataclass(frozen=True)
class Region:
    """A range of one address space: scratchpad rows or HBM words."""
    space: str      # "spad" or "hbm"
    start: int
    size: int

    @property
    def stop(self):
        return self.start + self.size

    def overlaps(self, other):
        return (self.space == other.space and self.start < other.stop
                and other.start < self.stop)


class _RegionIndex:
    """Regions of a µTOp indexed per address space (starts sorted, the running maximum of
    their stops), so that whether any overlaps a region takes a binary search."""

    def __init__(self, regions):
        spaces = {}
        for r in regions:
            spaces.setdefault(r.space, []).append((r.start, r.stop))
        self._spaces = {}
        for space, pairs in spaces.items():
            pairs.sort()
            stops, top = [], None
            for _, stop in pairs:
                top = stop if top is None else max(top, stop)
                stops.append(top)
            self._spaces[space] = ([start for start, _ in pairs], stops)

    def hits(self, region):
        """Does any indexed region overlap ``region`` (as Region.overlaps)?"""
        if region.space not in self._spaces:
            return False
        starts, stops = self._spaces[region.space]
        i = bisect.bisect_left(starts, region.stop)      # those starting before its stop
        return i > 0 and stops[i - 1] > region.start


@dataclass
class PlannedUTop:
    """A µTOp as the compiler plans it: engine type and body (isa.encoding.Instr), the
    memory it touches (kept while it is within the dependency window of the µTOps planned
    after it, then dropped), and the dependencies that follow from that.

    ``restartable``: nothing it reads is also written by it, so run again after a partial
    run it gives the same result, and the harvest policy may lend it another tenant's
    engine (and the owner may preempt it). Lowerings declare a temporary a µTOp writes and
    then reads as a write only; the golden model's restart check holds them to it."""
    engine: Engine
    body: list
    name: str
    reads: list
    writes: list
    eoo: bool = False
    deps: set = field(default_factory=set)      # indices of earlier µTOps
    restartable: bool = field(init=False)

    def __post_init__(self):
        self.restartable = not any(w.overlaps(r) for w in self.writes for r in self.reads)


@dataclass
class Program:
    """A compiled program: its µTOps (isa.encoding.UTop), their 64-bit words, the name of
    each µTOp, and µTOp counts per engine type."""
    utops: list
    words: list
    names: list
    per_engine: dict

    @property
    def n_utops(self):
        return len(self.utops)

    @property
    def listing(self):
        """Assembly text of the program, each µTOp headed by its name (assembling it gives
        the same words)."""
        lines = format_items(self.utops).splitlines()
        headers = [i for i, line in enumerate(lines) if line.startswith(".")]
        for i, name in zip(headers, self.names):
            lines[i] += f": {name}"
        return "\n".join(lines) + "\n"


class ProgramBuilder:
    """Collects µTOps for one vNPU of ``spad_rows`` rows and ``hbm_words`` words."""

    def __init__(self, config, *, spad_rows=None, hbm_words=None):
        self.config = config
        self.spad_rows = config.spad_rows if spad_rows is None else spad_rows
        self.hbm_words = config.hbm_words if hbm_words is None else hbm_words
        self.utops = []
        self._touched = []     # per µTOp: a _RegionIndex of what it reads and writes
        self._spad_used = []            # allocated or resting (start, size), sorted
        self._resting = []              # (µTOp count when reusable, (start, size)) freed
        self.spad_peak = 0
        self._lifted = False            # inside lifted(): allocation questions only
        self.hbm_top = 0
        self.hbm_image = {}             # HBM word address -> int array placed there by the host

    # --- memory --------------------------------------------------------------------------

    def alloc(self, rows, what):
        """A best-fit scratchpad region of ``rows`` rows. Freed regions rest until
        ``dep_window`` more µTOps are planned (then the window rule orders the new user
        after the old ones anyway, so reuse adds no dependency that stalls); they are
        taken earlier only when nothing else fits."""
        if rows < 1:
            raise CompileError(f"{what}: cannot allocate {rows} scratchpad rows")
        if self._lifted:
            raise RuntimeError(f"{what}: allocated while regions are lifted")
        base = self._place(rows, self._spad_used, self._resting)
        if base is None:
            largest = self.largest_free_piece()
            raise CompileError(f"{what} needs {rows} scratchpad rows in one piece; of the "
                               f"vNPU's {self.spad_rows} rows {self.free_rows} are free, the "
                               f"largest free piece {largest} rows (a larger `spad_rows`, of the "
                               f"config or the vNPU, lifts the limit)")
        self.spad_peak = max(self.spad_peak, base + rows)
        return Region("spad", base, rows)

    def fits_all(self, sizes):
        """Would allocations of ``sizes`` rows, in this order, all succeed now (by
        :meth:`alloc`'s rules, with no µTOp planned in between)?"""
        used, resting = list(self._spad_used), list(self._resting)
        return all(self._place(rows, used, resting) is not None for rows in sizes)

    @contextmanager
    def lifted(self, regions):
        """Within the block, allocation questions (fits_all, free_rows,
        largest_free_piece) are answered as if ``regions`` (allocated, not freed) were
        free: what would fit if they were given back. Allocating meanwhile is an error."""
        pieces = [(r.start, r.size) for r in regions]
        resting = {piece for _, piece in self._resting}
        for piece in pieces:
            if piece not in self._spad_used or piece in resting:
                raise ValueError(f"scratchpad rows {piece[0]}..{sum(piece) - 1} are not "
                                 f"allocated")
        self._spad_used = [p for p in self._spad_used if p not in pieces]
        self._lifted = True
        try:
            yield
        finally:
            self._lifted = False
            self._spad_used = sorted(self._spad_used + pieces)

    def _place(self, rows, used, resting):
        """:meth:`alloc`'s rule on the pieces ``used`` and ``resting`` (both updated): the
        start of the best fit, resting pieces released when due or when nothing else fits;
        None if nothing fits."""
        self._release(used, resting, lambda ready: ready <= len(self.utops))
        base = self._best_fit(rows, used)
        if base is None and resting:
            self._release(used, resting, lambda ready: True)
            base = self._best_fit(rows, used)
        if base is not None:
            used.append((base, rows))
            used.sort()
        return base

    def _gaps(self, used=None):
        """(start, size) of each free piece between the ``used`` pieces (default: all
        allocated or resting)."""
        base = 0
        for start, size in (self._spad_used if used is None else used) + [(self.spad_rows, 0)]:
            if start > base:
                yield base, start - base
            base = max(base, start + size)

    def largest_free_piece(self):
        """The most rows one allocation could get now (resting regions counted free)."""
        resting = {piece for _, piece in self._resting}
        return max((size for _, size in self._gaps([p for p in self._spad_used
                                                    if p not in resting])), default=0)

    def _best_fit(self, rows, used):
        """The start of the smallest free gap between ``used`` of at least ``rows`` rows,
        or None."""
        fits = [(size, start) for start, size in self._gaps(used) if size >= rows]
        return min(fits)[1] if fits else None

    @staticmethod
    def _release(used, resting, due):
        for ready, piece in [r for r in resting if due(r[0])]:
            resting.remove((ready, piece))
            used.remove(piece)

    @property
    def free_rows(self):
        """Scratchpad rows not allocated (not necessarily in one piece)."""
        return self.spad_rows - sum(size for _, size in self._spad_used) + sum(
            size for _, (_, size) in self._resting)

    def free(self, region):
        """Give ``region`` back (it rests first: see :meth:`alloc`)."""
        piece = (region.start, region.size)
        if piece not in self._spad_used or any(p == piece for _, p in self._resting):
            raise ValueError(f"scratchpad rows {region.start}..{region.stop - 1} are not allocated")
        self._resting.append((len(self.utops) + self.config.dep_window, piece))

    def hbm(self, words, what, data=None):
        """Bump-allocate ``words`` HBM words; ``data`` (if given) is written there by the host."""
        if self.hbm_top + words > self.hbm_words:
            raise CompileError(f"{what} needs {words} HBM words; {self.hbm_words - self.hbm_top} "
                               f"of the vNPU's {self.hbm_words} are left (a config with a larger "
                               f"`hbm_words` lifts the limit)")
        region = Region("hbm", self.hbm_top, words)
        self.hbm_top += words
        if data is not None:
            self.hbm_image[region.start] = np.asarray(data, dtype=np.int64).reshape(-1)
        return region

    # --- µTOps ---------------------------------------------------------------------------

    def utop(self, engine, body, *, reads=(), writes=(), name="", eoo=False):
        """Append a µTOp of ``engine`` (an Engine) running ``body`` (isa.encoding.Instr);
        its dependencies follow from ``reads``/``writes`` (Regions)."""
        if not body:
            raise CompileError(f"µTOp {name} has an empty body")
        if not all(isinstance(i, Instr) for i in body):
            raise TypeError(f"µTOp {name}: a body is a list of isa.encoding.Instr")
        if len(body) > self.config.max_body:
            raise CompileError(f"µTOp {name} has {len(body)} instructions; max_body is "
                               f"{self.config.max_body}")
        new = PlannedUTop(Engine(engine), list(body), name or f"u{len(self.utops)}", list(reads), list(writes),
                   eoo)
        index = len(self.utops)
        reads = _RegionIndex(new.reads)
        for j in range(max(0, index - self.config.dep_window), index):
            old = self.utops[j]
            if (any(reads.hits(w) for w in old.writes)
                    or any(self._touched[j].hits(w) for w in new.writes)):
                new.deps.add(j)
        self.utops.append(new)
        self._touched.append(_RegionIndex(new.reads + new.writes))
        # A µTOp out of the dependency window is never compared again: what it touched is
        # dropped, so the compiler's memory does not grow with it (models of 10M words).
        gone = index - self.config.dep_window
        if gone >= 0:
            self._touched[gone] = None
            self.utops[gone].reads = self.utops[gone].writes = ()
        return new

    def split_utop(self, engine, body, *, reads=(), writes=(), name=""):
        """µTOps for a body of any length (:func:`split_body`), each declaring ``reads``
        and ``writes``; pieces of one body therefore run in order. The caller declares as
        read whatever a later piece reads after an earlier one wrote it."""
        pieces = split_body(list(body), self.config.max_body, name)
        for k, piece in enumerate(pieces):
            self.utop(engine, piece, reads=reads, writes=writes,
                      name=name if len(pieces) == 1 else f"{name}#{k}")

    def end_operator(self):
        """Mark the last µTOp as the end of an ML operator (the v10 policy gangs on it)."""
        if self.utops:
            self.utops[-1].eoo = True

    def build(self):
        """Encode; the last µTOp ends the program."""
        if not self.utops:
            raise CompileError("the program has no µTOps")
        last = len(self.utops) - 1
        utops = [UTop(u.engine, u.body, deps=tuple(i - j for j in sorted(u.deps, reverse=True)),
                      eoo=u.eoo or i == last, eop=i == last, restartable=u.restartable)
                 for i, u in enumerate(self.utops)]
        words = encode_program(utops)
        if len(words) > self.config.max_prog_words:
            raise CompileError(f"the program compiles to {len(words)} words; HBM holds at "
                               f"most {self.config.max_prog_words} (half its `hbm_words`, "
                               f"{self.config.hbm_words}: a config with more lifts the limit)")
        per_engine = {engine.name.lower(): sum(u.engine == engine for u in self.utops)
                      for engine in Engine}
        return Program(utops, words, [u.name for u in self.utops], per_engine)
