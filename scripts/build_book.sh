#!/usr/bin/env bash
# Build the kitsmsan book from scratch on CPU (synthetic phantoms, smoke parameters).
#
#   scripts/build_book.sh [--reuse] [--skip-notebooks]
#
# 1. every notebook of scripts/notebook_params.json executed with papermill into book/generated/
#    (the training notebook once per variant; the notebooks create their phantom data themselves,
#    through kitsmsan.reproduce.make_data; --reuse skips outputs already up to date,
#    --skip-notebooks runs none and builds with whatever book/generated/ holds)
# 2. the Markdown snippets the prose pages include (fragments, reliability tally, benchmark JSON,
#    statistics CSVs, API and CLI reference)
# 3. the widget JavaScript (npm, once) so widgets render offline
# 4. jupyter-book build -W -n --keep-going . (warnings are errors; output in _build/html)
# KITSMSAN_BOOK_PARAMS=other.json runs the notebooks with another list of runs (same outputs), e.g.
# smoke=false on KiTS19 on a GPU. Prints the wall time of each step and the total.
# Target: <= 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."

reuse=()
run_notebooks=1
for arg in "$@"; do
  case "$arg" in
    --reuse) reuse=(--reuse) ;;
    --skip-notebooks) run_notebooks=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build_book.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python}"
t0=$SECONDS
step() { printf '\n== %s  [%ds]\n' "$1" "$((SECONDS - t0))"; }

step "1/4 notebooks (papermill)"
if (( run_notebooks )); then
  "$PYTHON" scripts/book_tools.py run-notebooks "${reuse[@]}"
else
  echo "skipped (--skip-notebooks)"
fi

step "2/4 tables and fragments"
"$PYTHON" scripts/book_tools.py render

step "3/4 widget JavaScript"
bash scripts/fetch_widget_js.sh && bash scripts/fetch_mathjax.sh

step "4/4 jupyter-book build"
# --all: a full rebuild, so warnings of unchanged pages are reported again (and fail -W)
jupyter-book build --all -W -n --keep-going .

printf '\nbook built in %d s: %s\n' "$((SECONDS - t0))" "_build/html/index.html"
