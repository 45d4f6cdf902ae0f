"""The matmul compiler: int8 C = A @ B of any M, K, N, tiled to ONE engine.

Tiles are sized to one engine (one systolic array, one vector engine, one DMA engine),
never to the number of engines: independent µTOps share no memory, so the dispatcher
spreads them over however many engines the vNPU has, or harvests idle ones.

Scratchpad plan (rows):
- A is held in *panels* of ``a_block`` rows, one K-slice (``array_rows`` wide) after
  another. When all of A fits, there is one panel, loaded once; otherwise two panel
  buffers alternate, so the DMA loads panel p+1 while the MEs work on panel p.
- B is cut into *column panels* (``array_cols`` wide, all of K). When all of B fits it is
  loaded once; otherwise a ring of ``n_me + 1`` panel buffers streams it, one panel
  loading while every ME works on another.
- C column tiles (int32, and int8 when requantized) go to a ring of ``n_me + 2`` buffers
  and are stored to HBM as soon as they are complete.
The program builder (runtime/program.py) derives every dependency from these regions, so
buffer reuse waits exactly for the µTOps that still use the buffer.
"""

from dataclasses import dataclass

from .program import CompileError, Program, ProgramBuilder, Region, row_spans

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


def _ceil(a, b):
    return -(-a // b)


def _ring(builder, count, rows, what):
    return [builder.alloc(rows, f"{what} buffer {i}") for i in range(count)]


def matmul_utops(builder, m, k, n, a, b, c, *, requant=None, row_block=None, a_block=None):
    """Append the µTOps of C = A @ B to ``builder``; a, b, c are HBM Regions (row-major)."""
    cfg = builder.config
    kt_size, nt_size = cfg.array_rows, cfg.array_cols
    k_tiles, n_tiles = _ceil(k, kt_size), _ceil(n, nt_size)
    pairs = cfg.max_body // 2                      # (ldw, mm) pairs per ME µTOp
    panel_b = k_tiles * kt_size                    # rows of one B column panel
    free = builder.spad_rows - sum(size for _, size in builder._spad_used)
    b_whole = n_tiles * panel_b

    def fit():
        """(a_block, row_block, B ring, C ring): deep rings first, then the largest panel."""
        most_b, most_c = min(n_tiles, cfg.n_me + 1), cfg.n_me + 2
        for ring_b, ring_c in ((most_b, most_c), (min(most_b, 2), 2), (1, 1)):
            block = m if a_block is None else a_block
            while True:
                rows = row_block or _ceil(block, max(1, _ceil(cfg.n_me, n_tiles)))
                need = (k_tiles * block * (1 if block >= m else 2) + ring_b * panel_b
                        + ring_c * rows * (2 if requant else 1))
                if need <= free:
                    return block, rows, ring_b, ring_c, need
                if block == 1 or a_block is not None:
                    break
                block = _ceil(block, 2)
        raise CompileError(f"matmul {m}x{k}x{n} needs at least {need} scratchpad rows "
                           f"(A panel, B column panel, C tile); {free} of the vNPU's "
                           f"{builder.spad_rows} are free")

    a_block, row_block, ring_b, ring_c, need = fit()
    a_panels = row_spans(m, a_block)
    # With several A panels, B is loaded once per panel unless all of it fits beside them.
    b_resident = len(a_panels) > 1 and need - ring_b * panel_b + b_whole <= free
    a_bufs = _ring(builder, min(len(a_panels), 2), k_tiles * a_block, "A panel")
    b_bufs = _ring(builder, 1 if b_resident else ring_b, b_whole if b_resident else panel_b, "B")
    ring_c = min(ring_c, n_tiles * _ceil(a_block, row_block))
    c_bufs = _ring(builder, ring_c, row_block, "C tile")
    q_bufs = _ring(builder, ring_c, row_block, "int8 C tile") if requant else None

    def load_b(ct):
        width = min(nt_size, n - ct * nt_size)
        buf = b_bufs[0] if b_resident else b_bufs[ct % len(b_bufs)]
        base = buf.start + (ct * panel_b if b_resident else 0)
        body = [f"dcfg {width}, {n}, 1"]
        body += [f"dload {base + r}, {b.start + r * n + ct * nt_size}, {rows}"
                 for r, rows in row_spans(k)]
        rows = Region("spad", base, panel_b)
        builder.utop("dma", body, reads=[b], writes=[rows], name=f"load_b{ct}")
        return base, rows

    b_loaded = {}
    tile = 0
    for p, (a_first, a_rows) in enumerate(a_panels):
        a_buf = a_bufs[p % len(a_bufs)]
        for kt in range(k_tiles):
            width = min(kt_size, k - kt * kt_size)
            body = [f"dcfg {width}, {k}, 1"]
            body += [f"dload {a_buf.start + kt * a_rows + r}, "
                     f"{a.start + (a_first + r) * k + kt * kt_size}, {count}"
                     for r, count in row_spans(a_rows)]
            builder.utop("dma", body, reads=[a], writes=[
                Region("spad", a_buf.start + kt * a_rows, a_rows)], name=f"load_a{p}.{kt}")
        for ct in range(n_tiles):
            if ct not in b_loaded or not b_resident:
                b_loaded[ct] = load_b(ct)
            b_base, b_rows = b_loaded[ct]
            width = min(nt_size, n - ct * nt_size)
            for first, count in row_spans(a_rows, row_block):
                c_buf = c_bufs[tile % ring_c]
                out = Region("spad", c_buf.start, count)
                for chunk in range(0, k_tiles, pairs):
                    body = []
                    for kt in range(chunk, min(k_tiles, chunk + pairs)):
                        rows = min(kt_size, k - kt * kt_size)
                        body += [f"ldw {b_base + kt * kt_size}, {rows}",
                                 f"mm {out.start}, {a_buf.start + kt * a_rows + first}, {count}"
                                 + (", acc" if kt else "")]
                    a_slices = [Region("spad", a_buf.start + kt * a_rows + first, count)
                                for kt in range(chunk, min(k_tiles, chunk + pairs))]
                    builder.utop("me", body, reads=a_slices + [b_rows]
                                 + ([out] if chunk else []), writes=[out],
                                 name=f"mm{p}.{ct}.{first}.{chunk}")
                if requant:
                    mult, shift, zp = requant
                    q = Region("spad", q_bufs[tile % ring_c].start, count)
                    body = [f"vsetq {mult}, {shift}, {zp}"]
                    body += [f"vrq {q.start + r}, {out.start + r}, {size}"
                             for r, size in row_spans(count)]
                    builder.utop("ve", body, reads=[out], writes=[q], name=f"rq{p}.{ct}.{first}")
                    out = q
                row0 = a_first + first
                body = [f"dcfg {width}, {n}, 1"]
                body += [f"dstore {c.start + (row0 + r) * n + ct * nt_size}, {out.start + r}, "
                         f"{size}" for r, size in row_spans(count)]
                builder.utop("dma", body, reads=[out], writes=[c], name=f"store{p}.{ct}.{first}")
                tile += 1
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
