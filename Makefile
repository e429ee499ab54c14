# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make book   - builds the book on synthetic phantoms, on CPU (runs every notebook with papermill)
#   make test   - runs the test suite
# Each creates the virtualenv it needs ($(VENV)) when it is missing or out of date.

VENV   ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kitsmsan-installed

.PHONY: venv book test test-fast nbval lint format-check check-notebooks lab reproduce bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

book: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_WAIT_POLICY=PASSIVE bash scripts/build_book.sh

# lint (ruff check, import contracts), the notebook pairs, the unit/CLI/notebook/browser tests, then
# nbval over the notebooks (each cell must run)
test: $(STAMP) check-notebooks
	$(MAKE) --no-print-directory lint
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory nbval

nbval: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider --nbval-lax notebooks/

# ruff's rule set and the import-linter contracts are in pyproject.toml (see CONTRIBUTING.md)
LINT_PATHS ?= kitsmsan tests scripts notebooks

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

format-check: $(STAMP)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# every notebooks/NN_name.md in sync with its .ipynb, no outputs committed, the install cell of _config.yml
check-notebooks: $(STAMP)
	$(PY) scripts/check_notebooks.py

# JupyterLab on notebooks/ (jupytext pairs each .md with its .ipynb; see CONTRIBUTING.md, Notebooks)
lab: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/jupyter lab --notebook-dir=notebooks

test-fast: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q -m "not slow and not browser"

reproduce: $(STAMP)
	$(VENV)/bin/kitsmsan reproduce --preset smoke

bench: $(STAMP)
	$(VENV)/bin/kitsmsan bench all

clean:
	rm -rf _build runs/book data/book book/generated
