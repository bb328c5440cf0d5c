# Set-up and everyday commands. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install materials run test test-gpu lint format clean

# Exact versions from constraints.txt, so a fresh install is the tested one.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

# data=materials reads four photos from the robosuite wheel; its dependencies (MuJoCo, ...) are not needed.
materials: install
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps robosuite==1.5.2

# The offline demo: train on real ELPV solar cells (CPU, <= 10 min of training) and print the results.
run: install
	$(BIN)/python -m anomaly_ae.run experiment=elpv_demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# pytest exits 5 when it collects no test; make treats any non-zero exit as a failure.
test: install lint
	$(BIN)/python -m pytest -q

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
