"""`neu10 bench --json`: the tracked keys exist and hold sane figures (values are for `make bench`)."""

import json

from isa.config import NPUConfig
from runtime.apps.bench import bench_runtime
from runtime.apps.cli import main


def test_bench_json_keys(capsys):
    assert main(["bench", "--json", "--config", "tiny"]) == 0
    results = json.loads(capsys.readouterr().out)
    for key in ("me_utilization", "ve_vectors_per_cycle", "dma_bandwidth_fraction"):
        assert 0 < results[key] <= 1, (key, results[key])
    for key in ("me_pysim_cycles_per_s", "ve_pysim_cycles_per_s", "dma_pysim_cycles_per_s"):
        assert results[key] > 0
    assert set(results["policies"]) == {"static", "harvest", "temporal", "v10"}
    for row in results["policies"].values():
        assert row["makespan_cycles"] == max(row["latency_cycles"]) > 0
        assert 0 < row["me_utilization"] <= 1 and 0 < row["ve_utilization"] <= 1
    # Harvesting shortens the mix: the ME-heavy tenant borrows the VE-heavy tenant's MEs.
    assert results["policies"]["harvest"]["makespan_cycles"] < \
        results["policies"]["static"]["makespan_cycles"]
    # A retirement reaches the wait masks at the clock edge: its dependant issues a cycle later.
    assert results["dispatch_latency_cycles"] == results["dispatch_latency_max_cycles"] == 1
    assert results["verilator_cycles_per_s"] > results["pysim_cycles_per_s"] > 0
    assert results["verilator_speedup"] > 1 and results["python_driving_overhead"] > -1
    assert "cannot hold the workload" in results["runtime_skipped"]


def test_runtime_figures():
    """The runtime figures of `make bench`, at a size the small machine holds, on the timing
    model (which `neu10 validate` holds to the RTL)."""
    results = bench_runtime(NPUConfig.preset("small"), backend="perf", size=64)
    assert 0.3 < results["matmul64_me_utilization"] <= 1
    assert results["me_scaling"][1] == 1 and results["me_scaling"][2] > 1.2
    assert set(results["compile_seconds"]) == {"ncf", "resnet", "bert", "dlrm"}


def test_serving_figures():
    """The serving point of `make bench`, with small models and few requests."""
    from runtime.apps.bench import bench_serving
    results = bench_serving(NPUConfig.preset("small"), pair=("ncf", "dlrm"), requests=4)["serving"]
    assert set(results["policies"]) == {"static", "harvest", "temporal", "v10"}
    assert set(results["harvest_vs"]) == {"static", "temporal", "v10"}
    # dlrm (the slower) gets 4 requests, ncf more: as many as arrive in the same time.
    assert results["requests"][1] == 4 and results["requests"][0] > 4
    for ratios in results["harvest_vs"].values():
        assert ratios["throughput"] > 0 and ratios["utilization"] > 0
        assert len(ratios["p99"]) == 2 and all(r > 0 for r in ratios["p99"])
