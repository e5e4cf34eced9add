# The two commands of the README. Each builds .venv first when it is missing or out of date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgekit-installed
EXTRAS ?= dev,tflite
QUICKSTART_OUT ?= edgekit-quickstart

.PHONY: quickstart test lint bench venv clean

quickstart: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/edgekit quickstart --out $(QUICKSTART_OUT) --force

test: $(STAMP)
	-@sh scripts/ensure-sshd.sh
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check edgekit tests benchmarks

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/ort_int8_vs_fp32.py

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[$(EXTRAS)]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) $(QUICKSTART_OUT)
