# neu10: every target sets up its own virtual environment first, so a fresh
# machine needs only python3 (>= 3.11) and make.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
NEU10   = $(VENV)/bin/neu10
STAMP   = $(VENV)/.installed-stamp

.PHONY: install test test-all test-fullsize demo experiment spec bench verilog verilog-tpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

## Default test run: correctness tests (long runs are marked `slow` and opt-in), one
## worker per core.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal

## Everything but the full-size models on Verilator, including slow sweeps and fuzzing.
test-all: $(STAMP)
	$(PY) -m pytest -q -m 'not fullsize' -n auto --dist worksteal

## One inference of ResNet-50 and of BERT-base on Verilator, bit-exact (about an hour).
test-fullsize: $(STAMP)
	$(PY) -m pytest -q -m fullsize -n auto --dist worksteal

## The main job: a two-tenant demo.
demo: $(STAMP)
	$(NEU10) demo

## The serving experiment (harvest vs static, temporal, v10): reports/quick/summary.md.
experiment: $(STAMP)
	$(NEU10) experiment quick

## Performance figures (printed; tracked from run to run with `neu10 bench --json`).
bench: $(STAMP)
	$(NEU10) bench

## The pNPU (default config) as Verilog, linted with verilator -Wall (waivers: hw/lint_waivers.vlt).
verilog: $(STAMP)
	mkdir -p build
	$(NEU10) verilog -o build/neu10_npu.v --lint

## The TPU-like preset (128x128 arrays): slow, opt-in.
verilog-tpu: $(STAMP)
	mkdir -p build
	$(NEU10) verilog --config tpu -o build/neu10_npu_tpu.v

## Regenerate isa/SPEC.md from the Python definitions of NeuISA.
spec: $(STAMP)
	$(NEU10) spec -o isa/SPEC.md

clean:
	rm -rf build reports .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
