# Everything sets itself up: a fresh clone needs only python3 (>= 3.11), Go and make.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export FINETUNE_CACHE ?= $(HOME)/.cache/finetune-operator

.PHONY: help venv tools crds lint test test-unit soak demo demo-kind e2e-kind bench-gpu bench-eval bench plugin-dist clean

help:
	@echo "make test   - lint, unit and integration tests (builds the local control plane on first run)"
	@echo "make demo   - a FineTuneJob end to end on the local control plane"
	@echo "make plugin-dist - the kubectl-finetune krew archive and manifest in dist/"
	@echo "make soak   - long variants (operator crashes, pod loss, store outages, a 200 MB document; ~35 min)"
	@echo "make demo-kind - the same on kind with the real images (needs Docker and kind)"
	@echo "make lint   - ruff, mypy --strict on operator/, import-layer contracts, generated-file checks"
	@echo "make crds   - regenerate crds/ and docs/api.md from the API models"
	@echo "make bench-gpu - QLoRA throughput/memory vs a plain HF baseline (GPU; --tiny on CPU)"
	@echo "make bench-eval - batched vs one-at-a-time generation (CPU)"
	@echo "make bench  - every CPU benchmark: trainer throughput, eval generation, pod start, operator scale"

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[operator,trainer,dev]'
	touch $@

venv: $(VENV)/.installed

tools:
	bash hack/build-tools.sh

crds: venv
	$(PY) -m finetune_operator.crdgen
	$(PY) -m finetune_operator.apidocs

lint: venv
	$(VENV)/bin/ruff check operator trainer_image hack tests bench
	$(VENV)/bin/ruff format --check operator trainer_image hack tests bench
	$(VENV)/bin/mypy operator/finetune_operator
	$(VENV)/bin/lint-imports
	$(PY) -m finetune_operator.crdgen --check
	$(PY) -m finetune_operator.apidocs --check
	$(PY) -m finetune_operator.plugin.advice --check

test-unit: venv
	$(PY) -m pytest tests/unit tests/trainer/test_data.py

test: venv tools lint
	$(PY) -m pytest --durations=30

soak: venv tools
	$(PY) -m pytest -m soak -s tests/reliability tests/trainer/test_build_dataset.py

demo: venv tools
	$(PY) hack/demo.py

demo-kind: venv
	bash hack/kind-demo.sh

e2e-kind: demo-kind

bench-gpu: venv
	$(PY) bench/gpu_qlora.py $(if $(shell $(PY) -c 'import torch; print(torch.cuda.is_available() or "")'),,--tiny)

bench-eval: venv
	$(PY) bench/eval_generation.py

# The CPU benchmarks (about 9 minutes here); each appends a dated row with its command to docs/benchmarks.md.
bench: venv tools
	$(PY) bench/gpu_qlora.py --tiny --variants baseline,ours,ours-all-logits,ours-plain,ours-unpacked --steps 40 --rounds 5
	$(PY) bench/trainer_switch.py --switch loss-positions
	$(PY) bench/trainer_switch.py --switch fast-paths
	$(PY) bench/trainer_switch.py --switch reentrant-checkpointing
	$(PY) bench/eval_generation.py
	$(PY) bench/pod_start.py
	$(PY) bench/operator_scale.py --jobs 100
	$(PY) bench/operator_scale.py --jobs 1000 --suspended
	$(PY) bench/operator_scale.py --jobs 1000 --suspended --rate 30
	$(PY) bench/kube_writes.py
	$(PY) bench/dataset_build.py

plugin-dist: venv
	bash hack/plugin-dist.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
