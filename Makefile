# varlib: every target sets up what it needs (virtual environment, package, data) and is idempotent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= quick
DEVICE  ?= auto
JOBS    ?= 1
PM     := $(PY) -m papermill --log-output -p profile $(PROFILE) -p device $(DEVICE)

.PHONY: scaling test reproduce lab data lint clean-cache clean-venv help
help:
	@echo "make scaling    # the main job: notebooks/04_scaling.ipynb (PROFILE=$(PROFILE))"
	@echo "make test       # the test suite"
	@echo "make reproduce  # every notebook, their models trained first (PROFILE=smoke|quick|full, JOBS=$(JOBS) at once)"
	@echo "make lab        # JupyterLab on notebooks/"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $@

data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ -z "$$VARLIB_DATA" ] \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null \
	  || echo "apt-get could not install dataset-fashion-mnist; varlib will look in \$$VARLIB_DATA or download"; fi

scaling: $(VENV)/.installed data
	$(PM) notebooks/04_scaling.ipynb $(VENV)/out-04_scaling.ipynb

test: $(VENV)/.installed data
	$(PY) -m ruff check varlib tests benchmarks scripts
	$(PY) -m pytest -q

reproduce: $(VENV)/.installed data
	$(PY) -m varlib.runner $(PROFILE) --device $(DEVICE) --jobs $(JOBS) --out . --logs $(VENV)/study-logs

lab: $(VENV)/.installed data
	$(VENV)/bin/jupyter lab notebooks/

lint: $(VENV)/.installed
	$(PY) -m ruff check varlib tests benchmarks scripts

clean-cache:
	rm -rf "$${VARLIB_CACHE:-$$HOME/.cache/varlib}"

clean-venv:
	rm -rf $(VENV)
