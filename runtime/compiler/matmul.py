"""The matmul compiler: int8 C = A @ B of any M, K, N, tiled to ONE engine.

Tiles are sized to one engine (one systolic array, one vector engine, one DMA engine),
never to the number of engines: independent µTOps share no memory, so the dispatcher
spreads them over however many engines the vNPU has, or harvests idle ones.

Scratchpad plan (rows):
- A is held in *panels* of ``a_block`` rows, one K-slice (``array_rows`` wide) after
  another. When all of A fits, there is one panel, loaded once; otherwise two panel
  buffers alternate, so the DMA loads panel p+1 while the MEs finish panel p.
- B is cut into *column panels* (``array_cols`` wide, all of K). A ring of ``n_me + 2``
  panel buffers streams it, the next panels loading while every ME works on another, or,
  with several A panels, all of B is held and loaded once: the tiler (tiler.py) chooses,
  as it does for the model compiler's layers.
- C tiles (int32, and int8 when requantized) go to a ring of ``n_me + 3`` buffers and are
  stored to HBM ``n_me`` tiles later (see the schedule in ``matmul_utops``).
The program builder (builder.py) derives every dependency from these regions, so
buffer reuse waits exactly for the µTOps that still use the buffer.
"""

from dataclasses import dataclass

from isa.encoding import Engine, instr

from .builder import CompileError, Program, ProgramBuilder, Region, k_runs, row_spans, run_body
from .tiler import choose_tiling

__all__ = ["CompileError", "MatmulPlan", "compile_matmul", "matmul_utops"]


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


#: K tiles per step of the prologue: the MEs start after this much of A (2 of the 256^3
#: matmul's 32: 90.5% ME utilization on the default config; 1 tile: 90.0%, 4: 89.4%,
#: 8: 87.4%, measured with `neu10 bench`).
PROLOGUE_K_TILES = 2


def _ceil(a, b):
    return -(-a // b)


def _ring(builder, count, rows, what):
    return [builder.alloc(rows, f"{what} buffer {i}") for i in range(count)]


def matmul_utops(builder, m, k, n, a, b, c, *, requant=None, row_block=None, a_block=None):
    """Append the µTOps of C = A @ B to ``builder``; a, b, c are HBM Regions (row-major)."""
    cfg = builder.config
    kt_size, nt_size = cfg.array_rows, cfg.array_cols
    k_tiles, n_tiles = _ceil(k, kt_size), _ceil(n, nt_size)
    if cfg.max_body < 2:
        raise CompileError(f"matmul needs max_body >= 2 (an ME µTOp holds at least one ldw "
                           f"and one mm); this NPU has max_body {cfg.max_body}")
    pairs = cfg.max_body // 2                      # (ldw, mm) pairs per ME µTOp
    panel_b = k_tiles * kt_size                    # rows of one B column panel
    free = builder.free_rows
    b_whole = n_tiles * panel_b

    def fit():
        """(a_block, row_block, B ring, C ring): deep rings first, then the largest panel."""
        most_b, most_c = min(n_tiles, cfg.n_me + 2), cfg.n_me + 3
        for ring_b, ring_c in ((most_b, most_c), (min(most_b, 2), 2), (1, 1)):
            block = m if a_block is None else a_block
            while True:
                rows = row_block or _ceil(block, max(1, _ceil(cfg.n_me, n_tiles)))
                need = (k_tiles * block * (1 if block >= m else 2) + ring_b * panel_b
                        + ring_c * rows * (2 if requant else 1))
                if need <= free:
                    return block, rows, ring_b, ring_c
                if block == 1 or a_block is not None:
                    break
                block = _ceil(block, 2)
        raise CompileError(f"matmul {m}x{k}x{n} needs at least {need} scratchpad rows "
                           f"(A panel, B column panel, C tile); {free} of the vNPU's "
                           f"{builder.spad_rows} are free (a larger `spad_rows`, of the config "
                           f"or the vNPU, lifts the limit)")

    # The tiler's choice between B's column panels streaming through a ring, loaded again
    # for every A panel (the bands), and all of B held while the A panels pass, beside
    # the same A panels (smaller ones to make room for it measured 2-5% slower on the
    # `small` arrays).
    stream = fit()
    block, rows, ring, c_ring = stream
    held_fits = k_tiles * block * (1 if block >= m else 2) + b_whole + c_ring * rows * (
        2 if requant else 1) <= free
    tiling = choose_tiling(cfg, n_tiles=n_tiles, k_tiles=k_tiles, ring=ring, total=m, unit=1,
                           panel_rows=panel_b, band_for=lambda buffers, tiles: block,
                           input_rows=lambda band: m * k_tiles,
                           groups=(n_tiles,) if held_fits else ())
    a_block, row_block, ring_b, ring_c = (block, rows, n_tiles, c_ring) if tiling.held else stream
    a_panels = row_spans(m, a_block)
    b_resident = tiling.held and len(a_panels) > 1
    a_bufs = _ring(builder, min(len(a_panels), 2), k_tiles * a_block, "A panel")
    b_bufs = _ring(builder, 1 if b_resident else ring_b, b_whole if b_resident else panel_b, "B")
    ring_c = min(ring_c, n_tiles * _ceil(a_block, row_block))
    c_bufs = _ring(builder, ring_c, row_block, "C tile")
    q_bufs = _ring(builder, ring_c, row_block, "int8 C tile") if requant else None

    def load_b(ct):
        """(body, reads, writes) of loading B's column panel ct, and where it lands."""
        width = min(nt_size, n - ct * nt_size)
        buf = b_bufs[0] if b_resident else b_bufs[ct % len(b_bufs)]
        base = buf.start + (ct * panel_b if b_resident else 0)
        body = [instr("dcfg", width, n, 1)]
        body += [instr("dload", base + r, b.start + r * n + ct * nt_size, rows)
                 for r, rows in row_spans(k)]
        rows = Region("spad", base, panel_b)
        b_loaded[ct] = (base, rows)
        return body, [b], [rows]

    # The tiles in program order: (A panel, column tile, first row, rows).
    tiles = [(p, ct, first, count) for p, (a_first, a_rows) in enumerate(a_panels)
             for ct in range(n_tiles) for first, count in row_spans(a_rows, row_block)]
    # The dispatcher looks dep_window µTOps ahead, so the program keeps non-ME µTOps few:
    # one DMA µTOp per tile stores the C tile finished `lag` tiles earlier and loads the
    # B panel the next tile needs; the ME keeps n_me tiles in flight.
    lag = min(cfg.n_me, ring_c - 1)      # a C buffer is stored before it is reused
    b_loaded, stores = {}, []

    def dma(parts, name):
        body = [i for part in parts for i in part[0]]
        if body:
            builder.utop(Engine.DMA, body, reads=[r for part in parts for r in part[1]],
                         writes=[w for part in parts for w in part[2]], name=name)

    def load_a(p, slices=None):
        """Load K slices of A panel p, as few DMA µTOps as max_body allows."""
        a_first, a_rows = a_panels[p]
        a_buf = a_bufs[p % len(a_bufs)]
        parts = []
        for kt in range(k_tiles) if slices is None else slices:
            width = min(kt_size, k - kt * kt_size)
            body = [instr("dcfg", width, k, 1)]
            body += [instr("dload", a_buf.start + kt * a_rows + r,
                           a.start + (a_first + r) * k + kt * kt_size, count)
                     for r, count in row_spans(a_rows)]
            region = Region("spad", a_buf.start + kt * a_rows, a_rows)
            if parts and len(parts[-1][0]) + len(body) <= cfg.max_body:
                parts[-1][0].extend(body)
                parts[-1][2].append(region)
            else:
                parts.append((body, [a], [region]))
        for part in parts:
            dma([part], f"load_a{p}")

    def me_utop(j, chunk):
        """The ME µTOp of tile j over K tiles ``chunk`` (accumulating after the first)."""
        p, ct, first, count = tiles[j]
        a_rows = a_panels[p][1]
        a_buf = a_bufs[p % len(a_bufs)]
        b_base, b_rows = b_loaded[ct]
        out = Region("spad", c_bufs[j % ring_c].start, count)
        rows = lambda kt: min(kt_size, k - kt * kt_size)
        w_src = lambda kt: b_base + kt * kt_size
        x_src = lambda kt: a_buf.start + kt * a_rows
        ldw = lambda kt: instr("ldw", w_src(kt), rows(kt))
        mm = lambda kt: instr("mm", out.start, x_src(kt) + first, count, acc=bool(kt))
        runs = k_runs(w_src, x_src, chunk[0], chunk[-1] + 1, key=rows)
        body = [i for run in runs for i in run_body(run, ldw, mm)]
        a_slices = [Region("spad", a_buf.start + kt * a_rows + first, count) for kt in chunk]
        builder.utop(Engine.ME, body, reads=a_slices + [b_rows] + ([out] if chunk[0] else []),
                     writes=[out], name=f"mm{p}.{ct}.{first}.{chunk[0]}")
        return out

    chunks = [list(range(f, f + c)) for f, c in row_spans(k_tiles, pairs)]
    # Prologue: the first n_me tiles (of the first panel) go K-chunk by K-chunk, each
    # chunk's A slices loaded just before, so the MEs start once the first chunk of A and
    # their own B panel are in (the DMA loads A at the rate they consume it).
    lead = [j for j in range(min(cfg.n_me, len(tiles))) if tiles[j][0] == 0]
    pieces = [list(range(f, f + c)) for f, c in row_spans(k_tiles, PROLOGUE_K_TILES)]
    if len(lead) < 2 or len(pieces) < 2 or len(chunks) > 1:
        pieces = chunks
    needed = sorted({tiles[j][1] for j in lead + [len(lead)] if j < len(tiles)})
    if not b_resident and len(needed) > len(b_bufs):
        lead, needed = [], [tiles[0][1]]  # too few B buffers to hold the prologue's panels
    outs = {}
    for q, piece in enumerate(pieces):
        load_a(0, piece)
        for j in lead:
            if q == 0 and tiles[j][1] not in b_loaded:
                dma([load_b(tiles[j][1])], "load_b")
            outs[j] = me_utop(j, piece)
        if q == 0:
            for ct in needed:
                if ct not in b_loaded:
                    dma([load_b(ct)], "load_b")
    for j, (p, ct, first, count) in enumerate(tiles):
        a_first = a_panels[p][0]
        if j in outs:
            out = outs[j]
        else:
            for chunk in chunks:
                out = me_utop(j, chunk)
        if requant:
            mult, shift, zp = requant
            q = Region("spad", q_bufs[j % ring_c].start, count)
            body = [instr("vsetq", mult, shift, zp)]
            body += [instr("vrq", q.start + r, out.start + r, size)
                     for r, size in row_spans(count)]
            builder.utop(Engine.VE, body, reads=[out], writes=[q], name=f"rq{p}.{ct}.{first}")
            out = q
        body = [instr("dcfg", min(nt_size, n - ct * nt_size), n, 1)]
        body += [instr("dstore", c.start + (a_first + first + r) * n + ct * nt_size,
                       out.start + r, size) for r, size in row_spans(count)]
        stores.append((body, [out], [c]))
        if j + 1 < len(tiles) and tiles[j + 1][0] != p:
            load_a(p + 1)
        parts = [stores.pop(0)] if len(stores) > lag else []
        if j + 1 < len(tiles):
            # The prologue loaded the panels of tiles 0..len(lead); later tiles load theirs
            # at the first row block of each visit to a column tile.
            nxt = tiles[j + 1][1]
            if nxt not in b_loaded or (not b_resident and tiles[j + 1][2] == 0
                                       and j + 1 > len(lead)):
                parts.append(load_b(nxt))
        dma(parts, f"dma{j}")
    for index, part in enumerate(stores):
        dma([part], f"store_tail{index}")
    builder.end_operator()


def compile_matmul(config, m, k, n, *, spad_rows=None, requant=None, row_block=None,
                   a_block=None):
    """C (m x n) = A (m x k) @ B (k x n), int8 inputs, int32 (or requantized int8) output.

    A, B and C are row-major in HBM at words 0, m*k and m*k + k*n of the vNPU's segment.
    K is split into tiles of ``array_rows`` (the last one partial: ``ldw`` zeroes the
    rest), N into tiles of ``array_cols`` (the DMA zero-fills short rows); M needs no
    padding. One ME µTOp computes ``row_block`` output rows of one column tile over up to
    ``max_body / 2`` K tiles, accumulating. With ``requant=(mult, shift, zp)`` a VE µTOp
    per C tile requantizes to int8.
    """
    for name, value in (("m", m), ("k", k), ("n", n)):
        if not isinstance(value, int) or value < 1:
            raise CompileError(f"matmul dimension {name} must be a positive integer, not {value!r}")
    builder = ProgramBuilder(config, spad_rows=spad_rows,
                             hbm_words=max(config.hbm_words, m * k + k * n + m * n))
    a = builder.hbm(m * k, "A")
    b = builder.hbm(k * n, "B")
    c = builder.hbm(m * n, "C")
    matmul_utops(builder, m, k, n, a, b, c, requant=requant, row_block=row_block,
                 a_block=a_block)
    program = builder.build()
    return MatmulPlan(m, k, n, a.start, b.start, c.start, builder.spad_peak, program,
                      bool(requant))
