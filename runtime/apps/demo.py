"""`neu10 demo`: two tenants with different ME/VE appetites serve requests on one NPU (RTL).

Tenant "gemm" runs a GEMM (ME-heavy); tenant "sigmoid" a sigmoid by table lookup over a
vector stream (VE-heavy). Both are NeuISA programs, each tenant has a vNPU of half the
engines, and each sends a short stream of requests, each on its own input (HBM slots, the
doorbell's offset picks one). The pNPU serves them under harvest (Neu10), static
partitioning and temporal sharing (PREMA-like): per tenant the median and worst latency,
throughput, how busy its own engines were and how much it borrowed. Every output is
checked bit for bit against plain numpy.
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


def run_demo(cfg, seed=2024, backend="pysim", policies=("harvest", "static", "temporal"),
             requests=3):
    """Two tenants serve short request streams side by side under each policy; report
    latency, throughput and engine use per tenant, and check every output."""
    from runtime.host.device import Device
    from .mix import halves
    from .serve import engine_cycles
    rng = np.random.default_rng(seed)
    k, n, lanes = cfg.array_rows, cfg.array_cols, cfg.ve_lanes
    m, rows = 64, 64
    mult, shift = 1 << 20, 30
    lut = sigmoid_table()
    w = rng.integers(-128, 128, (k, n))
    # Two different inputs per tenant: requests alternate between them.
    a = [rng.integers(-128, 128, (m, k)) for _ in range(2)]
    x = [rng.integers(-128, 128, (rows, lanes)) for _ in range(2)]
    c_hbm = m * k + k * n
    gemm = assemble_program(gemm_program(m, cfg, a_hbm=0, w_hbm=m * k, c_hbm=c_hbm,
                                         mult=mult, shift=shift), cfg, source="gemm.s")
    sig = assemble_program(sigmoid_program(rows, cfg, x_hbm=0, y_hbm=rows * lanes,
                                           lut_hbm=2 * rows * lanes, chunk=16), cfg,
                           source="sigmoid.s")
    # Per tenant: program, slot size, the image of input b, the output range, expected.
    tenants = [
        ("gemm", gemm, c_hbm + m * n,
         lambda b: [(0, a[b].reshape(-1)), (m * k, w.reshape(-1))], (c_hbm, m * n),
         [requantize(a[b] @ w, mult, shift, 0).reshape(-1) for b in range(2)]),
        ("sigmoid", sig, 2 * rows * lanes + len(lut),
         lambda b: [(0, x[b].reshape(-1)), (2 * rows * lanes, lut)], (rows * lanes, rows * lanes),
         [lut[np.clip(x[b], -128, 127) + 128].reshape(-1) for b in range(2)]),
    ]

    def mix_of(assembly):
        count = {e: 0 for e in Engine}
        for item in assembly.items:
            count[item.engine] += 1
        return ", ".join(f"{count[e]} {e.name}" for e in Engine if count[e])

    sizes = halves(cfg)
    simulator = ("pure-Python simulator (pysim)" if backend == "pysim" else
                 "Verilator model")
    print(f"neu10 demo: two tenants share one NPU ({cfg.n_me} MEs of {k}x{n}, {cfg.n_ve} VEs of "
          f"{lanes} lanes), simulated cycle by cycle in RTL on the {simulator}")
    print(f"  gemm:    int8 GEMM {m}x{k}x{n} + requantize ({mix_of(gemm)} µTOps): ME-heavy; "
          f"a vNPU of {sizes[0][0]} ME + {sizes[0][1]} VE")
    print(f"  sigmoid: sigmoid by table lookup over {rows}x{lanes} values ({mix_of(sig)} "
          f"µTOps): VE-heavy; a vNPU of {sizes[1][0]} ME + {sizes[1][1]} VE")
    gap = 150
    arrivals = sorted((i * gap + t * gap // 3, t) for i in range(requests) for t in range(2))
    print(f"  each sends {requests} requests, one every {gap} cycles (sigmoid {gap // 3} cycles "
          f"after gemm), each on its own input; every output is checked against numpy\n")
    print(f"  {'policy':<9} {'tenant':<8} {'latency p50':>11} {'max':>6} {'req/Mcycle':>10} "
          f"{'own engines busy':>16} {'borrowed':>8}  outputs")
    ok, medians = True, {}
    for policy in policies:
        device = Device(cfg, backend, policy)
        vnpus = [device.create(n_me, n_ve, cfg.spad_rows // 2, requests * slot, name=name,
                               oversubscribe=True)
                 for (n_me, n_ve), (name, _, slot, _, _, _) in zip(sizes, tenants)]
        driver = device.driver({name: program.words for name, program, *_ in tenants},
                               windows={name: slot for name, _, slot, *_ in tenants})
        for vnpu, (_, _, slot, image, _, _) in zip(vnpus, tenants):
            for r in range(requests):
                for address, values in image(r % 2):
                    driver.load_hbm(vnpu.hbm.base + r * slot + address, values)
        count, offsets, outputs, slots = [0, 0], [], [], []
        for _, t in arrivals:
            r = count[t]
            count[t] += 1
            _, _, slot, _, (start, size), _ = tenants[t]
            offsets.append(r * slot)
            outputs.append((vnpus[t].hbm.base + r * slot + start, size))
            slots.append(r)
        run, served = driver.serve([(cycle, vnpus[t].ctx) for cycle, t in arrivals],
                                   offsets=offsets, outputs=outputs)
        span = max((r.end for r in served if r.end is not None), default=1)
        for t, (vnpu, (name, *_, expected)) in enumerate(zip(vnpus, tenants)):
            mine = [(r, slot) for r, slot, (_, who) in zip(served, slots, arrivals) if who == t]
            exact = all(r.output is not None and not r.faulted and
                        np.array_equal(r.output, expected[slot % 2]) for r, slot in mine)
            ok &= exact
            latencies = [r.latency for r, _ in mine if r.end is not None]
            # Its own throughput: its requests over the time to its own last end.
            own_span = max((r.end for r, _ in mine if r.end is not None), default=0)
            medians[policy, name] = float(np.median(latencies)) if latencies else float("inf")
            own, owned, borrowed = engine_cycles(cfg, run, vnpu)
            print(f"  {policy:<9} {name:<8} {medians[policy, name]:>11.0f} "
                  f"{max(latencies, default=0):>6} {len(latencies) / own_span * 1e6 if own_span else 0:>10.0f} "
                  f"{sum(own.values()) / (sum(owned.values()) * span):>16.0%} {borrowed:>8}  "
                  f"{'bit-exact' if exact else 'WRONG'}")
    for baseline in ("static", "temporal"):
        if "harvest" in policies and baseline in policies:
            print(f"\n  harvest vs {baseline}: median latency " + ", ".join(
                f"{name} {medians[baseline, name] / medians['harvest', name]:.2f}x shorter"
                for name, *_ in tenants), end="")
    print("\n\n  (latency: cycles from a request's arrival at the host to its end, queueing "
          "included;\n  borrowed: engine-cycles of its µTOps on engines the other tenant owns)")
    return 0 if ok else 1
