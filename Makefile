# chimap: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEMO_OUT ?= demo_output

.PHONY: demo test venv install-demo install-test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)

install-demo: $(PY)
	$(PIP) install --quiet -e ".[sim]"

install-test: $(PY)
	$(PIP) install --quiet -e ".[sim,test]"

## demo: create .venv, install chimap and simulate a head (chi map, inputs, ground truth, report)
demo: install-demo
	$(VENV)/bin/chimap demo -o $(DEMO_OUT)

## test: create .venv if missing, install with the test extras and run the whole suite
test: install-test
	$(PY) -m pytest -q

bench: install-test
	$(PY) benchmarks/bench_simulate_head.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache build src/*.egg-info
