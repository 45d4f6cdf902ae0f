"""`neu10 bench`: throughput of each engine on the default config, and pure-Python simulator speed.

Every run is also executed on the golden model and checked bit for bit; a figure from a
wrong result is never printed as if it were fine.
"""

import time

import numpy as np

from hw.dma_engine import DMAEngine
from hw.matrix_engine import MatrixEngine
from hw.vector_engine import VectorEngine
from isa.asm import assemble
from isa.config import NPUConfig
from isa.golden import Segment
from isa.regmap import Policy, register_address
from runtime.backends import script as ops
from runtime.backends.single_engine import run_engine
from runtime.host.device import Device
from . import mix

__all__ = ["run_benchmarks", "format_report"]

INSTRUCTIONS = 8


def rows_per_instruction(config):
    """256 rows per instruction (the longest one instruction streams), or what fits."""
    return min(256, config.spad_rows // (2 * INSTRUCTIONS),
               config.hbm_words // (INSTRUCTIONS * config.ve_lanes))


def _timed(config, engine, reads, writes, source, spad, **kwargs):
    """Run and check; the time is that of the simulation proper (not elaboration)."""
    out = run_engine(config, engine, reads, writes, source, spad, **kwargs)
    seconds = out["sim_seconds"]
    exact = np.array_equal(out["spad"], out["golden"].spad) and (
        "hbm" not in out or np.array_equal(out["hbm"], out["golden_hbm"]))
    if not exact:
        raise AssertionError(f"{engine.__name__}: RTL result differs from the golden model")
    return out["counters"], seconds


def bench_matrix_engine(config):
    """8 consecutive weight tiles, 256 rows streamed through each, back to back."""
    k, rows = config.array_rows, rows_per_instruction(config)
    inputs, outputs = INSTRUCTIONS * k, INSTRUCTIONS * k + rows
    lines = [".me eop"]
    for t in range(INSTRUCTIONS):
        lines += [f"    ldw {t * k}, {k}", f"    mm {outputs + t * rows}, {inputs}, {rows}"]
    spad = np.random.default_rng(1).integers(-128, 128, (outputs, config.ve_lanes))
    counters, seconds = _timed(config, MatrixEngine, ["rd_in", "rd_aux"], ["wr"],
                               "\n".join(lines) + "\n", spad)
    return {"me_utilization": counters["work"] / counters["busy_cycles"],
            "me_cycles": counters["busy_cycles"],
            "me_pysim_cycles_per_s": counters["busy_cycles"] / seconds}


def bench_vector_engine(config):
    """A long elementwise stream: requantize 8 x 256 rows."""
    rows = rows_per_instruction(config)
    lines = [".ve eop", "    vsetq 1518500250, 37, 0"]
    lines += [f"    vrq {INSTRUCTIONS * rows + i * rows}, {i * rows}, {rows}" for i in range(INSTRUCTIONS)]
    spad = np.random.default_rng(2).integers(-2**31, 2**31, (INSTRUCTIONS * rows, config.ve_lanes))
    counters, seconds = _timed(config, VectorEngine, ["rd_a", "rd_b"], ["wr"],
                               "\n".join(lines) + "\n", spad)
    return {"ve_vectors_per_cycle": counters["work"] / counters["busy_cycles"],
            "ve_cycles": counters["busy_cycles"],
            "ve_pysim_cycles_per_s": counters["busy_cycles"] / seconds}


def bench_dma(config):
    """Load 8 x 256 whole rows from HBM: achieved bytes per cycle vs the configured bandwidth."""
    rows, lanes = rows_per_instruction(config), config.ve_lanes
    lines = [".dma eop"] + [f"    dload {i * rows}, {i * rows * lanes}, {rows}"
                            for i in range(INSTRUCTIONS)]
    hbm = np.random.default_rng(3).integers(-2**31, 2**31, INSTRUCTIONS * rows * lanes)
    counters, seconds = _timed(config, DMAEngine, ["rd"], ["wr"], "\n".join(lines) + "\n",
                               np.zeros((1, lanes)), hbm=hbm, hbm_segment=Segment(0, len(hbm)))
    achieved = 4 * counters["work"] / counters["busy_cycles"]
    return {"dma_bandwidth_fraction": achieved / config.hbm_bytes_per_cycle,
            "dma_bytes_per_cycle": achieved,
            "dma_cycles": counters["busy_cycles"],
            "dma_pysim_cycles_per_s": counters["busy_cycles"] / seconds}


def policy_mix(config):
    """Tenant 0 is ME-heavy, tenant 1 VE-heavy; each owns half of the MEs and of the VEs."""
    return [mix.me_heavy_program(config, n_ops=8, per_op=4, rows=48),
            mix.ve_heavy_program(config, n_ve=32, rows=32, n_me=2)]


def bench_policies(config):
    """The two-tenant mix under every policy: makespan, latency per tenant, utilization."""
    programs = policy_mix(config)
    table = {}
    for policy in Policy:
        run = mix.run_mix(config, programs, policy.name.lower(), engines=mix.halves(config))
        if not run.exact:
            raise AssertionError(f"policy {policy.name.lower()}: RTL result differs from golden")
        result = run.result
        makespan = result.makespan
        busy = {t: sum(e["BUSY"] for i, e in enumerate(result.engines)
                       if (i < config.n_me) == (t == "me") and i < config.n_me + config.n_ve)
                for t in ("me", "ve")}
        table[policy.name.lower()] = {
            "makespan_cycles": makespan,
            "latency_cycles": [c.cycles for c in result.contexts],
            "me_utilization": busy["me"] / (config.n_me * makespan),
            "ve_utilization": busy["ve"] / (config.n_ve * makespan),
            "harvested_engine_cycles": [c.counters["HARVEST_CYCLES"] for c in result.contexts],
        }
    return {"policies": table}


def bench_dispatch_latency(config, length=16):
    """A chain of dependent one-row µTOps: cycles from a µTOp's retirement to the issue of
    the µTOp that waited for it."""
    run = mix.run_mix(config, [mix.chain_program(length)], "harvest", trace=True)
    if not run.exact:
        raise AssertionError("dispatch chain: RTL result differs from golden")
    retires = [e["cycle"] for e in run.result.trace if e["retiring"] & 1]
    issues = [e["cycle"] for e in run.result.trace if e["issues"]]
    gaps = [issue - retire for retire, issue in zip(retires, issues[1:])]
    return {"dispatch_latency_cycles": sum(gaps) / len(gaps),
            "dispatch_latency_max_cycles": max(gaps)}


def backend_workload(config):
    """A long two-context run: GEMM tiles on one context, a long vector loop on the other."""
    me_ops = max(1, min(80, config.imem_words // (3 * 4)))
    return [mix.me_heavy_program(config, n_ops=me_ops, per_op=4, rows=48),
            ".ve eop\n    loop 4000, 1, 0, 0\n    vaddi 200, 200, 1, 64\n"]


def _loaded(config, backend, programs):
    """A driver with ``programs`` (assembly) on vNPUs of every engine (shared), the policy
    left at its reset value (static)."""
    device = Device(config, backend, policy=None)
    vnpus = mix.place_tenants(device, [(config.n_me, config.n_ve)] * len(programs))
    return device.driver({vnpu.name: assemble(source, config=config)
                          for vnpu, source in zip(vnpus, programs)})


def bench_backends(config, pysim_cycles=3000, chunk=256):
    """Simulator speed on the same program: pysim (a prefix of the run) vs verilator (all of
    it); verilator build time cold and cached; the cost of stepping from Python."""
    from runtime.backends.verilator import build_model
    from runtime.backends.verilog import block_sizes
    programs = backend_workload(config)

    pysim = _loaded(config, "pysim", programs)
    pysim.backend.execute([ops.CsrRead(0)])          # build and compile the simulation first
    start = time.perf_counter()
    result = pysim.run(max_cycles=pysim_cycles)
    pysim_rate = result.cycles / (time.perf_counter() - start)

    binary, cold = build_model(config)
    verilog_bytes = block_sizes((binary.parent / "neu10_npu.v").read_text())
    if not cold:
        cold = float((binary.parent / "build_seconds").read_text())
    start = time.perf_counter()
    build_model(config)
    cached = time.perf_counter() - start

    verilator = _loaded(config, "verilator", programs)
    script = list(verilator.script) + [ops.CsrWrite(register_address("START"), 3),
                                       ops.Run(10_000_000)]
    start = time.perf_counter()
    (waited, busy), = verilator.backend.execute(script)
    free = time.perf_counter() - start
    if busy:
        raise AssertionError("verilator: the backend workload did not finish")
    start = time.perf_counter()
    (stepped_waited, _), = verilator.backend.stepped(script, chunk)
    stepped = time.perf_counter() - start
    return {"pysim_cycles_per_s": pysim_rate,
            "verilator_cycles_per_s": waited / free,
            "verilator_speedup": (waited / free) / pysim_rate,
            "python_driving_overhead": stepped / free - 1,
            "python_driving_chunk_cycles": chunk,
            "verilator_build_seconds_cold": cold,
            "verilator_start_seconds_cached": cached,
            "verilog_bytes": verilog_bytes,
            "backend_workload_cycles": waited}


def bench_runtime(config, backend="verilator", size=256):
    """Compile time per model; end-to-end ME utilization of a size^3 int8 matmul with
    every ME (DMA of A, B and C included); the same model on 1, 2 and all MEs."""
    import numpy as np
    from .inference import execute
    from .matmul import matmul
    from runtime.compiler.models import MODELS, compile_model
    compile_seconds = {name: compile_model(name, config).compile_seconds for name in MODELS}
    rng = np.random.default_rng(0)
    a, b = rng.integers(-128, 128, (size, size)), rng.integers(-128, 128, (size, size))
    c, run = matmul(a, b, config=config, backend=backend)
    if not np.array_equal(c, a @ b):
        raise AssertionError(f"matmul{size}: the NPU's result differs from numpy")
    mac = sum(e["WORK"] for e in run.engines[:config.n_me])
    model = compile_model("resnet", config)
    cycles = {}
    for n_me in sorted({1, 2, config.n_me}):
        outputs, result = execute(model.graph, model.program, backend=backend, n_me=n_me,
                                  policy="static")
        if not np.array_equal(outputs["resnet"], model.expected):
            raise AssertionError(f"resnet on {n_me} MEs differs from the reference")
        cycles[n_me] = result.makespan
    return {"compile_seconds": compile_seconds,
            f"matmul{size}_cycles": run.makespan,
            f"matmul{size}_me_utilization": mac / (config.n_me * run.makespan),
            "me_scaling_model": "resnet",
            "me_scaling_cycles": cycles,
            "me_scaling": {n: cycles[1] / cycles[n] for n in cycles}}


def bench_colocation(config, backend="verilator", pair=("bert", "resnet"), vnpu=(2, 2)):
    """Two models, each on a vNPU of ``vnpu`` (ME, VE) engines: alone, then side by side
    under every policy. Per tenant: cycles, slowdown against alone, cycles waiting for an
    engine, µTOps preempted; STP = sum of alone / co-located."""
    import numpy as np
    from .inference import run_models
    from runtime.compiler.models import compile_model
    models = [compile_model(name, config) for name in pair]
    alone = []
    for model in models:
        [out], run = run_models(config, [(model, *vnpu)], backend=backend, policy="static")
        if not np.array_equal(out, model.expected):
            raise AssertionError(f"{model.name} alone differs from its reference")
        alone.append(run.contexts[0].cycles)
    table = {}
    for policy in Policy:
        outs, run = run_models(config, [(m, *vnpu) for m in models], backend=backend,
                                policy=policy.name.lower())
        for model, out in zip(models, outs):
            if not np.array_equal(out, model.expected):
                raise AssertionError(f"{model.name} under {policy.name.lower()} differs")
        cycles = [c.cycles for c in run.contexts]
        table[policy.name.lower()] = {
            "cycles": cycles,
            "slowdown": [c / a for c, a in zip(cycles, alone)],
            "stp": sum(a / c for a, c in zip(alone, cycles)),
            "engine_wait_cycles": [c.counters["ENGINE_WAIT"] for c in run.contexts],
            "harvested_engine_cycles": [c.counters["HARVEST_CYCLES"] for c in run.contexts],
            "preempted_utops": [c.counters["PREEMPTED"] for c in run.contexts],
        }
    return {"colocation": {"models": list(pair), "vnpu": list(vnpu), "alone_cycles": alone,
                           "policies": table}}


def bench_serving(config, backend="verilator", pair=("resnet", "bert"), load=0.7,
                  requests=50, seed=1):
    """Serving: an ME-heavy and a VE-heavy model (each on the allocator's vNPU), open loop at
    ``load`` (``requests`` of the slower, serve.request_counts), under every policy: harvest's throughput, p99 latency and utilization against
    each baseline (ratios > 1: harvest is better)."""
    from runtime.host.driver import POLICIES
    from .serve import TenantSpec, serve
    points = serve(config, [TenantSpec(name) for name in pair], policies=POLICIES, load=load,
                   requests=requests, seed=seed, backend=backend)
    table = {}
    for point in points:
        if point.problems:
            raise AssertionError(f"serving under {point.policy}: {point.problems[0]}")
        table[point.policy] = {
            "throughput": [t.throughput for t in point.tenants],
            "p99_cycles": [t.latency_p99 for t in point.tenants],
            "p50_cycles": [t.latency_p50 for t in point.tenants],
            "utilization": (point.utilization["me"] + point.utilization["ve"]) / 2,
            "stp": point.stp, "antt": point.antt}
    harvest = table["harvest"]
    ratios = {}
    for name, row in table.items():
        if name == "harvest":
            continue
        ratios[name] = {
            "throughput": sum(harvest["throughput"]) / sum(row["throughput"]),
            "p99": [b / h for h, b in zip(harvest["p99_cycles"], row["p99_cycles"])],
            "utilization": harvest["utilization"] / row["utilization"]}
    first = points[0]
    return {"serving": {"models": list(pair), "load": load,
                        "requests": [t.requests for t in first.tenants],
                        "vnpus": [[t.n_me, t.n_ve] for t in first.tenants],
                        "isolated_latency": [t.isolated_latency for t in first.tenants],
                        "policies": table, "harvest_vs": ratios}}


def bench_perf(config, pair=("resnet", "bert"), load=0.7, requests=50, seed=1,
               large=("tpu", "resnet50")):
    """The timing model (``perf``) against Verilator on the serving point of bench_serving:
    wall time of both (ratio) and the error of perf's figures; and the timing model alone
    (no golden data) on one inference of a full-size model on a large preset: its wall
    time, cycles and µTOps (Verilator cannot build a 128x128 pNPU here)."""
    from runtime.backends.perf.pnpu import PNPU, parse_program
    from runtime.compiler.models import compile_model
    from runtime.host.driver import POLICIES
    from .serve import TenantSpec, serve
    seconds, points = {}, {}
    for backend in ("verilator", "perf"):
        serve(config, [TenantSpec(name) for name in pair], policies=("static",), load=load,
              requests=2, seed=seed, backend=backend)                  # builds, caches
        start = time.perf_counter()
        points[backend] = serve(config, [TenantSpec(name) for name in pair], policies=POLICIES,
                                load=load, requests=requests, seed=seed, backend=backend)
        seconds[backend] = time.perf_counter() - start
    errors = []
    for v, p in zip(points["verilator"], points["perf"]):
        for tv, tp in zip(v.tenants, p.tenants):
            errors += [abs(tp.latency_mean / tv.latency_mean - 1),
                       abs(tp.latency_p99 / tv.latency_p99 - 1)]
    preset, model_name = large
    big = NPUConfig.preset(preset)
    program = parse_program(compile_model(model_name, big).program.words, big)
    model = PNPU(big, Policy.HARVEST)
    model.start(0, program, dict(HBM_BASE=0, ME_MASK=(1 << big.n_me) - 1,
                                 VE_MASK=(1 << big.n_ve) - 1, PRIORITY=0), 0)
    start = time.perf_counter()
    model.run(1 << 40)
    timing_seconds = time.perf_counter() - start
    return {"perf": {"serving_seconds": seconds, "speedup": seconds["verilator"] / seconds["perf"],
                     "latency_error_median": float(np.median(errors)),
                     "latency_error_worst": max(errors),
                     "large": {"config": preset, "model": model_name, "utops": len(program.utops),
                               "cycles": model.contexts[0].counters["CYCLES"],
                               "seconds": timing_seconds}}}


def run_benchmarks(config=None, *, policies=True, backends=True):
    config = config or NPUConfig()
    results = {"config": "default" if config == NPUConfig() else "custom"}
    benches = [bench_matrix_engine, bench_vector_engine, bench_dma]
    if policies:
        benches += [bench_dispatch_latency, bench_policies]
    if backends:
        benches.append(bench_backends)
    for bench in benches:
        results.update(bench(config))
    if backends:
        from runtime.compiler.builder import CompileError
        from runtime.compiler.onnx_import import OnnxError
        from .matmul import MatmulError
        from .serve import ServeError
        try:
            results.update(bench_runtime(config))
            results.update(bench_colocation(config))
            results.update(bench_serving(config))
            results.update(bench_perf(config))
        except (CompileError, OnnxError, MatmulError, ServeError) as error:
            results["runtime_skipped"] = f"this configuration cannot hold the workload: {error}"
    return results


def format_report(results, config):
    k, n = config.array_rows, config.array_cols
    per = rows_per_instruction(config)
    rows = [
        ("ME utilization (MAC-busy / total cycles)",
         f"{results['me_utilization']:.1%}", ">= 95%",
         f"{INSTRUCTIONS} weight tiles x {per} rows on {k}x{n}, {results['me_cycles']} cycles"),
        ("VE vectors per cycle", f"{results['ve_vectors_per_cycle']:.3f}", ">= 0.95",
         f"vrq over {INSTRUCTIONS} x {per} rows, {results['ve_cycles']} cycles"),
        ("DMA bandwidth (achieved / configured)", f"{results['dma_bandwidth_fraction']:.1%}",
         ">= 90%", f"{results['dma_bytes_per_cycle']:.1f} of {config.hbm_bytes_per_cycle} B/cycle, "
         f"latency {config.hbm_latency}"),
        ("pysim speed, ME + scratchpad", f"{results['me_pysim_cycles_per_s']:.0f} cycles/s", "", ""),
        ("pysim speed, VE + scratchpad", f"{results['ve_pysim_cycles_per_s']:.0f} cycles/s", "", ""),
        ("pysim speed, DMA + scratchpad + HBM", f"{results['dma_pysim_cycles_per_s']:.0f} cycles/s", "", ""),
    ]
    if "dispatch_latency_cycles" in results:
        rows.append(("dispatch latency (retire -> dependent issue)",
                     f"{results['dispatch_latency_cycles']:.2f} cycles", "1-2",
                     f"max {results['dispatch_latency_max_cycles']}, chain of dependent µTOps"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'figure':<{width}}  {'measured':>18}  {'target':>8}  conditions"]
    lines += [f"{name:<{width}}  {value:>18}  {target:>8}  {note}" for name, value, target, note in rows]
    if "verilator_cycles_per_s" in results:
        rows_b = [
            ("pysim speed, whole pNPU", f"{results['pysim_cycles_per_s']:.0f} cycles/s", "",
             "same workload (a prefix of it)"),
            ("verilator speed, whole pNPU", f"{results['verilator_cycles_per_s']:.0f} cycles/s",
             "", f"{results['backend_workload_cycles']} cycles, free-running"),
            ("verilator / pysim", f"{results['verilator_speedup']:.0f}x", ">= 300x", ""),
            ("stepping from Python, overhead", f"{results['python_driving_overhead']:.1%}",
             "<= 20%", f"steps of {results['python_driving_chunk_cycles']} cycles"),
            ("verilator build, cold / cached", f"{results['verilator_build_seconds_cold']:.0f} s / "
             f"{results['verilator_start_seconds_cached']:.2f} s", "", ""),
            ("generated Verilog, whole pNPU", f"{results['verilog_bytes']['total'] / 1e6:.2f} MB",
             "", "per block (one instance): " + ", ".join(
                 f"{name} {size / 1e3:.0f} kB" for name, size in sorted(
                     results["verilog_bytes"].items(), key=lambda item: -item[1])
                 if name != "total")),
        ]
        width = max(width, max(len(r[0]) for r in rows_b))
        lines = [f"{'figure':<{width}}  {'measured':>18}  {'target':>8}  conditions"]
        lines += [f"{name:<{width}}  {value:>18}  {target:>8}  {note}"
                  for name, value, target, note in rows + rows_b]
    if "matmul256_me_utilization" in results:
        scaling = results["me_scaling"]
        lines += ["", f"{'matmul 256x256x256 int8, all MEs, DMA included':<{width}}  "
                      f"{results['matmul256_me_utilization']:>18.1%}  {'>= 80%':>8}  "
                      f"{results['matmul256_cycles']} cycles",
                  f"{'speedup of ' + results['me_scaling_model'] + ' on 1 / 2 / 4 MEs':<{width}}  "
                  f"{' / '.join(f'{v:.2f}' for v in scaling.values()):>18}  {'':>8}  "
                  f"cycles {' / '.join(str(v) for v in results['me_scaling_cycles'].values())}",
                  "compile time per model: " + ", ".join(
                      f"{k} {v * 1000:.1f} ms" for k, v in results["compile_seconds"].items())]
    if "policies" in results:
        lines += ["", "two tenants (0: ME-heavy, 1: VE-heavy), each owning half the MEs and VEs:",
                  f"{'policy':<10} {'makespan':>9} {'latency 0':>10} {'latency 1':>10} "
                  f"{'ME util':>8} {'VE util':>8} {'harvested 0/1':>14}"]
        for name, row in results["policies"].items():
            lines.append(f"{name:<10} {row['makespan_cycles']:>9} {row['latency_cycles'][0]:>10} "
                         f"{row['latency_cycles'][1]:>10} {row['me_utilization']:>8.1%} "
                         f"{row['ve_utilization']:>8.1%} "
                         f"{'/'.join(str(v) for v in row['harvested_engine_cycles']):>14}")
        static = results["policies"]["static"]["makespan_cycles"]
        harvest = results["policies"]["harvest"]["makespan_cycles"]
        lines.append(f"harvest vs static makespan: {static / harvest:.2f}x")
    if "colocation" in results:
        co = results["colocation"]
        a, b = co["models"]
        lines += ["", f"{a} and {b}, each on a vNPU of {co['vnpu'][0]} ME + {co['vnpu'][1]} VE "
                      f"(alone: {co['alone_cycles'][0]} / {co['alone_cycles'][1]} cycles):",
                  f"{'policy':<10} {'cycles ' + a:>14} {'cycles ' + b:>14} {'slowdown':>12} "
                  f"{'STP':>5} {'engine wait':>14} {'preempted':>10}"]
        for name, row in co["policies"].items():
            lines.append(f"{name:<10} {row['cycles'][0]:>14} {row['cycles'][1]:>14} "
                         f"{'/'.join(f'{v:.2f}' for v in row['slowdown']):>12} "
                         f"{row['stp']:>5.2f} "
                         f"{'/'.join(str(v) for v in row['engine_wait_cycles']):>14} "
                         f"{'/'.join(str(v) for v in row['preempted_utops']):>10}")
    if "serving" in results:
        sv = results["serving"]
        a, b = sv["models"]
        lines += ["", f"serving {a} ({sv['vnpus'][0][0]} ME + {sv['vnpus'][0][1]} VE) and {b} "
                      f"({sv['vnpus'][1][0]} ME + {sv['vnpus'][1][1]} VE), open loop at load "
                      f"{sv['load']:g}, {sv['requests'][0]} / {sv['requests'][1]} requests "
                      f"(as many as arrive in the same time; alone: "
                      f"{sv['isolated_latency'][0]} / {sv['isolated_latency'][1]} cycles):",
                  f"{'policy':<10} {'p50 ' + a:>12} {'p99 ' + a:>12} {'p50 ' + b:>12} "
                  f"{'p99 ' + b:>12} {'util':>6} {'STP':>5} {'ANTT':>5}"]
        for name, row in sv["policies"].items():
            lines.append(f"{name:<10} {row['p50_cycles'][0]:>12.0f} {row['p99_cycles'][0]:>12.0f} "
                         f"{row['p50_cycles'][1]:>12.0f} {row['p99_cycles'][1]:>12.0f} "
                         f"{row['utilization']:>6.1%} {row['stp']:>5.2f} {row['antt']:>5.2f}")
        lines.append("harvest vs " + "; ".join(
            f"{name}: throughput {r['throughput']:.2f}x, p99 "
            f"{'/'.join(f'{v:.2f}' for v in r['p99'])}x, utilization {r['utilization']:.2f}x"
            for name, r in sv["harvest_vs"].items()))
    if "perf" in results:
        pf = results["perf"]
        large = pf["large"]
        lines += ["", f"timing model (--backend perf) on the serving point above, every policy: "
                      f"{pf['serving_seconds']['perf']:.1f} s against Verilator's "
                      f"{pf['serving_seconds']['verilator']:.1f} s ({pf['speedup']:.1f}x, golden "
                      f"data included); latency error (mean and p99 per tenant) median "
                      f"{pf['latency_error_median']:.2%}, worst {pf['latency_error_worst']:.2%}",
                  f"timing model alone, {large['model']} on {large['config']}: "
                  f"{large['seconds']:.2f} s for {large['cycles']} cycles, {large['utops']} µTOps "
                  f"({large['cycles'] / large['seconds'] / 1e6:.1f} M simulated cycles/s)"]
    return "\n".join(lines)
