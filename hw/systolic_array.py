"""Weight-stationary systolic array: int8 x int8 -> int32, double-buffered weights, skewed in, deskewed out."""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    """A ``rows`` x ``cols`` grid of multiply-accumulate cells.

    Cell (r, c) holds two weights, W0[r][c] and W1[r][c], loaded a row at a time (``ldw``)
    or a column at a time (``ldw`` with ``t``: a transposed load). An input row x (``rows`` int8)
    enters with a buffer select bit; x[r] is delayed r cycles (skew), then passes right
    along row r one cell per cycle, carrying its select bit, while partial sums pass down
    the columns. Column c's sum leaves the bottom row at cycle r+c and is delayed
    ``cols - 1 - c`` cycles (deskew), so ``y = x @ W[sel]`` appears as one row exactly
    ``latency = rows + cols - 1`` cycles after x entered. The array never stalls; an idle
    cycle is a zero row.

    Because the select bit travels with the data, loading the other buffer (``w_write``)
    never disturbs rows in flight: the caller only writes a buffer no row in flight uses.
    """

    def __init__(self, rows, cols):
        if not isinstance(rows, int) or rows < 1 or not isinstance(cols, int) or cols < 1:
            raise ValueError(f"array dimensions must be positive integers, not {rows!r} x {cols!r}")
        self.rows, self.cols = rows, cols
        self.latency = rows + cols - 1
        super().__init__({
            "x": In(data.ArrayLayout(signed(8), rows)),
            "x_sel": In(1),
            "w_write": In(1),          # write weight row (or column) w_index of buffer w_buf
            "w_clear": In(1),          # zero every weight of buffer w_buf (same cycle as no write)
            "w_buf": In(1),
            "w_column": In(1),         # write column w_index from w_data[:rows], not a row
            "w_index": In(range(max(rows, cols))),
            "w_data": In(data.ArrayLayout(signed(8), max(rows, cols))),
            "y": Out(data.ArrayLayout(signed(32), cols)),
        })

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.rows, self.cols

        # Weights: one wide register per buffer and row, written a row at a time or, for a
        # transposed load, one cell of every row (the column w_index) at a time.
        weights = [[Signal(data.ArrayLayout(signed(8), cols), name=f"w{b}_row{r}")
                    for r in range(rows)] for b in range(2)]
        column = [Signal(name=f"w_column{c}") for c in range(cols)]
        m.d.comb += [column[c].eq(self.w_column & (self.w_index == c)) for c in range(cols)]
        for b in range(2):
            for r in range(rows):
                with m.If(self.w_buf == b):
                    with m.If(self.w_clear):
                        m.d.sync += weights[b][r].eq(0)
                    with m.Elif(self.w_write & ~self.w_column & (self.w_index == r)):
                        m.d.sync += weights[b][r].eq(self.w_data.as_value()[:8 * cols])
                    with m.Elif(self.w_write & self.w_column):
                        m.d.sync += weights[b][r].eq(Cat(
                            Mux(column[c], self.w_data[r], weights[b][r][c]) for c in range(cols)))

        # Skew: x[r] and its select bit wait r cycles before entering row r.
        row_inputs = []
        for r in range(rows):
            x, sel = self.x[r], self.x_sel
            for stage in range(r):
                x_next = Signal(signed(8), name=f"skew{r}_{stage}")
                sel_next = Signal(name=f"skew{r}_{stage}_sel")
                m.d.sync += [x_next.eq(x), sel_next.eq(sel)]
                x, sel = x_next, sel_next
            row_inputs.append((x, sel))

        # The grid: x and sel move right, sums move down, one cell per cycle.
        sums_above = [0] * cols
        for r in range(rows):
            x, sel = row_inputs[r]
            for c in range(cols):
                weight = Mux(sel, weights[1][r][c], weights[0][r][c])
                cell_sum = Signal(signed(32), name=f"sum{r}_{c}")
                m.d.sync += cell_sum.eq(sums_above[c] + x * weight)
                sums_above[c] = cell_sum
                if c + 1 < cols:
                    x_right = Signal(signed(8), name=f"x{r}_{c}")
                    sel_right = Signal(name=f"sel{r}_{c}")
                    m.d.sync += [x_right.eq(x), sel_right.eq(sel)]
                    x, sel = x_right, sel_right

        # Deskew: column c waits cols - 1 - c cycles.
        for c in range(cols):
            y = sums_above[c]
            for stage in range(cols - 1 - c):
                y_next = Signal(signed(32), name=f"deskew{c}_{stage}")
                m.d.sync += y_next.eq(y)
                y = y_next
            m.d.comb += self.y[c].eq(y)
        return m
