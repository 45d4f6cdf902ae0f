"""The gemm tiler: in what order a gemm too large for the scratchpad visits its bands of
output rows and its weight column panels, and how large a band is.

A gemm whose operands and output do not all fit runs by *bands* of output rows (lines of
an image). Its weights are column *panels* (one output column tile, all of K). Two loop
orders are possible, and which one is faster depends on the layer:

- **weights stream**: bands outer; the panels cycle through a small ring of buffers and
  every band loads all of them again. The input is read once. Best when the input is
  large and the weights small (the first layers of a CNN).
- **weights stay**: groups of G column panels outer, bands inner; a group's panels are
  loaded once and held while every band of the input passes under them. The input is read
  once per group. Best when the weights outweigh the input (the last layers of a CNN, wide
  linears over few rows).

:func:`choose_tiling` sizes the band of every candidate (the ring, and groups of several
sizes) by asking the caller what fits, estimates the cycles each would take (MEs, DMA
and HBM), and takes the fastest. The model compiler (graph.py: linear and convolution layers) and the
standalone matmul compiler (matmul.py: whether B stays in the scratchpad across A's row
panels) decide with it.
"""

from dataclasses import dataclass

__all__ = ["Tiling", "choose_tiling"]


#: Program words a band emits per column tile (its ME µTOps, epilogue and store),
#: fetched from HBM like data: about what the model compiler emits on `default`.
WORDS_PER_BAND_TILE = 16


@dataclass(frozen=True)
class Tiling:
    """A loop order: ``group`` column tiles per pass over the bands (all of them when the
    weights stream), ``buffers`` weight panel buffers, ``band`` rows (or lines) per band,
    whether the panels are ``held`` across bands, and its estimated cycles."""
    group: int
    buffers: int
    band: int
    held: bool
    cycles: int

    def groups(self, n_tiles):
        """(first, stop) column tiles of each pass."""
        return [(c, min(c + self.group, n_tiles)) for c in range(0, n_tiles, self.group)]


def choose_tiling(config, *, n_tiles, k_tiles, ring, total, unit, panel_rows, band_for,
                  input_rows, input_utops=0, groups=None):
    """The fastest loop order of a gemm of ``n_tiles`` weight panels of ``panel_rows``
    rows each (K = ``k_tiles`` tiles) run by bands over ``total`` lines of ``unit`` rows.

    ``band_for(buffers, tiles)`` is the largest band (lines) when ``buffers`` panel
    buffers are allocated first and each band computes ``tiles`` output column tiles (0:
    none fits); ``input_rows(band)`` is the rows one pass over all bands of that size
    moves for the input (DMA loads with their halos, the VE's phase copies; 0 when it is
    read in place), in ``input_utops`` µTOps per band. Candidates: the weights streaming
    through a ring of ``ring`` buffers, and groups of G panels held (G = n_tiles,
    n_tiles / 2, / 3, / 4, / 6, ... down to 1; or the sizes in ``groups``).

    Each is costed from two resources: the MEs (every row of every band passes every K
    tile of every column tile, and every block of rows of every band loads each K tile's
    weights again, ``array_rows`` cycles, over ``n_me`` engines) and the DMA/HBM path (a
    row a cycle per DMA engine, as a scratchpad row of int8 is at most an HBM line on the
    presets: the weights, the input per pass, and the program's own words; each µTOp
    moving the input costs HBM's latency once more: the µTOps of a band's input load
    wait for each other's dependencies, so their latencies do not overlap). Streaming
    through two or more buffers overlaps the two (the busier one counts); through one
    buffer, each panel's load waits for the MEs to finish the last (they add up). Held,
    the first pass's panels load while the MEs start on them (they overlap), and each
    later pass's wait for the pass before to give the buffers back (they add up). A
    quarter of every row moved counts on top: dependencies and scratchpad bank conflicts
    keep traffic from hiding entirely behind the MEs. Ties go to the order that moves
    less, then to fewer bands, then to streaming.
    None when no candidate fits.
    """
    if groups is None:
        groups = [-(-n_tiles // passes) for passes in
                  sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, n_tiles})
                  if passes <= n_tiles]
    candidates = [(n_tiles, ring, False)] + [(group, group, True) for group in groups]
    line_cycles = max(1, -(-config.ve_lanes // config.hbm_bytes_per_cycle))
    best = None
    for group, buffers, held in dict.fromkeys(candidates):
        band = band_for(buffers, group)
        if band < 1:
            continue
        bands, passes = -(-total // band), -(-n_tiles // group)
        # A band's rows go in blocks (enough for every ME, at most 128 rows: Graph's
        # _row_blocks), each loading the array's weights for every K tile.
        blocks = max(-(-config.n_me // group), -(-min(band, total) * unit // 128))
        me = (n_tiles * k_tiles * (total * unit + bands * blocks * config.array_rows)
              // config.n_me)
        fetch = 2 * WORDS_PER_BAND_TILE * bands * n_tiles * 4 // config.hbm_bytes_per_cycle
        weights = panel_rows * n_tiles * (1 if held else bands) * line_cycles // config.n_dma
        data = (passes * input_rows(band) * line_cycles // config.n_dma + fetch
                + passes * bands * input_utops * config.hbm_latency)
        if held:        # the first pass's panels load as the MEs start on them; a later
            # pass's load waits for the pass before to free the buffers
            cycles = max(me, weights // passes + data) + weights - weights // passes
        elif buffers > 1:           # the next panels load while the MEs use one
            cycles = max(me, weights + data)
        else:                       # one buffer: each panel waits for the last to be used
            cycles = me + weights + data
        cycles += (weights + data) // 4         # what overlapping traffic still costs
        key = (cycles, weights + data, passes * bands, held)
        if best is None or key < best[0]:
            best = key, Tiling(group, buffers, band, held, cycles)
    return None if best is None else best[1]
