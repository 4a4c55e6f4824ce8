# `make demo` and `make test` create .venv and install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: 2.13.0 resolves to the CPU build here, so nothing later pulls a CUDA build
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/genlab train ddpm --dataset digits --image-size 16 --dim-mults 1,2,4 --num-res-blocks 1 --steps 600 \
		--lr 2e-3 --warmup-steps 50 --sample-every 300

# one worker process per core (pytest-xdist), a module's tests in one worker so its fixtures are built once
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadscope

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) benchmarks/ddpm_train.py

clean:
	rm -rf $(VENV) .pytest_cache
