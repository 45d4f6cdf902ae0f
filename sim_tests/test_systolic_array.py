# amaranth: UnusedElaboratable=no
"""Systolic array: back-to-back rows across a weight-buffer switch equal numpy's int32 products,
with one buffer loaded by rows and the other by columns."""

import numpy as np
import pytest

from hw.systolic_array import SystolicArray
from simutil import convert, simulate


@pytest.mark.parametrize("rows, cols", [(4, 4), (8, 8), (3, 5), (6, 2), (1, 1)])
def test_back_to_back_rows_across_weight_switch(rows, cols):
    rng = np.random.default_rng(rows * 10 + cols)
    dut = SystolicArray(rows, cols)
    weights = rng.integers(-128, 128, (2, rows, cols))
    weights[:, 0, 0] = -128
    inputs = rng.integers(-128, 128, (24, rows))
    inputs[0, 0] = -128
    select = [0] * 12 + [1] * 12       # switch buffers with no gap between rows
    outputs = []

    width = max(rows, cols)

    async def bench(ctx):
        # Buffer 0 is written a row at a time, buffer 1 a column at a time (transposed).
        ctx.set(dut.w_write, 1)
        for r in range(rows):
            ctx.set(dut.w_buf, 0)
            ctx.set(dut.w_index, r)
            ctx.set(dut.w_data, [int(v) for v in weights[0, r]] + [0] * (width - cols))
            await ctx.tick()
        ctx.set(dut.w_column, 1)
        for c in range(cols):
            ctx.set(dut.w_buf, 1)
            ctx.set(dut.w_index, c)
            ctx.set(dut.w_data, [int(v) for v in weights[1, :, c]] + [0] * (width - rows))
            await ctx.tick()
        ctx.set(dut.w_write, 0)
        for cycle in range(len(inputs) + dut.latency):
            if cycle < len(inputs):
                ctx.set(dut.x, [int(v) for v in inputs[cycle]])
                ctx.set(dut.x_sel, select[cycle])
            else:
                ctx.set(dut.x, [0] * rows)
            if cycle >= dut.latency:
                outputs.append([ctx.get(dut.y[c]) for c in range(cols)])
            await ctx.tick()

    simulate(dut, bench)
    want = np.array([inputs[i] @ weights[select[i]] for i in range(len(inputs))])
    assert np.array_equal(np.array(outputs), want)
    convert(dut)


def test_rejects_bad_dimensions():
    with pytest.raises(ValueError, match=r"array dimensions must be positive integers, not 0 x 4"):
        SystolicArray(0, 4)
