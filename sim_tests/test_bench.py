"""`neu10 bench --json`: the tracked keys exist and hold sane figures (values are for `make bench`)."""

import json

from runtime.cli import main


def test_bench_json_keys(capsys):
    assert main(["bench", "--json", "--config", "tiny"]) == 0
    results = json.loads(capsys.readouterr().out)
    for key in ("me_utilization", "ve_vectors_per_cycle", "dma_bandwidth_fraction"):
        assert 0 < results[key] <= 1, (key, results[key])
    for key in ("me_pysim_cycles_per_s", "ve_pysim_cycles_per_s", "dma_pysim_cycles_per_s"):
        assert results[key] > 0
