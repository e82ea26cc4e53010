# Two commands a fresh machine needs: `make demo` and `make test`. Each builds .venv with pip when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot]'
	touch $(STAMP)

venv: $(STAMP)

# the main job at demo size (<= 15 min on 2 cores), from the released teacher and base VLM
demo: $(STAMP)
	$(PY) -m experiments.reproduce --config=experiments/configs/reproduce.py:demo \
	  --workdir=out/reproduce_demo --cpu_devices=2

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m ""

bench: $(STAMP)
	@for f in $$(ls experiments/bench/*.py | grep -v __init__); do \
	  m=$$(echo $$f | sed 's|/|.|g; s|\.py$$||'); \
	  echo "# $$m" >&2; $(PY) -m $$m || exit 1; \
	done

clean:
	rm -rf $(VENV) build *.egg-info
