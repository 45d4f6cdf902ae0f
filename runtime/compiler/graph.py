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
same layout with one row per pixel of a zero-padded (h+2) x (w+2) grid: a 3x3 convolution
is then 9 shifted views of its input (im2col by addressing, no copy), and pooling and
convolution read the zero ring as padding.

Weights, biases, tables and inputs are placed in HBM by the host; weights stream into a
ring of scratchpad buffers per layer (DMA of the next column panel overlaps the MEs on
the current one); activations stay in the scratchpad while they fit. When an allocation
finds no room, the activation used least recently by the operators (and not by the one
being lowered) is *spilled*: stored to an HBM region of its own and its rows freed; the
next operator that reads it loads it back, wherever there is room then (``resident``).
A linear layer whose output does not fit, or a row-local operator (a residual Add, a
layer norm: ``rowwise``) whose inputs and output do not, runs by bands of rows: the output
is stored to HBM band by band and read back by bands by the next such operator
(``_banded_gemm``, ``_by_bands``, ``load_band``). int8 data in HBM (weights, inputs,
embedding tables, outputs, and constant blocks whose values fit int8: masks, the
identity, activation tables, layer-norm parameters) is packed four values per word
(`dcfg ... i8`) when a tile's row is whole words (lanes a multiple of 4); biases and the
exp, reciprocal and rsqrt tables stay one int32 per word.
"""

from dataclasses import dataclass

import numpy as np

from isa.encoding import Engine, instr, pack_int8, unpack_int8

from .builder import CompileError, ProgramBuilder, Region, k_runs, row_spans, run_body
from .quant import activation_table, int_matmul, multiplier, quantize, rq

__all__ = ["Graph", "Tensor", "Image"]


@dataclass(frozen=True)
class Image:
    """Padded image layout of a tensor: ``batch`` images of h x w pixels, 1-pixel zero ring."""
    batch: int
    h: int
    w: int

    @property
    def pitch(self):
        return self.w + 2

    @property
    def rows(self):
        return self.batch * (self.h + 2) * (self.w + 2)

    def interior(self):
        """Boolean mask over the rows: True for real pixels, False for the zero ring."""
        grid = np.zeros((self.batch, self.h + 2, self.w + 2), bool)
        grid[:, 1:-1, 1:-1] = True
        return grid.reshape(-1)

    def to_rows(self, x):
        """(batch, h, w, c) -> (rows, c) with zero padding."""
        padded = np.zeros((self.batch, self.h + 2, self.w + 2, x.shape[-1]), np.int64)
        padded[:, 1:-1, 1:-1] = x
        return padded.reshape(self.rows, -1)

    def from_rows(self, rows):
        return rows.reshape(self.batch, self.h + 2, self.w + 2, -1)[:, 1:-1, 1:-1]


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


def _reduce_rows(op, lane_op, dst, sources, n):
    """Instructions combining rows of several tiles lane by lane (``op``) into ``dst``, then
    across lanes (``lane_op``, broadcast): one value per row, in every lane."""
    body, source = [], sources[0]
    for other in sources[1:]:
        body.append(instr(op, dst, source, other, n))
        source = dst
    return body + [instr(lane_op, dst, source, n)]


def _bucket_lookup(row, k, n):
    """Instructions replacing the non-negative values of ``row`` by TABLE[value >> k] (the
    loaded table; `vlut` adds 128 to its clamped input)."""
    return [instr("vsrai", row, row, k, n), instr("vaddi", row, row, -128, n),
            instr("vlut", row, row, n)]


def _bucket_lookup_ref(table, values, k):
    """What :func:`_bucket_lookup` computes, in numpy."""
    return table[np.clip((values >> k) - 128, -128, 127) + 128]


def _gemm_scale(act, out_scale):
    """The scale of a gemm's output: (scale of the requantized sums, scale after a table
    activation) -> the one it ends with (relu keeps the first)."""
    return out_scale[1] if act and act != "relu" else out_scale[0]


class _NoRoomForOutput(CompileError):
    """An operator's output found no room, before the operator emitted anything."""


class Graph:
    """Builds one program for a model on a vNPU of ``spad_rows`` rows and ``hbm_words`` words."""

    def __init__(self, config, *, spad_rows=None, hbm_words=None):
        if not config.array_rows == config.array_cols == config.ve_lanes:
            raise CompileError(
                f"the model compiler needs square arrays as wide as a scratchpad row "
                f"(array_rows = array_cols = ve_lanes); this NPU has {config.array_rows}x"
                f"{config.array_cols} arrays and {config.ve_lanes} lanes")
        self.config = config
        self.lanes = config.ve_lanes
        self.per_word = 4 if self.lanes % 4 == 0 else 1     # int8 values per HBM word
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

    # --- data in and out -------------------------------------------------------------------

    def input(self, name, q, scale, image=None):
        """An int8 input written to HBM by the host ((rows, cols), or an Image's pixels)."""
        q = np.asarray(q, np.int64)
        rows_q = image.to_rows(q) if image else q
        rows, cols = rows_q.shape
        tiles = self._tiles(cols, f"input {name}")
        pw = self.per_word
        hbm = self.builder.hbm(rows * cols // pw, f"input {name}")
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
              requant, act, out_scale, reads, mask=None, image=None, out=None):
        """Output column tiles of sum over K tiles of (rows shifted by sources(kt)) @ W.

        ``panel(ct, slot)`` makes W's column tile ct available (loading it into weight
        buffer ``slot`` if it lives in HBM) and returns (``ldw(kt)``, the instruction that
        loads its K tile kt, ``w_src(kt)``, that ldw's source row, the Region it reads, spad
        row of the bias or None).
        Rows lo..hi-1 are computed; with ``mask`` the others are zero and rows where the
        mask is 0 are zeroed too (the ring of a padded image).
        """
        cfg, lanes = self.config, self.lanes
        mult, shift = requant
        ref = rq(acc_ref, mult, shift)
        table = None
        if act == "relu":
            ref = np.maximum(ref, 0)
        elif act:
            table = activation_table(act, out_scale[0], out_scale[1])
            ref = table[ref + 128]
        if mask is not None:
            ref = ref * mask[:, None]
        final_scale = _gemm_scale(act, out_scale)
        if out is None:
            try:
                out = self._new(rows, n_tiles, final_scale, ref, name, image)
            except CompileError as error:
                raise _NoRoomForOutput(str(error)) from None
        else:
            out.ref[:] = ref
        lut = self.constant(table, f"{act} table") if table is not None else None
        mask_rows = (self.constant(np.repeat(mask, lanes), f"mask {image}")
                     if mask is not None else None)
        ring = min(n_tiles, 3)
        acc = [self._alloc(rows, f"{name} accumulator") for _ in range(ring)]
        blocks = self._row_blocks(lo, hi, n_tiles)
        for ct in range(n_tiles):
            slot = ct % ring
            ldw, w_src, w_region, bias_row = panel(ct, slot)
            dst = out.tile(ct)
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
                preamble.append(instr("vsetq", mult, shift, 0))
                if lut is not None:
                    preamble.append(instr("vldlut", lut.start))
                units = []
                for r, n in row_spans(count):
                    a, d = target.start + r, dst + first + r
                    # The accumulator is only read (the bias is added on the way out), so
                    # the epilogue is restartable.
                    if bias_row is not None:
                        unit = [instr("vaddr", d, a, 0, n), instr("vrq", d, d, n)]
                    else:
                        unit = [instr("vrq", d, a, n)]
                    if act == "relu":
                        unit.append(instr("vmaxi", d, d, 0, n))
                    elif lut is not None:
                        unit.append(instr("vlut", d, d, n))
                    if mask_rows is not None:
                        unit.append(instr("vmul", d, d, mask_rows.start + first + r, n))
                    units.append(unit)
                extra = [r for r in (w_region if bias_row is not None else None, lut, mask_rows)
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

    def _weights(self, name, w_q, bias_q):
        """HBM weights (K x N padded to tiles) and a loader of one column panel + bias row."""
        lanes = self.lanes
        k, n = w_q.shape
        n_tiles = -(-n // lanes)
        w_pad = np.zeros((k, n_tiles * lanes), np.int64)
        w_pad[:, :n] = w_q
        b_pad = np.zeros(n_tiles * lanes, np.int64)
        b_pad[:n] = bias_q
        pw = self.per_word
        w_hbm = self.builder.hbm(w_pad.size // pw, f"{name} weights", self._int8_words(w_pad))
        b_hbm = self.builder.hbm(b_pad.size, f"{name} bias", b_pad)
        ring = min(n_tiles, 3)
        bufs = [self._alloc(k + 1, f"{name} weight panel") for _ in range(ring)]

        def panel(ct, slot):
            buf = bufs[slot]
            body = self._dma_rows(lanes, n_tiles * lanes // pw, buf.start,
                                  w_hbm.start + ct * lanes // pw, k, packed=pw > 1)
            body += self._dma_rows(lanes, lanes, buf.start + k, b_hbm.start + ct * lanes, 1)
            self.builder.split_utop(Engine.DMA, body, reads=[w_hbm, b_hbm], writes=[buf],
                              name=f"{name} load w{ct}")
            w_src = lambda kt: buf.start + kt * lanes
            return lambda kt: instr("ldw", w_src(kt), lanes), w_src, buf, buf.start + k

        return n_tiles, w_pad, b_pad, panel, bufs

    def linear(self, name, x, w, bias, out_scale, act=None, act_scale=None):
        """y = act(x @ w + bias): float weights quantized here (per tensor), int8 out."""
        k_tiles = x.tiles
        if w.shape[0] != k_tiles * self.lanes:
            raise CompileError(f"{name}: weights have {w.shape[0]} rows; the input has "
                               f"{k_tiles * self.lanes} columns")
        w_scale = float(np.max(np.abs(w))) / 127 or 1.0
        w_q = quantize(w, w_scale)
        bias_q = quantize(bias, x.scale * w_scale, bits=32)
        n_tiles, w_pad, b_pad, panel, bufs = self._weights(name, w_q, bias_q)
        acc_ref = int_matmul(x.ref, w_pad) + b_pad
        gemm = dict(requant=multiplier(x.scale * w_scale / out_scale), act=act,
                    out_scale=(out_scale, act_scale))
        ring = min(n_tiles, 3)
        spilled = x.home in self._spilled
        # Whole when its output, accumulators and (spilled) input fit in what is free or
        # could be spilled; otherwise by row bands, the output straight to HBM.
        out = None
        if x.rows * (n_tiles + ring + (k_tiles if spilled else 0)) <= self._room(x):
            try:
                x = self.resident(x)
                out = self._gemm(name, x.tile, k_tiles, 0, x.rows, x.rows, acc_ref, n_tiles,
                                 panel, reads=self._rows_of(x, 0), **gemm)
            except _NoRoomForOutput:       # no piece that large: nothing emitted but spills
                pass
        if out is None:
            out = self._banded_gemm(name, x, k_tiles, acc_ref, n_tiles, panel, gemm)
        for region in bufs:
            self.builder.free(region)
        self._op("linear", name)
        return out

    def fits(self, rows, *tensors):
        """Do ``rows`` more rows fit in the free rows and those of the activations that
        could be spilled (not ``tensors``')?"""
        return rows <= self._room(*tensors)

    def _room(self, *tensors):
        """Rows free, or held by activations that could be spilled (not ``tensors``')."""
        homes = {t.home for t in tensors}
        return self.builder.free_rows + sum(r.size for h, r in self._activations.items()
                                            if h not in self._pinned and h not in homes)

    def rowwise(self, name, op, tensors, out_tiles):
        """``op(*tensors)`` for an operator whose output row r depends on row r of its
        inputs alone, producing ``out_tiles`` tiles: whole when its inputs, output and
        scratch fit; otherwise by bands of rows through HBM (the inputs go to HBM, each
        band is loaded and gives a band of the output, stored to HBM; the output is born
        spilled)."""
        rows = tensors[0].rows
        spilled = {t.home: t for t in tensors if t.home in self._spilled}
        need = rows * (3 * out_tiles + sum(t.tiles for t in spilled.values()))
        if any(t.image is not None or t.rows != rows for t in tensors) \
                or need <= self._room(*tensors):
            return op(*[self.resident(t) for t in tensors])
        for home in {t.home for t in tensors} - set(spilled):
            self._spill(home)
        pieces = [t.tiles for t in tensors] + [out_tiles, 2 * out_tiles]   # inputs, output, scratch
        return self._by_bands(name, rows, out_tiles, self.band_rows(name, rows, pieces),
                              lambda r0, b: op(*[self.load_band(t, r0, b) for t in tensors]))

    def _banded_gemm(self, name, x, k_tiles, acc_ref, n_tiles, panel, gemm):
        """A row-local gemm by bands of rows: each band of the input (read in place, or
        loaded from HBM where ``x`` is spilled) gives a band of the output, stored to the
        output's HBM region; the output is born spilled (``resident`` loads it whole, a
        later linear by bands)."""
        lanes, rows = self.lanes, x.rows
        spilled = x.home in self._spilled
        if not spilled:
            x = self.resident(x)
        # Per row of a band: its output, its input (if loaded), the accumulator ring.
        pieces = [n_tiles] + ([k_tiles] if spilled else []) + [1] * min(n_tiles, 3)
        band = self.band_rows(name, rows, pieces)
        scale = _gemm_scale(gemm["act"], gemm["out_scale"])

        def gemm_band(r0, b):
            # The band's output first: the larger piece, taken before the input's.
            yb = self._new(b, n_tiles, scale, np.zeros((b, n_tiles * lanes)), f"{name} rows {r0}")
            if spilled:
                xb = self.load_band(x, r0, b)
                sources, reads = xb.tile, self._rows_of(xb, 0)
            else:
                whole = self._rows_of(x, 0)
                sources = (lambda kt: x.tile(kt) + r0)
                reads = (lambda first, count: whole(first + r0, count))
            return self._gemm(f"{name} rows {r0}", sources, k_tiles, 0, b, b,
                              acc_ref[r0:r0 + b], n_tiles, panel, reads=reads, out=yb, **gemm)
        return self._by_bands(name, rows, n_tiles, band, gemm_band)

    def band_rows(self, name, rows, pieces):
        """Rows per band of an operator that allocates, per band of b rows, pieces of
        b * ``pieces[i]`` rows in this order: the pieces fit in three quarters of the room
        and, as the allocator would place them now, in the free scratchpad."""
        per_row = sum(pieces)
        band = min(rows, (self._room() * 3 // 4) // per_row,
                   self.builder.largest_free_piece() // per_row)
        if band < 1:
            raise CompileError(f"{name}: not even one row of {per_row} scratchpad rows fits "
                               f"(a larger `spad_rows` lifts the limit)")
        # Largest band whose pieces the allocator places (fragmentation may split them).
        lo, hi = 1, band
        if not self.builder.fits_all([p * lo for p in pieces]):
            return band                         # spilling makes the room (as _alloc does)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.builder.fits_all([p * mid for p in pieces]) else (lo, mid - 1)
        return lo

    def _by_bands(self, name, rows, out_tiles, band, compute):
        """The output of ``rows`` rows and ``out_tiles`` tiles, born spilled: for each band
        of rows r0.., ``compute(r0, count)`` gives that band's output, which is stored to the
        output's HBM region; then every activation the band made gives its rows back."""
        out = self.born_spilled(name, rows, out_tiles)
        for r0 in range(0, rows, band):
            first = self._homes
            yb = compute(r0, min(band, rows - r0))
            self.store_rows(out, yb, r0, 0, f"{name} store rows {r0}")
            for made in range(first, self._homes):
                if made in self._activations:
                    self._free_home(made)
        return out

    def born_spilled(self, name, rows, tiles):
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
                      None, home)

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

    def load_band(self, t, r0, count):
        """Rows r0..r0+count-1 of every tile of spilled tensor ``t``: a new tensor."""
        old, hbm = self._spilled[t.home]
        pw = self._packing(t.home)
        lanes = self.lanes
        band = self._new(count, t.tiles, t.scale, t.ref[r0:r0 + count], f"rows {r0} of a "
                         f"spilled activation")
        for k in range(t.tiles):
            row = t.region.start - old.start + k * t.rows + r0
            self.builder.split_utop(Engine.DMA, self._dma_rows(lanes, lanes // pw, band.tile(k),
                                                               hbm.start + row * lanes // pw,
                                                               count, packed=pw > 1),
                                    reads=[hbm], writes=[band.tile_region(k)],
                                    name=f"load rows {r0}.{k}")
        self.reloads += 1
        self.reload_bytes += 4 * count * t.tiles * lanes // pw
        return band

    def conv(self, name, x, w, bias, out_scale, act=None):
        """Same-padded k x k convolution (k = 1 or 3), stride 1: w is (k, k, cin, cout)."""
        image, lanes = x.image, self.lanes
        k = w.shape[0]
        if image is None or k not in (1, 3) or w.shape[:3] != (k, k, x.tiles * lanes):
            raise CompileError(f"{name}: needs an image input with {x.tiles * lanes} channels "
                               f"and (k, k, cin, cout) weights with k = 1 or 3, got {w.shape}")
        w_scale = float(np.max(np.abs(w))) / 127 or 1.0
        w_q = quantize(w, w_scale).reshape(k * k * x.tiles * lanes, -1)   # rows: (tap, cin)
        bias_q = quantize(bias, x.scale * w_scale, bits=32)
        n_tiles, w_pad, b_pad, panel, bufs = self._weights(name, w_q, bias_q)
        pitch = image.pitch
        taps = [(dy, dx) for dy in range(-(k // 2), k // 2 + 1)
                for dx in range(-(k // 2), k // 2 + 1)]
        offset = lambda kt: taps[kt // x.tiles][0] * pitch + taps[kt // x.tiles][1]
        sources = lambda kt: x.tile(kt % x.tiles) + offset(kt)
        lo, hi = pitch + 1, image.rows - pitch - 1
        acc_ref = np.zeros((image.rows, n_tiles * lanes), np.int64)
        for kt in range(k * k * x.tiles):
            cols = slice((kt % x.tiles) * lanes, (kt % x.tiles + 1) * lanes)
            acc_ref[lo:hi] += int_matmul(x.ref[lo + offset(kt):hi + offset(kt), cols],
                                         w_pad[kt * lanes:(kt + 1) * lanes])
        acc_ref[lo:hi] += b_pad
        out = self._gemm(name, sources, k * k * x.tiles, lo, hi, image.rows, acc_ref, n_tiles,
                         panel, requant=multiplier(x.scale * w_scale / out_scale), act=act,
                         out_scale=(out_scale, None),
                         reads=self._rows_of(x, (pitch + 1) * (k // 2)),
                         mask=image.interior().astype(np.int64), image=image)
        for region in bufs:
            self.builder.free(region)
        self._op(f"conv{k}x{k}", name)
        return out

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
                return lambda kt: instr("ldw", w_src(kt), k, t=1), w_src, y.region, None
        else:
            if y.rows != x.tiles * lanes:
                raise CompileError(f"{name}: {x.tiles * lanes} columns against {y.rows} rows")
            n_tiles, acc_ref = y.tiles, int_matmul(x.ref, y.ref)

            def panel(ct, slot):
                w_src = lambda kt: y.tile(ct) + kt * lanes
                return (lambda kt: instr("ldw", w_src(kt), lanes), w_src, y.tile_region(ct),
                        None)

        result = self._gemm(name, x.tile, x.tiles, 0, x.rows, x.rows, acc_ref, n_tiles, panel,
                            requant=multiplier(x.scale * y.scale / out_scale), act=None,
                            out_scale=(out_scale, None), reads=self._rows_of(x, 0), out=out)
        self._op("matmul", name)
        return result

    # --- vector operators ------------------------------------------------------------------

    def _elementwise(self, name, tensors, scale, ref, per_rows, out=None):
        """VE µTOps per tile and block of at most 128 rows: ``per_rows(t, dst, first, n)``
        gives the instructions (blocks pipeline with the operators around them)."""
        x = tensors[0]
        out = out or self._new(x.rows, x.tiles, scale, ref, name, x.image)
        for t in range(x.tiles):
            for first, n in row_spans(x.rows, 128):
                rows = lambda y: Region("spad", y.tile(t) + first, n)
                self._ve([per_rows(t, out.tile(t) + first, first, n)],
                         reads=[rows(a) for a in tensors], writes=[rows(out)],
                         name=f"{name}.{t}.{first}")
        self._op("eltwise", name)
        return out

    def add(self, name, a, b, relu=False):
        """Saturating int8 a + b (same scale), optionally followed by relu."""
        if a.scale != b.scale or a.ref.shape != b.ref.shape:
            raise CompileError(f"{name}: add needs equal shapes and scales, got {a.ref.shape} "
                               f"@ {a.scale:g} and {b.ref.shape} @ {b.scale:g}")
        ref = np.clip(a.ref + b.ref, -128, 127)
        ref = np.maximum(ref, 0) if relu else ref
        return self._elementwise(name, [a, b], a.scale, ref, lambda t, d, f, n: (
            [instr("vadd.s8", d, a.tile(t) + f, b.tile(t) + f, n)]
            + ([instr("vmaxi", d, d, 0, n)] if relu else [])))

    def mul(self, name, a, b, out_scale):
        """int8 a * b, rescaled to ``out_scale``."""
        mult, shift = multiplier(a.scale * b.scale / out_scale)
        return self._elementwise(name, [a, b], out_scale, rq(a.ref * b.ref, mult, shift),
                                 lambda t, d, f, n: [
                                     instr("vsetq", mult, shift, 0),
                                     instr("vmul", d, a.tile(t) + f, b.tile(t) + f, n),
                                     instr("vrq", d, d, n)])

    def rescale(self, name, x, out_scale):
        """The same values at another scale (int8, rounded and saturated)."""
        mult, shift = multiplier(x.scale / out_scale)
        return self._elementwise(name, [x], out_scale, rq(x.ref, mult, shift),
                                 lambda t, d, f, n: [instr("vsetq", mult, shift, 0),
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

    def softmax(self, name, x):
        """Row softmax over all columns, as integers: exp and 1/sum by table lookup.

        d = x - rowmax (<= 0); e = EXP[d] = round(2^14 exp(d * scale)); s = sum of e;
        r = RECIP[s >> k] = round(2^24 / s) at the centre of s's bucket; out = rq(e * r,
        127, 24): probabilities at scale 1/127. The bucket k is chosen so s >> k < 256, so
        1/s is exact to about 1 part in 2 * 2^14 / 2^k.
        """
        lanes, tiles, rows = self.lanes, x.tiles, x.rows
        cols = tiles * lanes
        exp_bits, recip_bits = 14, 24
        exp_table = np.round((1 << exp_bits) * np.exp(np.minimum(np.arange(256) - 128, 0)
                                                      * x.scale)).astype(np.int64)
        k = max(0, int(np.ceil(np.log2(cols * (1 << exp_bits) / 255))))
        recip_table = np.round((1 << recip_bits) / ((np.arange(256) + 0.5) * (1 << k))
                               ).astype(np.int64)
        # The reference, step for step.
        peak = x.ref.reshape(rows, tiles, lanes).max(axis=(1, 2))[:, None]
        e = exp_table[np.clip(x.ref - peak, -128, 127) + 128]
        total = e.sum(axis=1, keepdims=True)
        r = _bucket_lookup_ref(recip_table, total, k)
        out = self._new(rows, tiles, 1 / 127, rq(e * r, 127, recip_bits), name)
        exp_lut = self.constant(exp_table, "exp table")
        recip_lut = self.constant(recip_table, "reciprocal table")
        # e and e * r live in the output's rows until the last vrq makes them int8.
        work = self._alloc(rows * 2, f"{name} scratch")
        peak_row, sum_row = work.start, work.start + rows
        units = []
        for f, n in row_spans(rows):
            o = lambda t: out.tile(t) + f
            unit = [instr("vldlut", exp_lut.start), instr("vsetq", 127, recip_bits, 0)]
            unit += _reduce_rows("vmax", "vlmax", peak_row + f,
                                 [x.tile(t) + f for t in range(tiles)], n)
            for t in range(tiles):
                unit += [instr("vsub", o(t), x.tile(t) + f, peak_row + f, n),
                         instr("vlut", o(t), o(t), n)]
            unit += _reduce_rows("vadd", "vlsum", sum_row + f, [o(t) for t in range(tiles)], n)
            unit.append(instr("vldlut", recip_lut.start))
            unit += _bucket_lookup(sum_row + f, k, n)
            for t in range(tiles):
                unit += [instr("vmul", o(t), o(t), sum_row + f, n),
                         instr("vrq", o(t), o(t), n)]
            units.append(unit)
        self._ve(units, reads=[x.region, exp_lut, recip_lut, work, out.region],
                 writes=[work, out.region], name=name)
        self.builder.free(work)
        self._op("softmax", name)
        return out

    def layernorm(self, name, x, gamma, beta, out_scale):
        """Row layer normalization in integers: 1/std by table lookup.

        d = D*x - sum(x) (exact: D times the deviation); v = sum((d >> a)^2) with a chosen
        so nothing overflows; r = RSQRT[v >> k] with k chosen so the largest possible v
        (|x| <= 127) lands in the table; z = rq(d * r) at scale 4/127 (|z| <= 4 sigma);
        out = rq(z * gamma_q) + beta_q, saturating.
        """
        lanes, tiles, rows = self.lanes, x.tiles, x.rows
        cols = tiles * lanes
        a = max(0, int(np.ceil((2 * np.log2(255 * cols) + np.log2(cols) - 30) / 2)))
        v_max = cols * ((255 * cols) >> a) ** 2
        k = max(0, int(np.ceil(np.log2(v_max / 255))))
        rs_bits, z_scale = 24, 4 / 127
        # r ~ 2^24 / (2^a sqrt(v / D)): then d * r / 2^24 = (x - mean) / std.
        centre = (np.arange(256) + 0.5) * (1 << k)
        rsqrt_table = np.round((1 << rs_bits) / ((1 << a) * np.sqrt(centre / cols))
                               ).astype(np.int64)
        z_mult = multiplier(1 / ((1 << rs_bits) * z_scale))
        g_scale = float(np.max(np.abs(gamma))) / 127 or 1.0
        g_q, b_q = quantize(gamma, g_scale), quantize(beta, out_scale)
        y_mult = multiplier(z_scale * g_scale / out_scale)
        # The reference, step for step.
        total = x.ref.sum(axis=1, keepdims=True)
        d = x.ref * cols - total
        v = ((d >> a) ** 2).sum(axis=1, keepdims=True)
        r = _bucket_lookup_ref(rsqrt_table, v, k)
        z = rq(d * r, *z_mult)
        ref = np.clip(rq(z * g_q, *y_mult) + b_q, -128, 127)
        out = self._new(rows, tiles, out_scale, ref, name)
        lut = self.constant(rsqrt_table, "rsqrt table")
        params = self.constant(np.concatenate([g_q, b_q]), f"{name} gamma beta")
        # d lives in the output's rows until the last steps make them int8.
        work = self._alloc(rows * 3, f"{name} scratch")
        s_row, v_row, sq_row = work.start, work.start + rows, work.start + 2 * rows
        units = []
        for f, n in row_spans(rows):
            o = lambda t: out.tile(t) + f
            unit = [instr("vldlut", lut.start)]
            unit += _reduce_rows("vadd", "vlsum", s_row + f, [x.tile(t) + f for t in range(tiles)],
                                 n)
            for t in range(tiles):
                square = v_row + f if t == 0 else sq_row + f
                unit += [instr("vmuli", o(t), x.tile(t) + f, cols, n),
                         instr("vsub", o(t), o(t), s_row + f, n),
                         instr("vsrai", square, o(t), a, n),
                         instr("vmul", square, square, square, n)]
                if t:
                    unit.append(instr("vadd", v_row + f, v_row + f, square, n))
            unit.append(instr("vlsum", v_row + f, v_row + f, n))
            unit += _bucket_lookup(v_row + f, k, n)
            for t in range(tiles):
                unit += [instr("vsetq", z_mult[0], z_mult[1], 0),
                         instr("vmul", o(t), o(t), v_row + f, n),
                         instr("vrq", o(t), o(t), n),
                         instr("vld", 1, params.start + t),
                         instr("vld", 2, params.start + tiles + t),
                         instr("vmulr", o(t), o(t), 1, n),
                         instr("vsetq", y_mult[0], y_mult[1], 0),
                         instr("vrq", o(t), o(t), n),
                         instr("vaddr.s8", o(t), o(t), 2, n)]
            units.append(unit)
        self._ve(units, reads=[x.region, lut, params, work, out.region], writes=[work, out.region],
                 name=name)
        self.builder.free(work)
        self._op("layernorm", name)
        return out

    def pool(self, name, x, kind="max", window=2):
        """Pooling with stride 2 of an image (h and w even): a ``window`` x ``window`` window
        (2, or 1 to keep every other pixel), ``max`` or ``avg``.

        avg sums the window (vpoolsum) and divides by its size with the `vrq` rounding."""
        image = x.image
        if kind not in ("max", "avg"):
            raise CompileError(f"{name}: pooling is 'max' or 'avg', not {kind!r}")
        if window not in (1, 2):
            raise CompileError(f"{name}: pooling windows are 1x1 or 2x2, not {window}x{window}")
        if image is None or image.h % 2 or image.w % 2:
            raise CompileError(f"{name}: pooling with stride 2 needs an image with even h and w")
        small = Image(image.batch, image.h // 2, image.w // 2)
        pixels = image.from_rows(x.ref)
        b, h, w, c = pixels.shape
        windows = pixels.reshape(b, h // 2, 2, w // 2, 2, c)[:, :, :window, :, :window]
        average = kind == "avg" and window > 1
        mult, shift = multiplier(1 / window ** 2)
        pooled = (rq(windows.sum(axis=(2, 4)), mult, shift) if average
                  else windows.max(axis=(2, 4)))
        out = self._new(small.rows, x.tiles, x.scale, small.to_rows(pooled), name, small)
        in_rows, out_rows = (image.h + 2) * image.pitch, (small.h + 2) * small.pitch
        for t in range(x.tiles):
            for i in range(image.batch):
                base, src_base = out.tile(t) + i * out_rows, x.tile(t) + i * in_rows
                units = [[instr("vmuli", base + f, base + f, 0, n)]
                         for f, n in row_spans(out_rows)]
                for y in range(small.h):
                    dst = base + (y + 1) * small.pitch + 1
                    src = src_base + (2 * y + 1) * image.pitch + 1
                    units.append([instr("loop", small.w, 1, 1, 2),
                                  instr(f"vpool{'sum' if average else 'max'}", dst, src,
                                        image.pitch, window, window)])
                if average:
                    units += [[instr("vrq", base + f, base + f, n)] for f, n in row_spans(out_rows)]
                self._ve(units, reads=[Region("spad", src_base, in_rows),
                                       Region("spad", base, out_rows)],
                         writes=[Region("spad", base, out_rows)], name=f"{name}.{t}.{i}",
                         preamble=[instr("vsetq", mult, shift, 0)] if average else [])
        self._op("pool", name)
        return out

    def global_avgpool(self, name, x, out_scale):
        """Mean over all pixels of each image: (batch, channels). Each image's rows (the
        zero ring included) are summed in pieces of at most 256 rows (one `vrsum`), then
        the pieces' sums."""
        image = x.image
        per_image = (image.h + 2) * (image.w + 2)
        pieces = row_spans(per_image)
        if len(pieces) > 256:
            raise CompileError(f"{name}: images of {per_image} padded pixels; the pooling "
                               f"sums at most 256 x 256 rows per image")
        mult, shift = multiplier(x.scale / (image.h * image.w) / out_scale)
        sums = image.from_rows(x.ref).sum(axis=(1, 2))
        out = self._new(image.batch, x.tiles, out_scale, rq(sums, mult, shift), name)
        work = self._alloc(image.batch * (len(pieces) + 1), f"{name} sums")
        total = lambda i: work.start + i
        partial = lambda i, p: work.start + image.batch + i * len(pieces) + p
        for t in range(x.tiles):
            units = []
            for i in range(image.batch):
                rows = x.tile(t) + i * per_image
                if len(pieces) == 1:
                    units.append([instr("vrsum", total(i), rows, 1, per_image)])
                    continue
                units.append([instr("vrsum", partial(i, p), rows + first, 1, n)
                              for p, (first, n) in enumerate(pieces)])
                units.append([instr("vrsum", total(i), partial(i, 0), 1, len(pieces))])
            units.append([instr("vrq", out.tile(t), total(0), image.batch)])
            self._ve(units, reads=[x.tile_region(t), work], writes=[work, out.tile_region(t)],
                     name=f"{name}.{t}", preamble=[instr("vsetq", mult, shift, 0)])
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
