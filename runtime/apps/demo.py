"""`neu10 demo`: two tenants with different ME/VE appetites sharing one NPU (RTL simulation).

Tenant 0 runs a GEMM (ME-heavy); tenant 1 runs a sigmoid by table lookup over a long
vector stream (VE-heavy). Both are NeuISA programs in their own segments, each tenant owns
half of the engines, and the pNPU runs them under the harvest policy (and, to compare,
static partitioning). Results are checked bit for bit against plain numpy.
"""

import numpy as np

from isa.asm import assemble_program
from isa.encoding import Engine
from isa.golden import requantize
from runtime.compiler.builder import row_spans

__all__ = ["run_demo", "gemm_program", "sigmoid_program"]


def gemm_program(m, cfg, *, a_hbm, w_hbm, c_hbm, mult, shift):
    """C = requant(A @ W): A is m x array_rows int8, W array_rows x array_cols int8.

    Rows: A at 0..m-1, W at m.., the int32 product at m+rows.., int8 C after it. The GEMM
    is split into row blocks of one systolic pass each; blocks are independent, so the
    dispatcher may run them on different MEs at once. The ME and VE µTOps read nothing
    they write, so they are flagged restartable: under harvest they may borrow another
    tenant's engines.
    """
    k, n, lanes = cfg.array_rows, cfg.array_cols, cfg.ve_lanes
    w_row, acc_row = m, m + k
    c_row = acc_row + m
    block = min(m, 16)
    lines = [
        "load_w: .dma",
        f"    dcfg {n}, {n}, 1",
        f"    dload {w_row}, {w_hbm}, {k}",
        "load_a: .dma",
        f"    dcfg {k}, {k}, 1",
    ]
    lines += [f"    dload {r}, {a_hbm + r * k}, {size}" for r, size in row_spans(m)]
    gemms = []
    for index, (first, rows) in enumerate(row_spans(m, block)):
        gemms.append(f"mm{index}")
        lines += [f"mm{index}: .me deps(load_w, load_a) restartable"
                  f"{' eoo' if first + rows == m else ''}",
                  f"    ldw {w_row}, {k}",
                  f"    mm {acc_row + first}, {first}, {rows}"]
    lines += [f"requant: .ve deps({', '.join(gemms)}) restartable eoo",
              f"    vsetq {mult}, {shift}, 0"]
    lines += [f"    vrq {c_row + r}, {acc_row + r}, {size}" for r, size in row_spans(m)]
    lines += ["store: .dma deps(requant) eop",
              f"    dcfg {n}, {n}, 1"]
    lines += [f"    dstore {c_hbm + r * n}, {c_row + r}, {size}" for r, size in row_spans(m)]
    assert n <= lanes
    return "\n".join(lines) + "\n"


def sigmoid_program(rows, cfg, *, x_hbm, y_hbm, lut_hbm, chunk=64):
    """y = LUT_sigmoid(x) over rows x ve_lanes int8 values, in independent chunks."""
    lanes, lut_rows = cfg.ve_lanes, cfg.lut_rows
    x_row, y_row, lut_row = lut_rows, lut_rows + rows, 0
    lines = ["load_lut: .dma", f"    dload {lut_row}, {lut_hbm}, {lut_rows}"]
    lines += ["load_x: .dma"]
    lines += [f"    dload {x_row + r}, {x_hbm + r * lanes}, {size}" for r, size in row_spans(rows)]
    acts = []
    for index, (first, count) in enumerate(row_spans(rows, chunk)):
        acts.append(f"act{index}")
        lines += [f"act{index}: .ve deps(load_lut, load_x) restartable",
                  f"    vldlut {lut_row}",
                  f"    vlut {y_row + first}, {x_row + first}, {count}"]
    lines += [f"store: .dma deps({', '.join(acts)}) eoo eop"]
    lines += [f"    dstore {y_hbm + r * lanes}, {y_row + r}, {size}" for r, size in row_spans(rows)]
    return "\n".join(lines) + "\n"


def sigmoid_table(scale_in=16.0, scale_out=127.0):
    """int8 -> int32 sigmoid table: LUT[x + 128] = round(127 * sigmoid(x / 16))."""
    x = np.arange(-128, 128) / scale_in
    return np.round(scale_out / (1.0 + np.exp(-x))).astype(np.int32)


def run_demo(cfg, seed=2024, backend="pysim", policies=("harvest", "static")):
    """Run both tenants on the RTL under each policy; report latency, engines, exactness."""
    from runtime.host.device import Device
    from .mix import halves
    rng = np.random.default_rng(seed)
    k, n, lanes = cfg.array_rows, cfg.array_cols, cfg.ve_lanes
    m, rows = 64, 128
    a = rng.integers(-128, 128, (m, k))
    w = rng.integers(-128, 128, (k, n))
    x = rng.integers(-128, 128, (rows, lanes))
    mult, shift = 1 << 20, 30
    c_hbm = m * k + k * n
    gemm = assemble_program(gemm_program(m, cfg, a_hbm=0, w_hbm=m * k, c_hbm=c_hbm,
                                         mult=mult, shift=shift), source="tenant0.s", config=cfg)
    lut = sigmoid_table()
    sig = assemble_program(sigmoid_program(rows, cfg, x_hbm=0, y_hbm=rows * lanes,
                                           lut_hbm=2 * rows * lanes),
                           source="tenant1.s", config=cfg)
    spad_half, hbm_half = cfg.spad_rows // 2, cfg.hbm_words // 2
    c_expect = requantize(a @ w, mult, shift, 0)
    y_expect = lut[np.clip(x, -128, 127) + 128]

    def mix_of(assembly):
        count = {e: 0 for e in Engine}
        for item in assembly.items:
            count[item.engine] += 1
        return ", ".join(f"{count[e]} {e.name}" for e in Engine if count[e])

    print(f"neu10 demo: two tenants share one NPU ({cfg.n_me} MEs of {k}x{n}, {cfg.n_ve} VEs of "
          f"{lanes} lanes, {cfg.n_dma} DMA engine{'s' if cfg.n_dma > 1 else ''}), simulated on "
          f"{backend}")
    print(f"  tenant 0: int8 GEMM {m}x{k}x{n} + requantize ({mix_of(gemm)} µTOps), owns "
          f"half the MEs and VEs")
    print(f"  tenant 1: sigmoid by table lookup over {rows}x{lanes} values ({mix_of(sig)} µTOps), "
          f"owns the other half\n")
    ok, latencies = True, {}
    for policy in policies:
        device = Device(cfg, backend, policy)
        tenants = [device.create(n_me, n_ve, spad_half, hbm_half, oversubscribe=True)
                   for n_me, n_ve in halves(cfg)]
        driver = device.driver({vnpu.name: program.words
                                for vnpu, program in zip(tenants, (gemm, sig))})
        driver.write_hbm(0, a.reshape(-1))
        driver.write_hbm(m * k, w.reshape(-1))
        driver.write_hbm(hbm_half, x.reshape(-1))
        driver.write_hbm(hbm_half + 2 * rows * lanes, lut)
        result = driver.run(read_hbm=[(c_hbm, m * n), (hbm_half + rows * lanes, rows * lanes)])
        exact = [np.array_equal(result.hbm[(c_hbm, m * n)].reshape(m, n), c_expect),
                 np.array_equal(result.hbm[(hbm_half + rows * lanes, rows * lanes)]
                                .reshape(rows, lanes), y_expect)]
        ok &= all(exact) and all(c.status.name == "DONE" for c in result.contexts)
        latencies[policy] = result.makespan
        busy = lambda first, count: sum(e["BUSY"] for e in result.engines[first:first + count])
        print(f"  policy {policy}: makespan {result.makespan} cycles; ME busy "
              f"{busy(0, cfg.n_me) / (cfg.n_me * result.makespan):.0%}, VE busy "
              f"{busy(cfg.n_me, cfg.n_ve) / (cfg.n_ve * result.makespan):.0%}")
        for c, context in enumerate(result.contexts):
            print(f"    tenant {c}: {context.status.name.lower()}, {context.cycles} cycles, "
                  f"engine-cycles on own engines {context.counters['OWN_CYCLES']}, on "
                  f"borrowed {context.counters['HARVEST_CYCLES']}; result "
                  f"{'bit-exact' if exact[c] else 'WRONG'} vs numpy")
    if "harvest" in latencies and "static" in latencies:
        print(f"\n  harvesting idle engines: {latencies['static'] / latencies['harvest']:.2f}x "
              f"shorter makespan than static partitioning")
    return 0 if ok else 1
