"""The commands (`neu10 ...`) and the workloads they run: CLI, bench, demo, conformance,
fuzzing, policy mixes, inference, matmul."""
