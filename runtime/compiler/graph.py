"""The model compiler: int8 ML operators lowered to one µTOp program, with an exact
integer reference computed alongside.

Every operator method of :class:`Graph` does two things: it appends µTOps (tiled to one
engine, dependencies derived from the memory they touch, see builder.py) and it
computes, in plain numpy, the integers those µTOps must produce (``Tensor.ref``). The
golden model and the RTL then have to reproduce ``ref`` bit for bit.

Activation layout: a tensor of ``rows`` x ``cols`` int8 values lives in the scratchpad as
``cols / ve_lanes`` *tiles*, tile t holding columns t*L..t*L+L-1 of every row in ``rows``
consecutive rows. A tile is what one systolic pass consumes (a K slice) and produces (an
output column tile), so operators chain without relayout. Images (batch, h, w, c) use the
same layout with one row per pixel of a grid with a zero ring around each image (``Image``:
ring 1 unless a convolution's taps reach further): a convolution's taps are shifted views
of its input (im2col by addressing, no copy), a strided one's of the phase images the VE
or the DMA gathers first (``conv``), and pooling clips its windows at the ring.

Weights, biases, tables and inputs are placed in HBM by the host; weights stream into a
ring of scratchpad buffers per layer (DMA of the next column panel overlaps the MEs on
the current one), or, when a layer runs by bands, groups of column panels stay loaded
while every band passes under them, whichever the tiler (tiler.py) estimates faster;
activations stay in the scratchpad while they fit. When an allocation
finds no room, the activation used least recently by the operators (and not by the one
being lowered) is *spilled*: stored to an HBM region of its own and its rows freed; the
next operator that reads it loads it back, wherever there is room then (``resident``).
A linear layer whose output does not fit, or a row-local operator (a residual Add, a
layer norm, a Concat: ``rowwise``) whose inputs and output do not, runs by bands of rows:
the output is stored to HBM band by band and read back by bands by the next such operator
(``_banded_gemm``, ``_by_bands``, ``load_band``); convolution and pooling run by bands of
image lines, each loading the input lines its windows reach (``_image_op``). An input
larger than the scratchpad stays in HBM where the host wrote it. int8 data in HBM (weights, inputs,
embedding tables, outputs, and constant blocks whose values fit int8: masks, the
identity, activation tables, layer-norm parameters) is packed four values per word
(`dcfg ... i8`) when a tile's row is whole words (lanes a multiple of 4); biases and the
exp, reciprocal and rsqrt tables stay one int32 per word.
"""

from dataclasses import dataclass, replace

import numpy as np

from isa.encoding import Engine, instr, pack_int8, unpack_int8
from isa.golden import requantize

from .builder import CompileError, ProgramBuilder, Region, k_runs, row_spans, run_body
from .quant import activation_table, int_matmul, lane_multipliers, multiplier, quantize, rq
from .tiler import choose_tiling

__all__ = ["Graph", "Tensor", "Image"]


@dataclass(frozen=True)
class Image:
    """Padded image layout: ``batch`` images of h x w pixels, each in a grid with a zero
    ring ``ring`` pixels wide; the grids are stacked, one row per grid pixel."""
    batch: int
    h: int
    w: int
    ring: int = 1

    @property
    def pitch(self):
        return self.w + 2 * self.ring

    @property
    def lines(self):
        """Grid lines per image."""
        return self.h + 2 * self.ring

    @property
    def rows(self):
        return self.batch * self.lines * self.pitch

    def row(self, i, y, x):
        """The row of pixel (y, x) of image i (y and x may reach into the ring)."""
        return (i * self.lines + y + self.ring) * self.pitch + x + self.ring

    def interior(self, first=0, count=None):
        """Boolean mask over rows first..first+count-1: True for pixels, False for the ring."""
        count = self.rows - first if count is None else count
        rows = np.arange(first, first + count)
        line, col = (rows // self.pitch) % self.lines, rows % self.pitch
        r = self.ring
        return (line >= r) & (line < r + self.h) & (col >= r) & (col < r + self.w)

    def ring_spans(self, first, count):
        """(offset from ``first``, rows) runs of ring rows among rows first..first+count-1."""
        return _runs(~self.interior(first, count))

    def to_rows(self, x):
        """(batch, h, w, c) -> (rows, c) with zero padding."""
        r = self.ring
        padded = np.zeros((self.batch, self.lines, self.pitch, x.shape[-1]), np.int64)
        padded[:, r:r + self.h, r:r + self.w] = x
        return padded.reshape(self.rows, -1)

    def from_rows(self, rows):
        r = self.ring
        return rows.reshape(self.batch, self.lines, self.pitch, -1)[:, r:r + self.h, r:r + self.w]


def _runs(mask):
    """(start, length) of each run of True in a boolean vector."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def _zero_units(base, spans, source=None, most=256):
    """VE units writing 0 to rows base+start.. of each (start, rows) span, as 0 times rows
    of ``source`` (fixed rows, at least ``most`` of them, that a µTOp which must stay
    restartable reads but does not write) or by default of the same rows, in pieces of at
    most ``most`` rows; a regular run of pieces (same size, same distance) is one ``loop``."""
    pieces = [(start + f, n) for start, count in spans for f, n in row_spans(count, most)]
    units, i = [], 0
    while i < len(pieces):
        start, n = pieces[i]
        src = start if source is None else 0
        base_src = base if source is None else source
        j = i + 1
        if j < len(pieces) and pieces[j][1] == n and pieces[j][0] - start <= 32767:
            stride = pieces[j][0] - start
            while (j < len(pieces) and j - i < 65536 and pieces[j][1] == n
                   and pieces[j][0] - pieces[j - 1][0] == stride):
                j += 1
            units.append([instr("loop", j - i, 1, stride, stride if source is None else 0),
                          instr("vmuli", base + start, base_src + src, 0, n)])
        else:
            units.append([instr("vmuli", base + start, base_src + src, 0, n)])
        i = j
    return units


@dataclass
class Tensor:
    """An int8 (or int32) activation in the scratchpad, and the integers it must hold."""
    region: Region
    rows: int
    tiles: int
    scale: float
    ref: np.ndarray               # rows x (tiles * lanes) int64
    image: Image | None = None
    #: The allocation whose rows it lies in (views and rescaled copies share it); -1 none.
    home: int = -1

    def tile(self, t):
        return self.region.start + t * self.rows

    def tile_region(self, t):
        return Region("spad", self.tile(t), self.rows)

    def view(self, first, count):
        """Tiles first..first+count-1 as a tensor (no copy)."""
        lanes = self.ref.shape[1] // self.tiles
        return Tensor(Region("spad", self.tile(first), count * self.rows), self.rows, count,
                      self.scale, self.ref[:, first * lanes:(first + count) * lanes], self.image,
                      self.home)


def _vsetq(mult, shift, zp):
    """The requantization parameters of the `vrq`s after it. The compiler's requantizations
    round exact halves to even, as ONNX's QuantizeLinear does (``rq``)."""
    return instr("vsetq", mult, shift, zp, even=1)


def _reduce_rows(op, lane_op, dst, sources, n):
    """Instructions combining rows of several tiles lane by lane (``op``) into ``dst``, then
    across lanes (``lane_op``, broadcast): one value per row, in every lane."""
    body, source = [], sources[0]
    for other in sources[1:]:
        body.append(instr(op, dst, source, other, n))
        source = dst
    return body + [instr(lane_op, dst, source, n)]


def _span_scratch(graph, rows, per_row, what):
    """Scratch for a row kernel's row spans (of at most 256 rows): ``per_row`` rows per
    row of a span, two blocks that alternate between spans so that one span's µTOp can
    start while the previous one's runs. Returns (the blocks, the block of span i)."""
    spans = row_spans(rows)
    blocks = [graph._alloc(min(rows, 256) * per_row, what) for _ in range(min(2, len(spans)))]
    return blocks, lambda i: blocks[i % len(blocks)]


def _interpolation_tables(points, first):
    """The two lookup tables of :func:`_interpolate`: values at points first, first + 1,
    ... (``points`` one longer than the intervals) and each interval's drop to the next."""
    values, drops = np.zeros(256, np.int64), np.zeros(256, np.int64)
    count = len(points) - 1
    values[first:first + count], drops[first:first + count] = points[:-1], points[:-1] - points[1:]
    return values, drops


def _interpolate(luts, m, index, tmp, out, bits, base, n):
    """Instructions: out = the value at row m (non-negative; its high part minus ``base``
    picks the interval, its low ``bits`` the point in it) interpolated between the
    table points of ``luts`` (the two tables of :func:`_interpolation_tables`, loaded
    here); m ends as its low part, index and tmp are scratch."""
    return [instr("vsrai", index, m, bits, n), instr("vshli", tmp, index, bits, n),
            instr("vsub", m, m, tmp, n),                                 # the low part
            instr("vaddi", index, index, -base - 128, n),               # vlut adds 128
            instr("vldlut", luts[0].start), instr("vlut", out, index, n),
            instr("vldlut", luts[1].start), instr("vlut", tmp, index, n),
            instr("vmul", tmp, tmp, m, n), instr("vaddi", tmp, tmp, 1 << bits - 1, n),
            instr("vsrai", tmp, tmp, bits, n), instr("vsub", out, out, tmp, n)]


def _interpolate_ref(tables, m, bits, base):
    """What :func:`_interpolate` computes, in numpy."""
    values, drops = tables
    index, low = (m >> bits) - base, m & ((1 << bits) - 1)
    return values[index] - ((drops[index] * low + (1 << bits - 1)) >> bits)


def _gemm_scale(act, out_scale):
    """The scale of a gemm's output: (scale of the requantized sums, scale after a table
    activation) -> the one it ends with (relu keeps the first)."""
    return out_scale[1] if act and act != "relu" else out_scale[0]


@dataclass(frozen=True)
class _Rebias:
    """A bias added after a product's requantization (a QDQ model's MatMul, rounded to
    its own scale, then Add): y = round((q * 2^c + bias) * mult / 2^shift), ``bias`` one
    integer per column in units of the product's scale / 2^c. The product q and the sum
    are each rounded once, as onnxruntime's QuantizeLinear after the MatMul and after
    its float Add round them."""
    bias: np.ndarray
    c: int
    mult: int
    shift: int

    @classmethod
    def of(cls, bias, product_scale, out_scale):
        b = np.asarray(bias, np.float64) / product_scale
        c, peak = 16, 128 + float(np.max(np.abs(b), initial=0))
        while c and peak * 2 ** c >= 2 ** 31:
            c -= 1
        if peak >= 2 ** 31:
            raise CompileError(f"a bias of {peak - 128:.0f} times the product's scale "
                               f"{product_scale:g}: at most 2^31 - 129")
        return cls(np.round(b * 2 ** c).astype(np.int64), c,
                   *multiplier(product_scale / out_scale / 2 ** c))

    def ref(self, q, columns):
        """What :meth:`body` makes of products ``q``, of the bias's ``columns`` (a slice)."""
        return rq((q << self.c) + self.bias[columns], self.mult, self.shift)

    def body(self, d, n):
        """Instructions taking row d (the product, int8) to the result; the bias row is in
        vector register 0."""
        return [instr("vshli", d, d, self.c, n), instr("vaddr", d, d, 0, n),
                _vsetq(self.mult, self.shift, 0), instr("vrq", d, d, n)]


class _NoRoomForOutput(CompileError):
    """An operator's output found no room, before the operator emitted anything."""


class _Panels:
    """A layer's weight column panels: the weights in HBM (``w_hbm``, K x N padded to
    tiles, int8 packed), HBM blocks of one row per tile (``rows``: the bias, and the
    per-column multipliers when the layer is quantized per channel), and the scratchpad
    buffers the panels load into. A panel is K rows, then its bias row (and multiplier
    row).

    Streaming (``held`` False), panel ct goes to the buffer of its accumulator slot and
    is loaded each time a gemm asks for it (unless that buffer still holds it); held,
    panel ct has buffer ct mod the buffers' count and stays loaded for every band that
    asks for it again (the tiler's "weights stay" order)."""

    def __init__(self, graph, name, w_pad, b_pad, w_hbm, rows, ring):
        self.graph, self.name, self.ring = graph, name, ring      # ring: buffers streaming
        self.w_pad, self.b_pad, self.w_hbm, self.extra = w_pad, b_pad, w_hbm, rows
        self.k = len(w_pad)
        self.n_tiles = w_pad.shape[1] // graph.lanes
        self.rows = self.k + len(rows)              # scratchpad rows of one panel
        self.bufs, self.held, self._in = [], False, {}

    def allocate(self, count, held):
        """Free the buffers there are and take ``count`` new ones; a streaming ring that
        cannot have ``count`` (even with idle activations spilled) makes do with fewer,
        down to one."""
        self.free()
        # A failed try may have spilled activations around the buffers it took: the same
        # count is tried once more on the room that made, then fewer.
        tries = [count] + ([count] if held else list(range(count, 0, -1)))
        for i, n in enumerate(tries):
            try:
                self.bufs = []
                for _ in range(n):
                    self.bufs.append(self.graph._alloc(self.rows, f"{self.name} weight panel"))
                break
            except CompileError:
                self.free()
                if i == len(tries) - 1:
                    raise
        if not held:
            self.ring = len(self.bufs)
        self.held, self._in = held, {}

    def arrange(self, tiling):
        """The buffers a loop order (tiler.Tiling) asks for: the ring as it is when it has
        as many, new ones otherwise."""
        if tiling.buffers == len(self.bufs):
            self.held = tiling.held
        else:
            self.allocate(tiling.buffers, tiling.held)

    def free(self):
        for region in self.bufs:
            self.graph.builder.free(region)
        self.bufs = []

    def __call__(self, ct, slot):
        """Make panel ``ct`` available (for the gemm's accumulator ``slot``): (``ldw(kt)``,
        the instruction loading its K tile kt, ``w_src(kt)``, that ldw's source row, the
        buffer's Region, the bias row, the multiplier row or None)."""
        graph, lanes, pw = self.graph, self.graph.lanes, self.graph.per_word
        index = (ct if self.held else slot) % len(self.bufs)
        buf = self.bufs[index]
        if self._in.get(index) != ct:
            body = graph._dma_rows(lanes, self.n_tiles * lanes // pw, buf.start,
                                   self.w_hbm.start + ct * lanes // pw, self.k, packed=pw > 1)
            for row, block in enumerate(self.extra):         # the bias, the multipliers
                body += graph._dma_rows(lanes, lanes, buf.start + self.k + row,
                                        block.start + ct * lanes, 1)
            graph.builder.split_utop(Engine.DMA, body, reads=[self.w_hbm] + self.extra,
                                     writes=[buf], name=f"{self.name} load w{ct}")
            self._in[index] = ct
        w_src = lambda kt: buf.start + kt * lanes
        return (lambda kt: instr("ldw", w_src(kt), lanes), w_src, buf, buf.start + self.k,
                buf.start + self.k + 1 if len(self.extra) > 1 else None)


class Graph:
    """Builds one program for a model on a vNPU of ``spad_rows`` rows and ``hbm_words`` words."""

    def __init__(self, config, *, spad_rows=None, hbm_words=None, per_channel=False):
        if not config.array_rows == config.array_cols == config.ve_lanes:
            raise CompileError(
                f"the model compiler needs square arrays as wide as a scratchpad row "
                f"(array_rows = array_cols = ve_lanes); this NPU has {config.array_rows}x"
                f"{config.array_cols} arrays and {config.ve_lanes} lanes")
        self.config = config
        self.lanes = config.ve_lanes
        self.per_word = 4 if self.lanes % 4 == 0 else 1     # int8 values per HBM word
        #: Weights quantized with a scale per output channel (requantized by `vrqr`), not
        #: one per tensor.
        self.per_channel = per_channel
        self.builder = ProgramBuilder(config, spad_rows=spad_rows, hbm_words=hbm_words)
        self.inputs = {}              # name -> (HBM Region, rows x cols int array)
        self.outputs = {}             # name -> (HBM Region, Tensor)
        self._constants = {}          # bytes of a constant block -> spad Region (loaded)
        self._constants_hbm = {}      # bytes of a constant block -> HBM Region (placed)
        self._activations = {}        # home -> spad Region of a tensor made by an operator
        self._int8 = {}               # home -> whether its values are int8 (packed spills)
        self._spilled = {}            # home -> (its old Region, the HBM Region holding it)
        self._pinned = set()          # homes the operator being lowered reads or makes
        self._last_use = {}           # home -> operator count when it was last pinned
        self._operators = 0
        self._homes = 0
        #: Activations spilled to HBM and loaded back, and the DMA bytes each moved.
        self.spills = self.reloads = self.spill_bytes = self.reload_bytes = 0
        self.ops = []                 # (kind, name) in order, for reports
        self.op_ends = []             # per op: the µTOps emitted when it ended (its last + 1)

    # --- helpers -------------------------------------------------------------------------

    def _tiles(self, cols, what):
        if cols % self.lanes:
            raise CompileError(f"{what}: {cols} columns is not a multiple of the "
                               f"{self.lanes} lanes")
        return cols // self.lanes

    def _new(self, rows, tiles, scale, ref, what, image=None):
        ref = np.asarray(ref, np.int64)
        region = self._alloc(rows * tiles, what)
        home = self._homes
        self._homes += 1
        self._activations[home] = region
        self._int8[home] = bool(ref.size == 0 or (ref.min() >= -128 and ref.max() <= 127))
        self._pin(home)
        return Tensor(region, rows, tiles, scale, ref, image, home)

    def _alloc(self, rows, what):
        """A scratchpad region of ``rows`` rows; while none is free, the activation used
        least recently (not by the operator being lowered) is spilled to HBM."""
        if rows < 1:
            return self.builder.alloc(rows, what)      # the builder's error
        while True:
            try:
                return self.builder.alloc(rows, what)
            except CompileError:
                idle = [h for h in self._activations if h not in self._pinned]
                if not idle:
                    raise
                self._spill(min(idle, key=lambda h: (self._last_use[h], h)))

    def _packing(self, home):
        """int8 values per HBM word in the HBM copy of ``home``."""
        return self.per_word if self._int8[home] else 1

    def _spill(self, home):
        region = self._activations.pop(home)
        pw = self._packing(home)
        hbm = self.builder.hbm(region.size * self.lanes // pw, f"spill of activation {home}")
        self.builder.split_utop(Engine.DMA, self._dma_rows(self.lanes, self.lanes // pw,
                                                           region.start, hbm.start, region.size,
                                                           store=True, packed=pw > 1),
                                reads=[region], writes=[hbm], name=f"spill {home}")
        self.builder.free(region)
        self._spilled[home] = (region, hbm)
        self.spills += 1
        self.spill_bytes += 4 * hbm.size

    def resident(self, t):
        """``t`` in the scratchpad for the operator being lowered: pinned there until
        :meth:`end_operator`, loaded back first (a new tensor) if it was spilled."""
        if t.home not in self._spilled:
            if t.home in self._activations:
                self._pin(t.home)
            return t
        old, hbm = self._spilled[t.home]
        pw = self._packing(t.home)
        offset = (t.region.start - old.start) * self.lanes // pw
        loaded = self._new(t.rows, t.tiles, t.scale, t.ref, "reload of a spilled activation",
                           t.image)
        self._int8[loaded.home] = self._int8[t.home]            # the copy's packing
        self.builder.split_utop(Engine.DMA, self._dma_rows(self.lanes, self.lanes // pw,
                                                           loaded.region.start,
                                                           hbm.start + offset, t.region.size,
                                                           packed=pw > 1),
                                reads=[hbm], writes=[loaded.region], name=f"reload {t.home}")
        self.reloads += 1
        self.reload_bytes += 4 * t.region.size * self.lanes // pw
        return loaded

    def stream(self, tensors, need):
        """Before an operator that reads ``tensors`` a part at a time and needs ``need``
        more rows besides them: when they and ``need`` do not fit in the free rows and the
        rows of activations it could spill, spill ``tensors`` now (each part is then loaded
        back alone by :meth:`resident`, and given back by :meth:`release`). Returns
        whether it did."""
        homes = {t.home for t in tensors} & set(self._activations)
        held = sum(self._activations[h].size for h in homes)
        if held + need <= self._room(*tensors):
            return False
        for home in sorted(homes):
            self._spill(home)
        return True

    def _pin(self, home):
        self._pinned.add(home)
        self._last_use[home] = self._operators

    def end_operator(self):
        """The operator being lowered is done: what it pinned may be spilled again."""
        self._pinned.clear()
        self._operators += 1

    def release(self, t):
        """Free the scratchpad of tensor ``t`` now (no later operator reads it)."""
        self._free_home(t.home)

    def _free_home(self, home):
        self.builder.free(self._activations.pop(home))

    def keep_only(self, live):
        """Free the scratchpad of every tensor no tensor in ``live`` lies in (views and
        rescaled copies share their tensor's rows), and of every constant (a later
        operator loads again what it needs). The caller (the ONNX lowering) calls it after
        each node with the tensors later nodes still read; a freed region is reused by
        later operators, ordered after its last readers by the dependency rule. Spilled
        tensors hold no rows (their HBM copy stays)."""
        held = {t.home for t in live}
        for home in [h for h in self._activations if h not in held]:
            self._free_home(home)
        for region in self._constants.values():
            self.builder.free(region)
        self._constants.clear()

    def _int8_words(self, values, what="values"):
        """An int8 matrix as the HBM words that hold it (rows x cols / per_word)."""
        values = np.asarray(values, np.int64)
        if values.size and (values.min() < -128 or values.max() > 127):
            raise CompileError(f"{what}: int8 data must lie in -128..127, got "
                               f"{values.min()}..{values.max()}")
        if self.per_word == 1:
            return values
        return pack_int8(values).reshape(len(values), -1)

    def _dma_rows(self, width, hstride, spad_row, hbm_addr, rows, store=False, packed=False):
        body = [instr("dcfg", width, hstride, 1, i8=int(packed))]
        for first, count in row_spans(rows):
            if store:
                body.append(instr("dstore", hbm_addr + first * hstride, spad_row + first, count))
            else:
                body.append(instr("dload", spad_row + first, hbm_addr + first * hstride, count))
        return body

    def constant(self, values, what):
        """Rows of constants (lanes wide) loaded from HBM (packed when they are int8 values:
        masks, the identity); identical blocks are shared until :meth:`keep_only` frees
        them."""
        values = np.asarray(values, np.int64).reshape(-1, self.lanes)
        key = values.tobytes()
        pw = self.per_word if values.min() >= -128 and values.max() <= 127 else 1
        if key not in self._constants_hbm:
            words = self._int8_words(values) if pw > 1 else values
            self._constants_hbm[key] = self.builder.hbm(words.size, what, words)
        if key not in self._constants:
            hbm = self._constants_hbm[key]
            spad = self._alloc(len(values), what)
            self.builder.split_utop(Engine.DMA, self._dma_rows(self.lanes, self.lanes // pw,
                                                               spad.start, hbm.start,
                                                               len(values), packed=pw > 1),
                                    reads=[hbm], writes=[spad], name=f"load {what}")
            self._constants[key] = spad
        return self._constants[key]

    def _ve(self, units, reads, writes, name, preamble=()):
        """VE µTOps from ``units`` (instruction groups kept in one µTOp where they fit);
        every µTOp starts with ``preamble`` (engine state does not survive a µTOp). A unit
        longer than a µTOp is split (builder.split_body); its pieces declare ``writes`` as
        read too, since a later piece reads what an earlier one wrote (so none of them is
        restartable)."""
        room = self.config.max_body - len(preamble)
        body = []

        def flush():
            if body:
                self.builder.utop(Engine.VE, list(preamble) + body, reads=reads, writes=writes,
                                  name=name)
                body.clear()

        for unit in units:
            if len(unit) > room:
                flush()
                self.builder.split_utop(Engine.VE, list(preamble) + unit,
                                        reads=list(reads) + list(writes), writes=writes,
                                        name=name)
                continue
            if len(body) + len(unit) > room:
                flush()
            body += unit
        flush()

    def _row_blocks(self, lo, hi, tiles):
        """Row blocks: enough for every ME of the pNPU even with few column tiles, and at
        most 128 rows, so the epilogue of one block overlaps the MEs on the next and the
        next layer starts on the first rows while this one finishes the last."""
        if hi <= lo:
            return []
        parts = max(1, -(-self.config.n_me // tiles), -(-(hi - lo) // 128))
        size = -(-(hi - lo) // parts)
        return [(lo + first, count) for first, count in row_spans(hi - lo, size)]

    @staticmethod
    def _rows_of(x, halo):
        """The input rows a block of output rows reads: the same rows +- ``halo``, all tiles."""
        def reads(first, count):
            lo, hi = max(0, first - halo), min(x.rows, first + count + halo)
            return [Region("spad", x.tile(t) + lo, hi - lo) for t in range(x.tiles)]
        return reads

    def _op(self, kind, name):
        self.builder.end_operator()
        self.ops.append((kind, name))
        self.op_ends.append(len(self.builder.utops))

    # --- data in and out -------------------------------------------------------------------

    def input(self, name, q, scale, image=None):
        """An int8 input written to HBM by the host ((rows, cols), or an Image's pixels)."""
        q = np.asarray(q, np.int64)
        rows_q = image.to_rows(q) if image else q
        rows, cols = rows_q.shape
        tiles = self._tiles(cols, f"input {name}")
        pw = self.per_word
        hbm = self.builder.hbm(rows * cols // pw, f"input {name}")
        if rows * tiles >= self._room():
            # As large as the free scratchpad: it stays in HBM, tile after tile (as a spilled
            # activation), and its readers load it by bands.
            by_tiles = rows_q.reshape(rows, tiles, self.lanes).transpose(1, 0, 2)
            self.inputs[name] = (hbm, self._int8_words(by_tiles.reshape(rows * tiles, -1),
                                                       f"input {name}"))
            home = self._homes
            self._homes += 1
            self._int8[home] = True
            self._spilled[home] = (Region("spad", 0, rows * tiles), hbm)
            self._op("input", name)
            return Tensor(Region("spad", 0, rows * tiles), rows, tiles, scale, rows_q, image, home)
        self.inputs[name] = (hbm, self._int8_words(rows_q, f"input {name}"))
        out = self._new(rows, tiles, scale, rows_q, f"input {name}", image)
        for t in range(tiles):
            self.builder.split_utop(Engine.DMA, self._dma_rows(self.lanes, cols // pw, out.tile(t),
                                                    hbm.start + t * self.lanes // pw, rows,
                                                    packed=pw > 1),
                              reads=[hbm], writes=[out.tile_region(t)], name=f"load {name}.{t}")
        self._op("input", name)
        return out

    def indices(self, name, values, limit):
        """Integer indices (one per word) written to HBM by the host and loaded in rows."""
        values = np.asarray(values, np.int64).reshape(-1)
        if values.size and (values.min() < 0 or values.max() >= limit):
            raise CompileError(f"indices {name} must be in 0..{limit - 1}, got "
                               f"{values.min()}..{values.max()}")
        rows = -(-values.size // self.lanes)
        padded = np.zeros(rows * self.lanes, np.int64)
        padded[:values.size] = values
        hbm = self.builder.hbm(padded.size, f"indices {name}")
        self.inputs[name] = (hbm, padded.reshape(rows, self.lanes))
        spad = self._alloc(rows, f"indices {name}")
        self.builder.split_utop(Engine.DMA, self._dma_rows(self.lanes, self.lanes, spad.start, hbm.start,
                                                rows),
                          reads=[hbm], writes=[spad], name=f"load {name}")
        return spad, values

    def buffer(self, name, rows, tiles, scale):
        """A tensor that later operators fill tile by tile (``out=`` of matmul)."""
        return self._new(rows, tiles, scale, np.zeros((rows, tiles * self.lanes)), name)

    def output(self, name, x):
        """Store an int8 tensor to HBM (row-major, rows x cols, packed as the inputs are)
        for the host to read (:meth:`read_output`)."""
        self._int8_words(x.ref, f"output {name}")           # checks that it is int8
        x = self.resident(x)
        cols, pw = x.tiles * self.lanes, self.per_word
        hbm = self.builder.hbm(x.rows * cols // pw, f"output {name}")
        for t in range(x.tiles):
            self.builder.split_utop(Engine.DMA, self._dma_rows(self.lanes, cols // pw, x.tile(t),
                                                    hbm.start + t * self.lanes // pw, x.rows,
                                                    store=True, packed=pw > 1),
                              reads=[x.tile_region(t)], writes=[hbm], name=f"store {name}.{t}")
        self.outputs[name] = (hbm, x)
        self._op("output", name)

    def output_words(self, values):
        """The HBM words of an output that holds ``values`` (rows x cols int8)."""
        return self._int8_words(values).reshape(-1)

    def read_output(self, name, words):
        """Output ``name``'s HBM words as its rows x padded columns."""
        _, x = self.outputs[name]
        values = unpack_int8(words) if self.per_word > 1 else np.asarray(words, np.int64)
        return values.reshape(x.rows, x.tiles * self.lanes)

    def build(self):
        return self.builder.build()

    # --- matrix operators ------------------------------------------------------------------

    def _gemm(self, name, sources, k_tiles, lo, hi, rows, acc_ref, n_tiles, panel, *,
              requant, act, out_scale, reads, grid=None, out=None, cols=None, rebias=None):
        """Output column tiles ``cols`` (first, stop; all ``n_tiles`` by default) of sum
        over K tiles of (rows shifted by sources(kt)) @ W.

        ``panel(ct, slot)`` makes W's column tile ct available (loading it, if it lives in
        HBM, into a weight buffer: that of accumulator ``slot``, or ct's own when the
        panels are held: see :class:`_Panels`) and returns (``ldw(kt)``, the instruction
        that loads its K tile kt, ``w_src(kt)``, that ldw's source row, the Region it reads, spad
        row of the bias or None, spad row of the per-column multipliers or None).
        ``requant`` is (mult, shift), mult one multiplier or one per output column
        (`vrqr`, its row in the panel). Rows lo..hi-1 are computed, the others are zero; with ``grid`` (an Image and the
        grid row of output row 0), rows in the image's ring are zeroed too. With
        ``rebias`` (a :class:`_Rebias`) the bias row is added after that requantization,
        not to the sums, and a second one rounds the result (a QDQ model's MatMul -> Add).
        """
        cfg, lanes = self.config, self.lanes
        c0, c1 = (0, n_tiles) if cols is None else cols
        acc_ref = acc_ref[:, c0 * lanes:c1 * lanes]
        mult, shift = requant
        per_lane = np.ndim(mult) > 0
        if per_lane:
            mult = np.pad(mult, (0, n_tiles * lanes - len(mult)))[c0 * lanes:c1 * lanes]
            requantize = lambda d, a, n: instr("vrqr", d, a, 1, n)
        else:
            requantize = lambda d, a, n: instr("vrq", d, a, n)
        ref = rq(acc_ref, mult, shift)
        if rebias is not None:
            ref = rebias.ref(ref, slice(c0 * lanes, c1 * lanes))
        table = None
        if act == "relu":
            ref = np.maximum(ref, 0)
        elif act:
            table = activation_table(act, out_scale[0], out_scale[1])
            ref = table[ref + 128]
        if grid is not None:
            ref[~grid[0].interior(grid[1], rows)] = 0
        final_scale = _gemm_scale(act, out_scale)
        if out is None:
            image = grid[0] if grid is not None and grid[0].rows == rows else None
            try:
                out = self._new(rows, c1 - c0, final_scale, ref, name, image)
            except CompileError as error:
                raise _NoRoomForOutput(str(error)) from None
        else:
            out.ref[:] = ref
        lut = self.constant(table, f"{act} table") if table is not None else None
        ring = min(c1 - c0, 3)
        acc = [self._alloc(rows, f"{name} accumulator") for _ in range(ring)]
        blocks = self._row_blocks(lo, hi, c1 - c0)
        for ct in range(c0, c1):
            slot = (ct - c0) % ring
            ldw, w_src, w_region, bias_row, mult_row = panel(ct, slot)
            dst = out.tile(ct - c0)
            # Runs of K tiles (an mmloop each), as many as max_body holds per µTOp.
            pieces, words = [[]], 0
            for run in k_runs(w_src, sources, 0, k_tiles):
                size = 3 if run[1] > 1 else 2
                if words + size > cfg.max_body and pieces[-1]:
                    pieces.append([])
                    words = 0
                pieces[-1].append(run)
                words += size
            for first, count in blocks:
                target = Region("spad", acc[slot].start + first, count)
                mm = lambda kt: instr("mm", target.start, sources(kt) + first, count,
                                      acc=bool(kt))
                for piece in pieces:
                    self.builder.utop(Engine.ME, [i for run in piece for i in run_body(run, ldw, mm)],
                                      reads=reads(first, count) + [w_region]
                                      + ([target] if piece[0][0] else []),
                                      writes=[target], name=f"{name} mm{ct}.{first}")
                preamble = [instr("vld", 0, bias_row)] if bias_row is not None else []
                if per_lane:
                    preamble.append(instr("vld", 1, mult_row))
                first_q = _vsetq(0 if per_lane else mult, shift, 0)
                preamble.append(first_q)
                if lut is not None:
                    preamble.append(instr("vldlut", lut.start))
                units = []
                for r, n in row_spans(count):
                    a, d = target.start + r, dst + first + r
                    # The accumulator is only read (the bias is added on the way out), so
                    # the epilogue is restartable.
                    if rebias is not None:
                        unit = [first_q] * bool(units) + [requantize(d, a, n)] + rebias.body(d, n)
                    elif bias_row is not None:
                        unit = [instr("vaddr", d, a, 0, n), requantize(d, d, n)]
                    else:
                        unit = [requantize(d, a, n)]
                    if act == "relu":
                        unit.append(instr("vmaxi", d, d, 0, n))
                    elif lut is not None:
                        unit.append(instr("vlut", d, d, n))
                    units.append(unit)
                if grid is not None:
                    units += _zero_units(dst + first, grid[0].ring_spans(grid[1] + first, count),
                                         target.start, count)
                extra = [r for r in (w_region if bias_row is not None or per_lane else None, lut)
                         if r is not None]
                self._ve(units, reads=[target] + extra,
                         writes=[Region("spad", dst + first, count)],
                         name=f"{name} epilogue{ct}.{first}", preamble=preamble)
            zero, edges = [], []
            for a, b in ((0, lo), (hi, rows)):
                if b > a:
                    zero += [[instr("vmuli", dst + a + f, dst + a + f, 0, n)]
                             for f, n in row_spans(b - a)]
                    edges.append(Region("spad", dst + a, b - a))
            if zero:
                self._ve(zero, reads=edges, writes=edges, name=f"{name} ring{ct}")
        for region in acc:
            self.builder.free(region)
        return out

    def _weights(self, name, w_q, bias_q, ring=3, mults=None):
        """A layer's weights in HBM (K x N padded to tiles) with their bias row (and a row of
        per-column multipliers when ``mults``, the multiplier of the layer's
        requantization, is one per column), and a ring of ``ring`` panel buffers (the next
        panels load while the MEs use one): a :class:`_Panels`."""
        lanes = self.lanes
        k, n = w_q.shape
        n_tiles = -(-n // lanes)
        w_pad = np.zeros((k, n_tiles * lanes), np.int64)
        w_pad[:, :n] = w_q
        b_pad = np.zeros(n_tiles * lanes, np.int64)
        b_pad[:n] = bias_q
        w_hbm = self.builder.hbm(w_pad.size // self.per_word, f"{name} weights",
                                 self._int8_words(w_pad))
        rows = [self.builder.hbm(b_pad.size, f"{name} bias", b_pad)]
        mults = mults if np.ndim(mults) else None
        if mults is not None:
            m_pad = np.zeros(n_tiles * lanes, np.int64)
            m_pad[:n] = mults
            rows.append(self.builder.hbm(m_pad.size, f"{name} multipliers", m_pad))
        panels = _Panels(self, name, w_pad, b_pad, w_hbm, rows, min(n_tiles, ring))
        panels.allocate(panels.ring, held=False)
        return panels

    def _quantized(self, w, bias, x_scale, out_scale, given=None):
        """Float weights (output channels on the last axis) and bias as int8 and int32, and
        the requantization of their sums: with one scale per tensor, or per output channel
        (``per_channel``: the panel carries the multipliers, `vrqr` applies them).

        A weight scale is its weights' largest magnitude / 127; an all-zero channel takes
        the layer's largest, and none is so small that the bias in its units, added to the
        int32 sums, could pass int32 (a channel of tiny weights and a real bias) or, per
        channel, more than 2^15 below the largest (its multiplier keeps 16 bits). A
        ``given`` scale (one, or one per output channel: a pre-quantized model's) replaces
        the largest magnitude / 127, so the model's integers come back exactly."""
        n, k = w.shape[-1], w.size // w.shape[-1]
        bias_floor = np.abs(bias) / (x_scale * max(2 ** 24, 2 ** 31 - 1 - k * 128 * 128))
        if given is not None and (self.per_channel or np.size(given) == 1):
            w_scale = np.broadcast_to(np.asarray(given, np.float64), (n,))
        elif self.per_channel:
            w_scale = np.max(np.abs(w.reshape(-1, n)), axis=0) / 127
            w_scale[w_scale == 0] = np.max(w_scale) or 1.0
            # At most 2^15 below the largest: its multiplier keeps 16 of the shared 31 bits.
            w_scale = np.maximum(w_scale, np.max(w_scale) / 2 ** 15)
        else:
            w_scale = float(np.max(np.abs(w))) / 127 or 1.0
        if self.per_channel:
            w_scale = np.maximum(w_scale, bias_floor)
            requant = lane_multipliers(x_scale * w_scale / out_scale)
        else:
            w_scale = max(float(np.max(w_scale)), float(np.max(bias_floor)))
            requant = multiplier(x_scale * w_scale / out_scale)
        return quantize(w, w_scale), quantize(bias, x_scale * w_scale, bits=32), requant

    def linear(self, name, x, w, bias, out_scale, act=None, act_scale=None, w_scale=None,
               product_scale=None):
        """y = act(x @ w + bias): float weights quantized here (per tensor or per output
        channel; at ``w_scale`` when given), int8 out. With ``product_scale`` x @ w is
        rounded to int8 at that scale first, then the bias is added and the sum rounded to
        ``out_scale`` (a QDQ model's MatMul -> QuantizeLinear/DequantizeLinear -> Add)."""
        k_tiles = x.tiles
        if w.shape[0] != k_tiles * self.lanes:
            raise CompileError(f"{name}: weights have {w.shape[0]} rows; the input has "
                               f"{k_tiles * self.lanes} columns")
        rebias = None
        if product_scale is not None:
            rebias = _Rebias.of(bias, product_scale, out_scale)
            w_q, _, requant = self._quantized(w, 0 * bias, x.scale, product_scale, w_scale)
            bias_q = rebias.bias
        else:
            w_q, bias_q, requant = self._quantized(w, bias, x.scale, out_scale, w_scale)
        panels = self._weights(name, w_q, bias_q, mults=requant[0])
        n_tiles = panels.n_tiles
        acc_ref = int_matmul(x.ref, panels.w_pad)
        if rebias is None:
            acc_ref = acc_ref + panels.b_pad
        else:
            rebias = replace(rebias, bias=panels.b_pad)
        gemm = dict(requant=requant, act=act, out_scale=(out_scale, act_scale), rebias=rebias)
        ring = min(n_tiles, 3)
        spilled = x.home in self._spilled
        # Whole when its output, accumulators and (spilled) input fit in what is free or
        # could be spilled; otherwise by row bands, the output straight to HBM.
        out = None
        if x.rows * (n_tiles + ring + (k_tiles if spilled else 0)) <= self._room(x) and \
                self._make_room([x.rows * k_tiles] * spilled + [x.rows * n_tiles]
                                + [x.rows] * ring, x):
            try:
                x = self.resident(x)
                out = self._gemm(name, x.tile, k_tiles, 0, x.rows, x.rows, acc_ref, n_tiles,
                                 panels, reads=self._rows_of(x, 0), **gemm)
            except _NoRoomForOutput:       # no piece that large: nothing emitted but spills
                pass
        if out is None:
            out = self._banded_gemm(name, x, k_tiles, acc_ref, panels, gemm)
        panels.free()
        self._op("linear", name)
        return out

    def _make_room(self, sizes, *tensors):
        """Spill activations (least recently used first, not ``tensors``' or pinned ones)
        until allocations of ``sizes`` rows, in this order, would all succeed; whether
        they would."""
        keep = {t.home for t in tensors}
        while not self.builder.fits_all([n for n in sizes if n]):
            idle = [h for h in self._activations if h not in self._pinned and h not in keep]
            if not idle:
                return False
            self._spill(min(idle, key=lambda h: (self._last_use[h], h)))
        return True

    def fits(self, rows, *tensors):
        """Do ``rows`` more rows fit in the free rows and those of the activations that
        could be spilled (not ``tensors``')?"""
        return rows <= self._room(*tensors)

    def _room(self, *tensors):
        """Rows free, or held by activations that could be spilled (not ``tensors``')."""
        homes = {t.home for t in tensors}
        return self.builder.free_rows + sum(r.size for h, r in self._activations.items()
                                            if h not in self._pinned and h not in homes)

    def rowwise(self, name, op, tensors, out_tiles, scratch=None):
        """``op(*tensors)`` for an operator whose output row r depends on row r of its
        inputs alone, producing ``out_tiles`` tiles: whole when its inputs, output and
        scratch fit; otherwise by bands of rows through HBM (the inputs go to HBM, each
        band is loaded and gives a band of the output, stored to HBM; the output is born
        spilled). ``scratch``: the operator's scratch rows per row (two per output tile by
        default)."""
        scratch = 2 * out_tiles if scratch is None else scratch
        rows, image = tensors[0].rows, tensors[0].image
        if any(t.image != image for t in tensors):
            raise CompileError(f"{name}: images of layouts {[t.image for t in tensors]}; an "
                               f"elementwise operator needs one layout")
        spilled = {t.home: t for t in tensors if t.home in self._spilled}
        need = rows * (out_tiles + scratch + sum(t.tiles for t in spilled.values()))
        if any(t.rows != rows for t in tensors) or (
                need <= self._room(*tensors) and self._make_room(
                    [rows * t.tiles for t in spilled.values()] + [rows * out_tiles], *tensors)):
            return op(*[self.resident(t) for t in tensors])
        for home in {t.home for t in tensors} - set(spilled):
            self._spill(home)
        pieces = [t.tiles for t in tensors] + [out_tiles, scratch]   # inputs, output, scratch
        return self._by_bands(name, rows, out_tiles, self.band_rows(name, rows, pieces),
                              lambda r0, b, cols: op(*[self.load_band(t, r0, b) for t in tensors]),
                              image)

    def _banded_gemm(self, name, x, k_tiles, acc_ref, panels, gemm):
        """A row-local gemm by bands of rows: each band of the input (read in place, or
        loaded from HBM where ``x`` is spilled) gives a band of the output (of the column
        tiles of one pass: the tiler's loop order), stored to the output's HBM region; the
        output is born spilled (``resident`` loads it whole, a later linear by bands)."""
        lanes, rows, n_tiles = self.lanes, x.rows, panels.n_tiles
        spilled = x.home in self._spilled
        if not spilled:
            x = self.resident(x)
        # Per row of a band: its output, its input (if loaded), the accumulator ring.
        pieces = lambda b, tiles: [p * b for p in [tiles] + [k_tiles] * spilled
                                   + [1] * min(tiles, 3)]
        tiling = self._tiling(name, panels, rows, 1, k_tiles, pieces,
                              lambda band: rows * k_tiles * spilled, k_tiles * spilled)
        scale = _gemm_scale(gemm["act"], gemm["out_scale"])

        def gemm_band(r0, b, cols):
            # The band's output first: the larger piece, taken before the input's.
            yb = self._new(b, cols[1] - cols[0], scale, np.zeros((b, (cols[1] - cols[0]) * lanes)),
                           f"{name} rows {r0}")
            if spilled:
                xb = self.load_band(x, r0, b)
                sources, reads = xb.tile, self._rows_of(xb, 0)
            else:
                whole = self._rows_of(x, 0)
                sources = (lambda kt: x.tile(kt) + r0)
                reads = (lambda first, count: whole(first + r0, count))
            return self._gemm(f"{name} rows {r0}", sources, k_tiles, 0, b, b,
                              acc_ref[r0:r0 + b], n_tiles, panels, reads=reads, out=yb,
                              cols=cols, **gemm)
        panels.arrange(tiling)
        return self._by_bands(name, rows, n_tiles, tiling.band, gemm_band, sizes=pieces,
                              groups=tiling.groups(n_tiles))

    def _tiling(self, name, panels, total, unit, k_tiles, pieces, input_rows, input_utops):
        """The loop order of a gemm over ``k_tiles`` K tiles run by bands of ``total``
        lines of ``unit`` rows, chosen by the tiler (tiler.choose_tiling); the caller
        arranges ``panels``' buffers as it says (:meth:`_Panels.arrange`). A band of b
        lines computing ``tiles`` column tiles allocates ``pieces(b, tiles)`` rows (after
        the panel buffers); ``input_rows(band)`` is the rows a pass moves for the input,
        in ``input_utops`` µTOps per band. The panels' ring stays where it is for its own
        candidate (the loop order of a layer that fits); the others are asked what fits
        with the ring given back and their own buffers taken first."""
        def band_for(buffers, tiles):
            try:
                if buffers == len(panels.bufs) and tiles == panels.n_tiles:
                    return self.largest_band(name, total, lambda b: pieces(b, tiles))
                with self.builder.lifted(panels.bufs):
                    return self.largest_band(name, total, lambda b: [panels.rows] * buffers
                                             + pieces(b, tiles))
            except CompileError:
                return 0
        tiling = choose_tiling(self.config, n_tiles=panels.n_tiles, k_tiles=k_tiles,
                               ring=panels.ring, total=total, unit=unit, panel_rows=panels.rows,
                               band_for=band_for, input_rows=input_rows,
                               input_utops=input_utops)
        if tiling is None:          # the streaming order's error says what does not fit
            self.largest_band(name, total, lambda b: pieces(b, panels.n_tiles))
        return tiling

    def band_rows(self, name, rows, pieces):
        """Rows per band of an operator that allocates, per band of b rows, pieces of
        b * ``pieces[i]`` rows in this order (see :meth:`largest_band`)."""
        return self.largest_band(name, rows, lambda b: [p * b for p in pieces])

    def largest_band(self, name, limit, sizes):
        """The largest band b <= ``limit`` (rows, or lines of an image) of an operator that
        allocates, per band of b, regions of ``sizes(b)`` rows in this order: they fit in
        three quarters of the room and, as the allocator would place them now, in the free
        scratchpad."""
        cap = min(self._room() * 3 // 4, self.builder.largest_free_piece())

        def largest(ok, lo, hi):
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
            return lo

        if sum(sizes(1)) > cap:
            raise CompileError(f"{name}: not even one row (or line) of {sum(sizes(1))} "
                               f"scratchpad rows fits (a larger `spad_rows` lifts the limit)")
        band = largest(lambda b: sum(sizes(b)) <= cap, 1, limit)
        if not self.builder.fits_all(sizes(1)):
            return band                         # spilling makes the room (as _alloc does)
        # Largest band whose pieces the allocator places (fragmentation may split them).
        return largest(lambda b: self.builder.fits_all(sizes(b)), 1, band)

    def _by_bands(self, name, rows, out_tiles, band, compute, image=None, sizes=None, unit=1,
                  groups=None):
        """The output of ``rows`` rows and ``out_tiles`` tiles (laid out as ``image``), born
        spilled: for each pass over column tiles (first, stop) of ``groups`` (one pass
        over all of them by default) and each band of rows r0.., ``compute(r0, count,
        (first, stop))`` gives that band's output tiles, which are stored to the output's
        HBM region; then every activation the band made gives its rows back. With
        ``sizes`` (a band's allocations, by its rows and tiles), a band shrinks (by
        multiples of ``unit`` rows) to what the allocator can place then: the pieces
        earlier bands gave back rest a while where they were."""
        out = self.born_spilled(name, rows, out_tiles, image)
        for cols in groups or [(0, out_tiles)]:
            fits = lambda n: sizes is None or self.builder.fits_all(sizes(n, cols[1] - cols[0]))
            r0 = 0
            while r0 < rows:
                count = min(band, rows - r0)
                if not fits(count):
                    lo, hi = 1, count // unit
                    while lo < hi:
                        mid = (lo + hi + 1) // 2
                        lo, hi = (mid, hi) if fits(mid * unit) else (lo, mid - 1)
                    count = lo * unit
                first = self._homes
                yb = compute(r0, count, cols)
                self.store_rows(out, yb, r0, cols[0],
                                f"{name} store rows {r0}" + (f" tiles {cols[0]}" if cols[0] else ""))
                for made in range(first, self._homes):
                    if made in self._activations:
                        self._free_home(made)
                r0 += count
        return out

    def born_spilled(self, name, rows, tiles, image=None):
        """An int8 tensor that lives in HBM only (as a spilled one): its parts are written
        with :meth:`store_rows`; ``resident`` loads it back whole, ``load_band`` by rows.
        Its scale is the first part's."""
        home = self._homes
        self._homes += 1
        hbm = self.builder.hbm(rows * tiles * self.lanes // self.per_word, f"{name} output")
        fake = Region("spad", 0, rows * tiles)
        self._int8[home] = True
        self._spilled[home] = (fake, hbm)
        self.spills += 1                                   # an activation stored to HBM
        self.spill_bytes += 4 * hbm.size
        return Tensor(fake, rows, tiles, None, np.zeros((rows, tiles * self.lanes), np.int64),
                      image, home)

    def store_rows(self, target, part, r0, t0, name):
        """Store tensor ``part`` (int8) as rows r0.. of tiles t0.. of ``target``, a tensor
        :meth:`born_spilled`."""
        lanes, pw = self.lanes, self.per_word
        hbm = self._spilled[target.home][1]
        self._int8_words(part.ref, name)                   # int8, as packed in HBM
        for t in range(part.tiles):
            self.builder.split_utop(
                Engine.DMA, self._dma_rows(lanes, lanes // pw, part.tile(t),
                                           hbm.start + ((t0 + t) * target.rows + r0) * lanes // pw,
                                           part.rows, store=True, packed=pw > 1),
                reads=[part.tile_region(t)], writes=[hbm], name=f"{name}.{t}")
        target.ref[r0:r0 + part.rows, t0 * lanes:(t0 + part.tiles) * lanes] = part.ref
        if target.scale is None:
            target.scale = part.scale
        elif target.scale != part.scale:
            raise CompileError(f"{name}: scale {part.scale} against the tensor's {target.scale}")

    def load_band(self, t, r0, count, t0=0, tiles=None):
        """Rows r0..r0+count-1 of tiles t0..t0+tiles-1 (all by default) of spilled tensor
        ``t``: a new tensor."""
        old, hbm = self._spilled[t.home]
        pw = self._packing(t.home)
        lanes = self.lanes
        tiles = t.tiles - t0 if tiles is None else tiles
        band = self._new(count, tiles, t.scale,
                         t.ref[r0:r0 + count, t0 * lanes:(t0 + tiles) * lanes],
                         f"rows {r0} of a spilled activation")
        for k in range(tiles):
            row = t.region.start - old.start + (t0 + k) * t.rows + r0
            self.builder.split_utop(Engine.DMA, self._dma_rows(lanes, lanes // pw, band.tile(k),
                                                               hbm.start + row * lanes // pw,
                                                               count, packed=pw > 1),
                                    reads=[hbm], writes=[band.tile_region(k)],
                                    name=f"load rows {r0}.{k}")
        self.reloads += 1
        self.reload_bytes += 4 * count * tiles * lanes // pw
        return band

    def conv(self, name, x, w, bias, out_scale, act=None, stride=(1, 1), pads=None,
             dilation=(1, 1), w_scale=None):
        """Convolution of an image: w is (kh, kw, cin, cout) (float, quantized here, at
        ``w_scale`` when given: one, or one per output channel);
        ``stride`` and ``dilation`` are (y, x), ``pads`` (top, left, bottom, right), by
        default the same-size padding of an odd kernel.

        Tap (i, j) reads input pixel (sy*y + dy*i - top, sx*x + dx*j - left) for output
        pixel (y, x). Split by its remainder (the *phase*) and quotient modulo the stride,
        that is pixel (y + qy, x + qx) of the phase image P[a, b][v, u] = input[sy*v + a,
        sx*u + b]: every tap is a shifted view of one phase image laid out on the output's
        grid, and the convolution is one gemm over taps x channel tiles with no wasted MAC
        (the VE gathers the phase images, zero outside the input). A stride-1 convolution
        that keeps the size and whose taps stay within the input's ring reads the input
        itself. Runs whole when it fits, else by bands of output lines (:meth:`_image_op`)."""
        image, lanes = x.image, self.lanes
        if image is None or w.ndim != 4 or w.shape[2] != x.tiles * lanes:
            raise CompileError(f"{name}: needs an image input with {x.tiles * lanes} channels "
                               f"and (kh, kw, cin, cout) weights, got {w.shape}")
        kh, kw = w.shape[:2]
        (sy, sx), (dy, dx) = stride, dilation
        if pads is None:
            pads = (dy * (kh - 1) // 2, dx * (kw - 1) // 2, dy * (kh - 1) - dy * (kh - 1) // 2,
                    dx * (kw - 1) - dx * (kw - 1) // 2)
        pt, pl, pb, pr = pads
        if min(sy, sx, dy, dx) < 1 or min(pads) < 0:
            raise CompileError(f"{name}: strides {stride} and dilations {dilation} must be "
                               f">= 1 and pads {pads} >= 0")
        ho = (image.h + pt + pb - dy * (kh - 1) - 1) // sy + 1
        wo = (image.w + pl + pr - dx * (kw - 1) - 1) // sx + 1
        if ho < 1 or wo < 1:
            raise CompileError(f"{name}: a {kh}x{kw} kernel (dilation {dilation}, pads {pads}) "
                               f"does not fit a {image.h}x{image.w} image")
        taps = [((dy * i - pt) % sy, (dx * j - pl) % sx, (dy * i - pt) // sy,
                 (dx * j - pl) // sx) for i in range(kh) for j in range(kw)]
        halo = max(max(abs(t[2]), abs(t[3])) for t in taps)
        # Output line g reads lines g - above .. g + below of its source grid.
        above, below = max(0, -min(t[2] for t in taps)), max(0, max(t[2] for t in taps))
        direct = (sy, sx) == (1, 1) and (ho, wo) == (image.h, image.w) and halo <= image.ring
        grid = image if direct else Image(image.batch, ho, wo, max(1, halo))
        phases = sorted({t[:2] for t in taps})
        w_q, bias_q, requant = self._quantized(w, bias, x.scale, out_scale, w_scale)
        w_q = w_q.reshape(kh * kw * x.tiles * lanes, -1)                     # rows: (tap, cin)
        # Fewer panels in flight when they would take more than a sixth of the room: the
        # rest is for the bands of lines.
        panels = self._weights(name, w_q, bias_q,
                               ring=min(3, max(1, self._room() // (6 * len(w_q) + 6))),
                               mults=requant[0])
        n_tiles, w_pad, b_pad = panels.n_tiles, panels.w_pad, panels.b_pad
        # The reference: every tap's window of the zero-padded pixels, on the output grid.
        pixels = np.pad(image.from_rows(x.ref), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        acc = np.zeros((image.batch * ho * wo, n_tiles * lanes), np.int64)
        for tap in range(kh * kw):
            i, j = divmod(tap, kw)
            window = pixels[:, dy * i:dy * i + sy * (ho - 1) + 1:sy,
                            dx * j:dx * j + sx * (wo - 1) + 1:sx]
            acc += int_matmul(window.reshape(acc.shape[0], -1),
                              w_pad[tap * x.tiles * lanes:(tap + 1) * x.tiles * lanes])
        acc_ref = grid.to_rows((acc + b_pad).reshape(image.batch, ho, wo, -1))
        gemm = dict(requant=requant, act=act, out_scale=(out_scale, None))
        pitch, k_tiles = grid.pitch, kh * kw * x.tiles
        n_src = 0 if direct else len(phases) * x.tiles

        def band(src, row0, g0, g1, out, cols):
            """Output lines g0..g1-1 (over the batch), column tiles ``cols`` (first, stop),
            from ``src``, the input's rows from row0 (the whole input, or a band loaded
            from HBM)."""
            inside = np.flatnonzero(grid.interior(g0 * pitch, (g1 - g0) * pitch))
            if not inside.size:
                return self._zero(name, out)
            lo, hi = int(inside[0]), int(inside[-1]) + 1
            first, stop = max(0, g0 - above), min(grid.batch * grid.lines, g1 + below)
            if direct:
                base = lambda kt: src.tile(kt % x.tiles) + g0 * pitch - row0
            else:
                ph = self._phases(f"{name} phases", x, src, row0, grid, phases, (sy, sx),
                                  first, stop)
                base = lambda kt: (ph.tile(phases.index(taps[kt // x.tiles][:2]) * x.tiles
                                           + kt % x.tiles) + (g0 - first) * pitch)
            offset = lambda kt: taps[kt // x.tiles][2] * pitch + taps[kt // x.tiles][3]
            # Per source tile, the rows a block of output rows reads: its taps' extremes.
            extent = {}
            for kt in range(k_tiles):
                start = base(kt) + offset(kt)
                key = start - offset(kt)
                a, b = extent.get(key, (start, start))
                extent[key] = (min(a, start), max(b, start))
            reads = lambda first, count: [Region("spad", a + first, b - a + count)
                                          for a, b in extent.values()]
            rows = (g1 - g0) * pitch
            return self._gemm(name, lambda kt: base(kt) + offset(kt), k_tiles, lo, hi, rows,
                              acc_ref[g0 * pitch:g1 * pitch], n_tiles, panels, reads=reads,
                              grid=(grid, g0 * pitch), out=out, cols=cols, **gemm)

        def sizes(lines, tiles):
            """Regions a band of ``lines`` output lines and ``tiles`` column tiles
            allocates: output, input band, phase images, accumulators."""
            src_lines = (1 if direct else sy) * (lines + above + below)
            gathered = not direct and x.home in self._spilled      # phases straight from HBM
            return ([lines * pitch * tiles, 0 if gathered else src_lines * image.pitch * x.tiles]
                    + [(lines + above + below) * pitch * n_src] * (n_src > 0)
                    + [lines * pitch] * min(tiles, 3))

        def moved(lines, in_place):
            """Input rows a band of ``lines`` output lines moves, and in how many µTOps:
            its phase images (the VE's copies, or the DMA's gathers from HBM), and the
            input lines the DMA loads unless they are read in place."""
            loaded = not (in_place or not direct and x.home in self._spilled)
            src_lines = (1 if direct else sy) * (lines + above + below)
            return ((lines + above + below) * pitch * n_src
                    + src_lines * image.pitch * x.tiles * loaded, n_src + x.tiles * loaded)

        def source_rows(g0, g1):
            """The input rows lines g0..g1-1 of the output read."""
            first, stop = max(0, g0 - above), min(grid.batch * grid.lines, g1 + below)
            if direct:
                return first * pitch, stop * pitch
            if x.home in self._spilled:
                return 0, 0                     # the DMA gathers the phases from HBM
            lines = []
            for g in range(first, stop):
                i, v = divmod(g, grid.lines)
                lines += [i * image.lines + image.ring + sy * (v - grid.ring) + a
                          for a in {a for a, _ in phases}
                          if 0 <= sy * (v - grid.ring) + a < image.h]
            if not lines:
                return 0, 0
            return min(lines) * image.pitch, (max(lines) + 1) * image.pitch

        out = self._image_op(name, x, grid, n_tiles, _gemm_scale(act, (out_scale, None)),
                             sizes, source_rows, band, panels, moved)
        panels.free()
        self._op(f"conv{kh}x{kw}", name)
        return out

    def _image_op(self, name, x, grid, n_tiles, scale, sizes, source_rows, band, panels=None,
                  moved=None):
        """An image operator with output laid out as ``grid`` (``n_tiles`` tiles at
        ``scale``), computed by ``band(src, row0, g0, g1, out, cols)``: output lines
        g0..g1-1 over the batch, column tiles cols (first, stop), from ``src`` holding the
        input's rows from row0 on. Whole when the input, output and ``sizes(all lines,
        n_tiles)`` fit; otherwise by bands of lines, each reading ``source_rows(g0, g1)``
        (loaded from HBM, where the input goes first unless it fits beside a band of at
        least 4 lines), its output stored to HBM (born spilled).

        With ``panels`` (a convolution's weights), the bands run in the tiler's loop
        order: all column tiles per band with the panels streaming, or groups of column
        tiles whose panels stay while the bands pass; ``moved(lines, in_place)`` is the
        input rows a band of that many lines moves (phase images the VE makes, lines the
        DMA loads) and in how many µTOps."""
        total, pitch, lanes = grid.batch * grid.lines, grid.pitch, self.lanes
        spilled = x.home in self._spilled
        whole = ([x.rows * x.tiles] * spilled + [sizes(total, n_tiles)[0]]
                 + sizes(total, n_tiles)[2:])
        if sum(whole) <= self._room(x) and self._make_room(whole, x):
            x = self.resident(x)
            out = self._new(grid.rows, n_tiles, scale, np.zeros((grid.rows, n_tiles * lanes)),
                            name, grid)
            return band(x, 0, 0, total, out, (0, n_tiles))

        def order(pieces, in_place):
            """(lines per band, passes over column tiles) when a band allocates ``pieces``."""
            if panels is None:
                return self.largest_band(name, total, lambda n: pieces(n, n_tiles)), None
            tiling = self._tiling(name, panels, total, pitch, panels.k // lanes, pieces,
                                  lambda n: -(-total // n) * moved(n, in_place)[0],
                                  moved(1, in_place)[1])
            return tiling.band, tiling

        def run(lines, tiling, compute, pieces):
            if tiling is not None:
                panels.arrange(tiling)
            return self._by_bands(name, grid.rows, n_tiles, lines * pitch, compute, grid,
                                  lambda n, tiles: pieces(n // pitch, tiles), pitch,
                                  None if tiling is None else tiling.groups(n_tiles))

        if not spilled:
            held = self.resident(x)
            in_place = lambda n, tiles: [sizes(n, tiles)[0]] + sizes(n, tiles)[2:]
            try:
                lines, tiling = order(in_place, True)
            except CompileError:
                lines = 0
            if lines >= min(total, 4):
                return run(lines, tiling,
                           lambda r0, count, cols: band(
                               held, 0, r0 // pitch, (r0 + count) // pitch,
                               self._band_out(name, count, cols[1] - cols[0], scale), cols),
                           in_place)
            self._spill(x.home)
        lines, tiling = order(sizes, False)

        def from_hbm(r0, count, cols):
            g0, g1 = r0 // pitch, (r0 + count) // pitch
            out = self._band_out(name, count, cols[1] - cols[0], scale)
            a, b = source_rows(g0, g1)
            src = self.load_band(x, a, b - a) if b > a else None
            return band(src, a, g0, g1, out, cols)
        return run(lines, tiling, from_hbm, sizes)

    def _zero(self, name, t):
        """VE µTOps writing 0 to every row of tensor ``t``."""
        for k in range(t.tiles):
            self._ve(_zero_units(t.tile(k), [(0, t.rows)]), reads=[t.tile_region(k)],
                     writes=[t.tile_region(k)],
                     name=f"{name} zero{k}")
        t.ref[:] = 0
        return t

    def _band_out(self, name, rows, tiles, scale):
        return self._new(rows, tiles, scale, np.zeros((rows, tiles * self.lanes)),
                         f"{name} band")

    def _phases(self, name, x, src, row0, grid, phases, stride, first, stop):
        """Phase images of image ``x``: for each (a, b) of ``phases`` and channel tile,
        grid lines first..stop-1 (over the batch) of P[a, b][v, u] = x[sy*v + a, sx*u + b],
        zero where that is outside the input. From ``src`` (x's rows from row0 on, in the
        scratchpad) the VE zeroes what is outside and copies the rest (with sx = 1 one loop
        over lines per image, otherwise a loop over the pixels of each line); when x lives
        in HBM (``src`` None), the DMA gathers each line's pixels with an HBM stride of sx
        pixels."""
        sy, sx = stride
        image, lanes = x.image, self.lanes
        tiles, pitch, r = x.tiles, grid.pitch, grid.ring
        lines = stop - first
        count = len(phases) * tiles
        ref = np.zeros((lines * pitch, count * lanes), np.int64)
        out = self._new(lines * pitch, count, x.scale, ref, name)
        for p, (a, b) in enumerate(phases):
            valid = []                          # (grid line, image, input line)
            for g in range(first, stop):
                i, v = divmod(g, grid.lines)
                y = sy * (v - r) + a
                if 0 <= y < image.h:
                    valid.append((g, i, y))
            ncols = min((image.w - 1 - b) // sx + 1, pitch - r) if b < image.w else 0
            inside = np.zeros((lines, pitch), bool)
            for g, i, y in valid:
                inside[g - first, r:r + ncols] = True
                ref[(g - first) * pitch + r:(g - first) * pitch + r + ncols,
                    p * tiles * lanes:(p + 1) * tiles * lanes] = \
                    x.ref[image.row(i, y, b) + sx * np.arange(ncols)]
            outside = _runs(~inside.reshape(-1))
            for t in range(tiles):
                dst = out.tile(p * tiles + t)
                region = out.tile_region(p * tiles + t)
                if src is None:
                    self._ve(_zero_units(dst, outside), reads=[region], writes=[region],
                             name=f"{name} zero.{p}.{t}")
                    self._gather(f"{name}.{p}.{t}", x, t, region,
                                 [(dst + (g - first) * pitch + r + f, image.row(i, y, b) + sx * f, n)
                                  for g, i, y in valid for f, n in row_spans(ncols)], sx)
                    continue
                units = _zero_units(dst, outside, src.tile(t), min(256, src.rows))
                src_row = lambda i, y: src.tile(t) + image.row(i, y, b) - row0
                if sx == 1 and ncols <= 256:
                    # One loop per image over its consecutive valid lines.
                    groups = {}
                    for g, i, y in valid:
                        groups.setdefault(i, []).append((g, y))
                    for i, rows in groups.items():
                        g, y = rows[0]
                        units.append([instr("loop", len(rows), 1, pitch, sy * image.pitch),
                                      instr("vaddi", dst + (g - first) * pitch + r,
                                            src_row(i, y), 0, ncols)])
                else:
                    for g, i, y in valid:
                        d = dst + (g - first) * pitch + r
                        if sx == 1:
                            units += [[instr("vaddi", d + f, src_row(i, y) + f, 0, n)]
                                      for f, n in row_spans(ncols)]
                        else:
                            units.append([instr("loop", ncols, 1, 1, sx),
                                          instr("vaddi", d, src_row(i, y), 0, 1)])
                self._ve(units, reads=[src.tile_region(t)], writes=[region],
                         name=f"{name}.{p}.{t}")
        out.ref[:] = ref
        return out

    def _gather(self, name, x, t, region, pieces, stride):
        """DMA loads of rows of tile ``t`` of spilled tensor ``x`` into ``region``: each
        (spad row, x row, n) piece takes n rows, ``stride`` rows of x apart."""
        old, hbm = self._spilled[x.home]
        pw, lanes = self._packing(x.home), self.lanes
        step = lanes // pw
        base = hbm.start + (x.region.start - old.start + t * x.rows) * step
        body = [instr("dcfg", lanes, stride * step, 1, i8=int(pw > 1))]
        body += [instr("dload", row, base + xrow * step, n) for row, xrow, n in pieces]
        self.builder.split_utop(Engine.DMA, body, reads=[hbm], writes=[region], name=name)
        self.reloads += 1
        self.reload_bytes += 4 * step * sum(n for _, _, n in pieces)

    def matmul(self, name, x, y, out_scale, out=None, transposed=False):
        """x @ y of two activations (y's rows are the K dimension), int8 out; with
        ``transposed``, x @ y^T (y's columns are K): y's rows load as weight columns
        (``ldw`` with ``t``), so attention's keys need no transpose."""
        lanes = self.lanes
        if transposed:
            if y.tiles != x.tiles:
                raise CompileError(f"{name}: {x.tiles * lanes} columns against the "
                                   f"{y.tiles * lanes} columns of a transposed operand")
            n_tiles = -(-y.rows // lanes)
            acc_ref = np.zeros((x.rows, n_tiles * lanes), np.int64)
            acc_ref[:, :y.rows] = int_matmul(x.ref, y.ref.T)

            def panel(ct, slot):
                k = min(lanes, y.rows - ct * lanes)
                w_src = lambda kt: y.tile(kt) + ct * lanes
                return lambda kt: instr("ldw", w_src(kt), k, t=1), w_src, y.region, None, None
        else:
            if y.rows != x.tiles * lanes:
                raise CompileError(f"{name}: {x.tiles * lanes} columns against {y.rows} rows")
            n_tiles, acc_ref = y.tiles, int_matmul(x.ref, y.ref)

            def panel(ct, slot):
                w_src = lambda kt: y.tile(ct) + kt * lanes
                return (lambda kt: instr("ldw", w_src(kt), lanes), w_src, y.tile_region(ct),
                        None, None)

        result = self._gemm(name, x.tile, x.tiles, 0, x.rows, x.rows, acc_ref, n_tiles, panel,
                            requant=multiplier(x.scale * y.scale / out_scale), act=None,
                            out_scale=(out_scale, None), reads=self._rows_of(x, 0), out=out)
        self._op("matmul", name)
        return result

    # --- vector operators ------------------------------------------------------------------

    def _elementwise(self, name, tensors, scale, ref, per_rows, out=None, scratch=False,
                     extra_reads=()):
        """VE µTOps per tile and block of at most 128 rows: ``per_rows(t, dst, first, n)``
        gives the instructions (blocks pipeline with the operators around them); with
        ``scratch``, ``per_rows(t, dst, first, n, tmp)`` also gets a block of scratch rows
        (two, alternating, so that blocks still overlap)."""
        x = tensors[0]
        out = out or self._new(x.rows, x.tiles, scale, ref, name, x.image)
        blocks = [(t, first, n) for t in range(x.tiles) for first, n in row_spans(x.rows, 128)]
        spare = [self._alloc(min(x.rows, 128), f"{name} scratch")
                 for _ in range(min(2, len(blocks)) if scratch else 0)]
        for index, (t, first, n) in enumerate(blocks):
            rows = lambda y: Region("spad", y.tile(t) + first, n)
            tmp = [spare[index % len(spare)]] if spare else []
            self._ve([per_rows(t, out.tile(t) + first, first, n, *(r.start for r in tmp))],
                     reads=[rows(a) for a in tensors] + tmp + list(extra_reads),
                     writes=[rows(out)] + tmp,
                     name=f"{name}.{t}.{first}")
        for region in spare:
            self.builder.free(region)
        self._op("eltwise", name)
        return out

    def add(self, name, a, b, relu=False, out_scale=None):
        """Saturating int8 a + b, optionally followed by relu, at ``out_scale`` (default
        a's). Operands of the output's scale add exactly; otherwise each is weighted by
        its scale over the output's (b's weight relative to a's with 24 bits, a's 31) and
        the sum is rounded once, as a float add followed by one quantization would be."""
        if a.ref.shape != b.ref.shape:
            raise CompileError(f"{name}: add needs equal shapes, got {a.ref.shape} and "
                               f"{b.ref.shape}")
        out_scale = out_scale or a.scale
        same = lambda s: abs(s / out_scale - 1) < 1e-9        # float noise is no rescale
        if same(a.scale) and same(b.scale):
            ref = np.clip(a.ref + b.ref, -128, 127)
            ref = np.maximum(ref, 0) if relu else ref
            return self._elementwise(name, [a, b], out_scale, ref, lambda t, d, f, n: (
                [instr("vadd.s8", d, a.tile(t) + f, b.tile(t) + f, n)]
                + ([instr("vmaxi", d, d, 0, n)] if relu else [])))
        # y = round((a * 2^c + b * w) * M / 2^shift): w = b's weight over a's in 2^-c
        # units (a row loaded into a vector register), M a's weight over 2^c (31 bits).
        ratio = b.scale / a.scale
        c = 24
        while (128 + 128 * ratio) * 2 ** c >= 2 ** 31:
            c -= 1
        if c < 0:
            raise CompileError(f"{name}: operand scales {a.scale:g} and {b.scale:g} are more "
                               f"than 2^23 apart")
        w = round(ratio * 2 ** c)
        mult, shift = multiplier(a.scale / out_scale / 2 ** c)
        ref = rq((a.ref << c) + b.ref * w, mult, shift)
        ref = np.maximum(ref, 0) if relu else ref
        weight = self.constant(np.full(self.lanes, w), f"{name} weight")
        return self._elementwise(name, [a, b], out_scale, ref, lambda t, d, f, n, tmp: (
            [instr("vld", 1, weight.start), _vsetq(mult, shift, 0),
             instr("vshli", d, a.tile(t) + f, c, n), instr("vmulr", tmp, b.tile(t) + f, 1, n),
             instr("vadd", d, d, tmp, n), instr("vrq", d, d, n)]
            + ([instr("vmaxi", d, d, 0, n)] if relu else [])),
            scratch=True, extra_reads=[weight])

    def mul(self, name, a, b, out_scale):
        """int8 a * b, rescaled to ``out_scale``."""
        mult, shift = multiplier(a.scale * b.scale / out_scale)
        return self._elementwise(name, [a, b], out_scale, rq(a.ref * b.ref, mult, shift),
                                 lambda t, d, f, n: [
                                     _vsetq(mult, shift, 0),
                                     instr("vmul", d, a.tile(t) + f, b.tile(t) + f, n),
                                     instr("vrq", d, d, n)])

    def rescale(self, name, x, out_scale):
        """The same values at another scale (int8, rounded and saturated)."""
        mult, shift = multiplier(x.scale / out_scale)
        return self._elementwise(name, [x], out_scale, rq(x.ref, mult, shift),
                                 lambda t, d, f, n: [_vsetq(mult, shift, 0),
                                                     instr("vrq", d, x.tile(t) + f, n)])

    def activation(self, name, x, function, out_scale):
        """A nonlinear function by table lookup (gelu, sigmoid, tanh, relu)."""
        table = activation_table(function, x.scale, out_scale)
        lut = self.constant(table, f"{function} table")
        out = self._new(x.rows, x.tiles, out_scale, table[x.ref + 128], name, x.image)
        for t in range(x.tiles):
            units = [[instr("vlut", out.tile(t) + f, x.tile(t) + f, n)]
                     for f, n in row_spans(x.rows)]
            self._ve(units, reads=[x.tile_region(t), lut], writes=[out.tile_region(t)],
                     name=f"{name}.{t}", preamble=[instr("vldlut", lut.start)])
        self._op("activation", name)
        return out

    def softmax(self, name, x, out_scale=1 / 127):
        """Row softmax over all columns, as integers, rounded to ``out_scale``.

        d = x - rowmax (<= 0); e = round(2^15 exp(d * scale)) by table lookup (a second
        table covers d below -128 when exp(-128 * scale) still counts); s = sum of e;
        v = floor(log2 s) - 15 by a ladder of compares, m = s >> v in [2^15, 2^16); 1/m
        interpolated between 257 points (m's top 9 bits pick the interval, its low 7 the
        point in it): r ~ 2^30 / m, within about 2^-15; out = rq((e * r) >> v) =
        e / s / out_scale, rounded to the nearest (ties to even) and saturated, as
        onnxruntime's QuantizeLinear of its float softmax within about 0.01 LSB.
        """
        lanes, tiles, rows = self.lanes, x.tiles, x.rows
        cols = tiles * lanes
        exp_bits, frac_bits = 15, 7
        if cols >= 1 << 16:
            raise CompileError(f"{name}: softmax over {cols} columns: at most 65535")
        exp_of = lambda d: np.round((1 << exp_bits) * np.exp(d * x.scale)).astype(np.int64)
        j = np.arange(256) - 128
        exp_near = exp_of(np.minimum(j, 0))                   # d in -128..0
        exp_near[0] = 0                                       # d = -128: the far table's
        exp_far = np.where(j <= 0, exp_of(j - 128), 0)        # d in -255..-128
        far = bool(exp_far.any())
        if not far:
            exp_near[0] = exp_of(-128)
        recip = _interpolation_tables(
            np.round(2.0 ** 30 / ((256 + np.arange(257)) << frac_bits)).astype(np.int64), 0)
        ladder = range(exp_bits + 1, int(np.log2(cols)) + exp_bits + 1)
        mult, shift = multiplier(2.0 ** -30 / out_scale)
        # The reference, step for step.
        peak = x.ref.reshape(rows, tiles, lanes).max(axis=(1, 2))[:, None]
        d = x.ref - peak
        e = exp_near[np.clip(d, -128, 127) + 128]
        if far:
            e = e + exp_far[np.clip(d + 128, -128, 127) + 128]
        total = e.sum(axis=1, keepdims=True)
        v = sum(np.minimum(total >> b, 1) for b in ladder) if ladder else 0 * total
        r = _interpolate_ref(recip, total >> v, frac_bits, 256)
        out = self._new(rows, tiles, out_scale, rq((e * r) >> v, mult, shift), name)
        luts = [self.constant(t, what) for t, what in (
            (exp_near, "exp table"), (exp_far, "far exp table"), (recip[0], "reciprocal table"),
            (recip[1], "reciprocal slope table")) if what != "far exp table" or far]
        # e and (e * r) >> v live in the output's rows until the last vrq makes them int8;
        # five scratch rows per row of a span: the peak (then m, then m's fraction), the
        # sum (then r), v, the interval's index, and a temporary.
        blocks, block = _span_scratch(self, rows, 5, f"{name} scratch")
        units = []
        for i, (f, n) in enumerate(row_spans(rows)):
            o = lambda t: out.tile(t) + f
            p, s_, v_, j_, t_ = (block(i).start + k * n for k in range(5))
            unit = [instr("vldlut", luts[0].start)]
            unit += _reduce_rows("vmax", "vlmax", p, [x.tile(t) + f for t in range(tiles)], n)
            for t in range(tiles):
                unit += [instr("vsub", o(t), x.tile(t) + f, p, n), instr("vlut", o(t), o(t), n)]
            if far:
                unit.append(instr("vldlut", luts[1].start))
                for t in range(tiles):
                    unit += [instr("vsub", t_, x.tile(t) + f, p, n), instr("vaddi", t_, t_, 128, n),
                             instr("vlut", t_, t_, n), instr("vadd", o(t), o(t), t_, n)]
            unit += _reduce_rows("vadd", "vlsum", s_, [o(t) for t in range(tiles)], n)
            unit.append(instr("vmuli", v_, s_, 0, n))
            for b in ladder:
                unit += [instr("vsrai", t_, s_, b, n), instr("vmini", t_, t_, 1, n),
                         instr("vadd", v_, v_, t_, n)]
            unit.append(instr("vsra", p, s_, v_, n))                  # m
            unit += _interpolate(luts[-2:], p, j_, t_, s_, frac_bits, 256, n)   # r
            unit.append(_vsetq(mult, shift, 0))
            for t in range(tiles):
                unit += [instr("vmul", o(t), o(t), s_, n), instr("vsra", o(t), o(t), v_, n),
                         instr("vrq", o(t), o(t), n)]
            units.append(unit)
        self._ve(units, reads=[x.region, *luts, *blocks, out.region],
                 writes=[*blocks, out.region], name=name)
        for work in blocks:
            self.builder.free(work)
        self._op("softmax", name)
        return out

    def layernorm(self, name, x, gamma, beta, out_scale, epsilon=0.0):
        """Row layer normalization in integers, rounded once to ``out_scale``.

        d = D*x - sum(x) (exact: D times the deviation); V = sum(((d + h) >> a)^2) + eps
        (a chosen so nothing overflows, eps the ``epsilon`` in those units, V >= 1);
        V = m * 4^u with m in [2^14, 2^16) (u from a ladder of compares); r ~ 2^31 /
        sqrt(m) interpolated between 193 table points (within about 2^-20); t = d * r
        in two 32-bit halves, scaled by 2^-u, is the normalized value with about 20 bits;
        `vrqr` with gamma per lane (wide: 16 fractional bits kept), + beta per lane,
        rounded (ties to even) and saturated: onnxruntime's float LayerNormalization and
        QuantizeLinear within about 0.001 LSB.
        """
        lanes, tiles, rows = self.lanes, x.tiles, x.rows
        cols = tiles * lanes
        K, F, c = 14, 8, 16               # m's octaves; the interpolation's bits; y's fraction
        if cols > 2048:
            raise CompileError(f"{name}: layer norm over {cols} columns: at most 2048 (d * r "
                               f"in two 32-bit halves)")
        a = 0
        while cols * (((255 * cols) >> a) + 1) ** 2 >= 1 << 30:
            a += 1
        v_eps = int(round(epsilon / x.scale ** 2 * cols ** 3 / 4 ** a))
        if v_eps >= 1 << 30:
            most = 2 ** 30 * 4 ** a * x.scale ** 2 / cols ** 3
            raise CompileError(f"{name}: epsilon {epsilon:g} is too large for inputs of scale "
                               f"{x.scale:g} (at most {most:g})")
        c0 = max(a - 11, 0)               # |t| <= sqrt(D) * 2^(a + 19 - c0) / sqrt(D) < 2^31
        rsqrt = _interpolation_tables(
            np.round(2.0 ** 31 / np.sqrt((np.arange(193) + 64.0) * (1 << F))).astype(np.int64),
            64)
        g_real = (np.asarray(gamma, np.float64) * np.sqrt(cols) * 2.0 ** (c - a - 19 + c0)
                  / out_scale)
        peak = float(np.max(np.abs(g_real)))
        g_shift = min(63, 30 - int(np.floor(np.log2(peak)))) if peak > 0 else 0
        if g_shift < 0:
            raise CompileError(f"{name}: gamma up to {np.max(np.abs(gamma)):g} is too large "
                               f"for the output scale {out_scale:g}")
        g_q = np.round(g_real * 2.0 ** g_shift).astype(np.int64)
        b_q = np.clip(np.round(np.asarray(beta, np.float64) / out_scale * 2 ** c),
                      -(1 << 31), (1 << 31) - 1).astype(np.int64)
        # The reference, step for step.
        total = x.ref.sum(axis=1, keepdims=True)
        d = x.ref * cols - total
        q = (d + ((1 << a) >> 1)) >> a
        v = np.maximum((q * q).sum(axis=1, keepdims=True) + v_eps, 1)
        w, rest = 0 * v, v
        for k in (16, 8, 4, 2, 1):
            step = np.minimum(rest >> k, 1) * k
            w, rest = w + step, rest >> step
        u = (w - K) >> 1
        m = np.where(u >= 0, v >> np.maximum(2 * u, 0), v << np.maximum(-2 * u, 0))
        r = _interpolate_ref(rsqrt, m, F, 0)
        t = d * (r >> 12) + ((d * (r & 4095)) >> 12)
        e = u + c0
        t = (t >> np.maximum(e, 0)) << np.maximum(-e, 0)
        y = requantize(t, g_q, g_shift, 0, even=False, wide=True).astype(np.int64) + b_q
        ref = rq(y, 1, c)
        out = self._new(rows, tiles, out_scale, ref, name)
        luts = [self.constant(rsqrt[0], "rsqrt table"),
                self.constant(rsqrt[1], "rsqrt slope table")]
        params = self.constant(np.concatenate([g_q, b_q, np.full(lanes, v_eps)]),
                               f"{name} gamma beta")
        # d lives in the output's rows until the last steps make them int8; eight scratch
        # rows per row of a span (see the comments).
        blocks, block = _span_scratch(self, rows, 8, f"{name} scratch")
        units = []
        for i, (f, n) in enumerate(row_spans(rows)):
            o = lambda t: out.tile(t) + f
            r0, r1, r2, r3, r4, r5, r6, r7 = (block(i).start + k * n for k in range(8))
            unit = _reduce_rows("vadd", "vlsum", r0, [x.tile(t) + f for t in range(tiles)], n)
            for t in range(tiles):                       # d; r1 = sum of q^2
                square = r1 if t == 0 else r3
                unit += [instr("vmuli", o(t), x.tile(t) + f, cols, n),
                         instr("vsub", o(t), o(t), r0, n),
                         instr("vaddi", square, o(t), (1 << a) >> 1, n),
                         instr("vsrai", square, square, a, n),
                         instr("vmul", square, square, square, n)]
                if t:
                    unit.append(instr("vadd", r1, r1, r3, n))
            unit.append(instr("vlsum", r1, r1, n))
            if v_eps:
                unit += [instr("vld", 3, params.start + 2 * tiles), instr("vaddr", r1, r1, 3, n)]
            unit += [instr("vmaxi", r1, r1, 1, n),                      # V
                     instr("vaddi", r0, r1, 0, n), instr("vmuli", r2, r1, 0, n)]
            for k in (16, 8, 4, 2, 1):                   # r2 = w = floor(log2 V)
                unit += [instr("vsrai", r3, r0, k, n), instr("vmini", r3, r3, 1, n),
                         instr("vmuli", r3, r3, k, n), instr("vsra", r0, r0, r3, n),
                         instr("vadd", r2, r2, r3, n)]
            unit += [instr("vaddi", r3, r2, -K, n), instr("vsrai", r4, r3, 1, n),   # r4 = u
                     instr("vadd", r3, r4, r4, n), instr("vmaxi", r7, r3, 0, n),
                     instr("vmuli", r6, r3, -1, n), instr("vmaxi", r6, r6, 0, n),
                     instr("vsra", r0, r1, r7, n), instr("vshl", r0, r0, r6, n)]    # r0 = m
            unit += _interpolate(luts, r0, r2, r3, r5, F, 0, n)                  # r5 = r
            unit += [instr("vsrai", r6, r5, 12, n), instr("vshli", r3, r6, 12, n),
                     instr("vsub", r5, r5, r3, n),                     # r6, r5: r's halves
                     instr("vaddi", r3, r4, c0, n), instr("vmaxi", r7, r3, 0, n),
                     instr("vmuli", r4, r3, -1, n), instr("vmaxi", r4, r4, 0, n)]  # 2^-(u+c0)
            for t in range(tiles):
                unit += [instr("vmul", r3, o(t), r5, n), instr("vsrai", r3, r3, 12, n),
                         instr("vmul", o(t), o(t), r6, n), instr("vadd", o(t), o(t), r3, n),
                         instr("vsra", o(t), o(t), r7, n), instr("vshl", o(t), o(t), r4, n),
                         instr("vld", 1, params.start + t),
                         instr("vld", 2, params.start + tiles + t),
                         instr("vsetq", 0, g_shift, 0, wide=1),
                         instr("vrqr", o(t), o(t), 1, n),
                         instr("vaddr", o(t), o(t), 2, n),
                         _vsetq(1, c, 0),
                         instr("vrq", o(t), o(t), n)]
            units.append(unit)
        self._ve(units, reads=[x.region, *luts, params, *blocks, out.region],
                 writes=[*blocks, out.region], name=name)
        for work in blocks:
            self.builder.free(work)
        self._op("layernorm", name)
        return out

    def pool(self, name, x, kind="max", kernel=(2, 2), stride=(2, 2), pads=(0, 0, 0, 0),
             count_pads=False):
        """Max or average pooling of an image: any window (up to 16 x 16), stride and
        padding (``pads`` top, left, bottom, right). Windows are clipped to the image, so
        padding never takes part in a maximum, and an average divides by the pixels in its
        window (with ``count_pads``, by the whole window: ONNX's count_include_pad).

        Per output line, the VE runs a loop over its pixels of `vpoolmax`/`vpoolsum` (the
        window's lines apart by the input's pitch), a new loop where the clipped window
        changes (at the image's edges); an average is requantized by `vrq` with the
        multiplier of its window's size. Output ring 1; by bands of lines when large."""
        image = x.image
        (kh, kw), (sy, sx), (pt, pl, pb, pr) = kernel, stride, pads
        if kind not in ("max", "avg"):
            raise CompileError(f"{name}: pooling is 'max' or 'avg', not {kind!r}")
        if image is None:
            raise CompileError(f"{name}: pooling needs an image input")
        if not (1 <= kh <= 16 and 1 <= kw <= 16) or min(sy, sx) < 1 \
                or not (0 <= pt < kh and 0 <= pb < kh and 0 <= pl < kw and 0 <= pr < kw):
            raise CompileError(f"{name}: pooling windows are 1..16 pixels a side with strides "
                               f">= 1 and pads below the window, got kernel {kernel}, strides "
                               f"{stride}, pads {pads}")
        ho, wo = (image.h + pt + pb - kh) // sy + 1, (image.w + pl + pr - kw) // sx + 1
        if ho < 1 or wo < 1:
            raise CompileError(f"{name}: a {kh}x{kw} window does not fit a {image.h}x{image.w} "
                               f"image with pads {pads}")
        grid = Image(image.batch, ho, wo)
        clip = lambda n, size, s, p, k: [(max(0, s * u - p), min(size, s * u - p + k))
                                         for u in range(n)]
        lines, cols = clip(ho, image.h, sy, pt, kh), clip(wo, image.w, sx, pl, kw)
        # The reference, window by window offset (the clipped windows as numpy slices).
        pixels = image.from_rows(x.ref)
        average = kind == "avg"
        fill = 0 if average else np.iinfo(np.int64).min
        padded = np.pad(pixels, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
        views = [padded[:, i:i + sy * (ho - 1) + 1:sy, j:j + sx * (wo - 1) + 1:sx]
                 for i in range(kh) for j in range(kw)]
        counts = np.outer([b - a for a, b in lines], [b - a for a, b in cols])
        if count_pads:
            counts[:] = kh * kw
        if average:
            sums = np.sum(views, axis=0)
            pooled = np.zeros_like(sums)
            for c in np.unique(counts):
                at = counts == c
                pooled[:, at] = rq(sums[:, at], *multiplier(1 / c))
        else:
            pooled = np.max(views, axis=0)
        ref = grid.to_rows(pooled)
        op = f"vpool{'sum' if average else 'max'}"
        # Runs of output pixels of one line with the same clipped window, one pixel apart.
        runs = []
        for u, (a, b) in enumerate(cols):
            if runs and [b - a, a - sx * u] == runs[-1][3:]:
                runs[-1][1] += 1
            else:
                runs.append([u, 1, a, b - a, a - sx * u])

        def band(src, row0, g0, g1, out, cols):
            if src is None:                     # lines of the ring alone
                return self._zero(name, out)
            for t in range(x.tiles):
                dst = out.tile(t) - g0 * grid.pitch
                units = _zero_units(out.tile(t), grid.ring_spans(g0 * grid.pitch,
                                                                 (g1 - g0) * grid.pitch),
                                    src.tile(t), min(256, src.rows))
                for g in range(g0, g1):
                    i, v = divmod(g, grid.lines)
                    v -= grid.ring
                    if not 0 <= v < ho:
                        continue
                    y0, y1 = lines[v]
                    for u, n, x0, nx, _ in runs:
                        d = dst + grid.row(i, v, u)
                        unit = [instr("loop", n, 1, 1, sx)] if n > 1 else []
                        unit.append(instr(op, d, src.tile(t) + image.row(i, y0, x0) - row0,
                                          image.pitch, y1 - y0, nx))
                        if average:
                            mult, shift = multiplier(1 / counts[v, u])
                            unit.append(_vsetq(mult, shift, 0))
                            unit += [instr("vrq", d + f, d + f, c) for f, c in row_spans(n)]
                        units.append(unit)
                self._ve(units, reads=[src.tile_region(t)], writes=[out.tile_region(t)],
                         name=f"{name}.{t}.{g0}")
            out.ref[:] = ref[g0 * grid.pitch:g1 * grid.pitch]
            return out

        def sizes(n, tiles):
            return [n * grid.pitch * tiles, (sy * n + kh) * image.pitch * x.tiles]

        def source_rows(g0, g1):
            used = []
            for g in range(g0, g1):
                i, v = divmod(g, grid.lines)
                if 0 <= v - grid.ring < ho:
                    y0, y1 = lines[v - grid.ring]
                    used += [i * image.lines + image.ring + y0, i * image.lines + image.ring + y1]
            if not used:
                return 0, 0
            return min(used) * image.pitch, max(used) * image.pitch

        out = self._image_op(name, x, grid, x.tiles, x.scale, sizes, source_rows, band)
        self._op("pool", name)
        return out

    def global_avgpool(self, name, x, out_scale):
        """Mean over all pixels of each image: (batch, channels). Each image's grid rows
        (the zero ring included) are summed by `vrsum` in pieces of at most 256 rows, the
        pieces' sums in turn, until one row per image is left; a spilled input is loaded
        some tiles, or one tile and a band of rows, at a time."""
        image = x.image
        per_image = image.lines * image.pitch
        mult, shift = multiplier(x.scale / (image.h * image.w) / out_scale)
        sums = image.from_rows(x.ref).sum(axis=(1, 2))
        out = self._new(image.batch, x.tiles, out_scale, rq(sums, mult, shift), name)
        levels = [per_image]
        while levels[-1] > 1:
            levels.append(-(-levels[-1] // 256))
        # Level k >= 1 of image i: rows at[k] + i * levels[k] of the work region; the
        # last level (one row per image) comes first, so the totals are consecutive.
        at, top = {len(levels) - 1: 0}, image.batch
        for k in range(1, len(levels) - 1):
            at[k], top = top, top + image.batch * levels[k]
        work = self._alloc(top, f"{name} sums")
        row = lambda k, i: work.start + at[k] + i * levels[k]

        def reduce(k, i, src, first, count):
            """Level k + 1 rows of image i from rows first.. of its level k at ``src``."""
            return [instr("vrsum", row(k + 1, i) + (first + f) // 256, src + f, 1, n)
                    for f, n in row_spans(count)]

        def upper(i):
            return [reduce(k, i, row(k, i), 0, levels[k]) for k in range(1, len(levels) - 1)]

        def finish(t):
            self._ve([[instr("vrq", out.tile(t), row(len(levels) - 1, 0), image.batch)]],
                     reads=[work], writes=[out.tile_region(t)], name=f"{name}.{t} rq",
                     preamble=[_vsetq(mult, shift, 0)])

        def whole(src, t0, tiles):
            for t in range(tiles):
                units = []
                for i in range(image.batch):
                    units.append(reduce(0, i, src.tile(t) + i * per_image, 0, per_image))
                    units += upper(i)
                self._ve(units, reads=[src.tile_region(t), work], writes=[work],
                         name=f"{name}.{t0 + t}")
                finish(t0 + t)

        if x.home not in self._spilled:
            whole(self.resident(x), 0, x.tiles)
        else:
            try:
                group = self.largest_band(name, x.tiles, lambda k: [k * x.rows])
            except CompileError:
                group = 0
            if group:
                for t0 in range(0, x.tiles, group):
                    part = self.load_band(x, 0, x.rows, t0, min(group, x.tiles - t0))
                    whole(part, t0, part.tiles)
                    self._free_home(part.home)
            else:
                chunk = self.largest_band(name, per_image, lambda r: [r])
                chunk = max(256, chunk // 256 * 256)
                for t in range(x.tiles):
                    for i in range(image.batch):
                        for c0 in range(0, per_image, chunk):
                            n = min(chunk, per_image - c0)
                            part = self.load_band(x, i * per_image + c0, n, t, 1)
                            self._ve([reduce(0, i, part.tile(0), c0, n)],
                                     reads=[part.tile_region(0), work], writes=[work],
                                     name=f"{name}.{t}.{i}.{c0}")
                            self._free_home(part.home)
                        self._ve(upper(i), reads=[work], writes=[work], name=f"{name}.{t}.{i}")
                    finish(t)
        self.builder.free(work)
        self._op("pool", name)
        return out

    def embedding(self, name, table, ids, scale=None):
        """Rows of an embedding table (float, quantized here) gathered by the DMA."""
        lanes = self.lanes
        vocab, dim = table.shape
        tiles = self._tiles(dim, f"embedding {name}")
        scale = scale or float(np.max(np.abs(table))) / 127 or 1.0
        table_q = quantize(table, scale)
        idx_region, ids = self.indices(f"{name} ids", ids, vocab)
        pw = self.per_word
        hbm = self.builder.hbm(table_q.size // pw, f"{name} table", self._int8_words(table_q))
        out = self._new(len(ids), tiles, scale, table_q[ids], name)
        # One dgather moves at most 256 rows; each piece starts at a whole row of indices.
        pieces = row_spans(len(ids), 256 // lanes * lanes)
        for t in range(tiles):
            body = [instr("dbase", hbm.start + t * lanes // pw),
                    instr("dcfg", lanes, dim // pw, 1, i8=int(pw > 1))]
            body += [instr("dgather", out.tile(t) + first, idx_region.start + first // lanes, n)
                     for first, n in pieces]
            self.builder.split_utop(Engine.DMA, body, reads=[hbm, idx_region],
                                    writes=[out.tile_region(t)], name=f"{name} gather{t}")
        self.builder.free(idx_region)
        self._op("embedding", name)
        return out

    def concat(self, name, parts):
        """Columns of several tensors side by side (tiles are copied by the VE)."""
        rows = parts[0].rows
        if any(p.rows != rows or p.scale != parts[0].scale for p in parts):
            raise CompileError(f"{name}: concat needs equal rows and scales")
        out = self._new(rows, sum(p.tiles for p in parts), parts[0].scale,
                        np.concatenate([p.ref for p in parts], axis=1), name)
        t = 0
        for p in parts:
            for pt in range(p.tiles):
                units = [[instr("vaddi", out.tile(t) + f, p.tile(pt) + f, 0, n)]
                         for f, n in row_spans(rows)]
                self._ve(units, reads=[p.tile_region(pt)], writes=[out.tile_region(t)],
                         name=f"{name}.{t}")
                t += 1
        self._op("concat", name)
        return out

    def transpose(self, name, x):
        """x^T on the vector engine (for attention's K^T): rows must be a multiple of lanes.

        Element (i, r) of a lanes x lanes block reaches lane i of row r by masking lane r
        (vmulr with a one-hot vector), broadcasting it across the row (vlsum), keeping
        lane i of row i (vmul with the identity) and summing the rows (vrsum).
        """
        lanes = self.lanes
        row_tiles = self._tiles(x.rows, f"{name} rows")
        eye = self.constant(np.eye(lanes, dtype=np.int64), "identity")
        out = self._new(x.tiles * lanes, row_tiles, x.scale, x.ref.T.copy(), name)
        work = self._alloc(lanes, f"{name} scratch")
        for j in range(row_tiles):
            for ti in range(x.tiles):
                units = [[instr("vld", 0, eye.start + r),
                          instr("vmulr", work.start, x.tile(ti) + j * lanes, 0, lanes),
                          instr("vlsum", work.start, work.start, lanes),
                          instr("vmul", work.start, work.start, eye.start, lanes),
                          instr("vrsum", out.tile(j) + ti * lanes + r, work.start, 1, lanes)]
                         for r in range(lanes)]
                self._ve(units, reads=[x.tile_region(ti), eye, work],
                         writes=[work, out.tile_region(j)], name=f"{name}.{j}.{ti}")
        self.builder.free(work)
        self._op("transpose", name)
        return out
