#!/usr/bin/env bash
# Build the kitsmsan book from scratch on CPU (synthetic phantoms, smoke parameters).
#
#   scripts/build_book.sh [--reuse] [--skip-notebooks]
#
# 1. phantom data + cache (once; skipped when data/phantoms carries the stamp of the same command)
# 2. every notebook of scripts/notebook_params.json executed with papermill into book/generated/
#    (the training notebook once per variant; --reuse skips outputs already up to date,
#    --skip-notebooks runs none and builds with whatever book/generated/ holds)
# 3. the Markdown snippets the prose pages include (fragments, benchmark JSON, statistics CSVs)
# 4. the widget JavaScript (npm, once) so widgets render offline
# 5. jupyter-book build -W -n --keep-going . (warnings are errors; output in _build/html)
# Prints the wall time of each step and the total. Target: <= 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."

reuse=()
run_notebooks=1
for arg in "$@"; do
  case "$arg" in
    --reuse) reuse=(--reuse) ;;
    --skip-notebooks) run_notebooks=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "build_book.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python}"
t0=$SECONDS
step() { printf '\n== %s  [%ds]\n' "$1" "$((SECONDS - t0))"; }

step "1/5 phantom data"
# the phantom set the notebooks use (paths in scripts/notebook_params.json)
PHANTOM_CMD=(kitsmsan phantoms --out data/phantoms --cases 4 --size 64 --seed 0)
PREPARE_CMD=(kitsmsan prepare --data data/phantoms --cache cache/phantoms)
stamp="data/phantoms/.book-stamp"
want="${PHANTOM_CMD[*]} && ${PREPARE_CMD[*]}"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "data/phantoms and cache/phantoms are up to date"
else
  "${PHANTOM_CMD[@]}"
  "${PREPARE_CMD[@]}"
  printf '%s' "$want" > "$stamp"
fi

step "2/5 notebooks (papermill)"
if (( run_notebooks )); then
  "$PYTHON" scripts/book_tools.py run-notebooks "${reuse[@]}"
else
  echo "skipped (--skip-notebooks)"
fi

step "3/5 tables and fragments"
"$PYTHON" scripts/book_tools.py render

step "4/5 widget JavaScript"
bash scripts/fetch_widget_js.sh

step "5/5 jupyter-book build"
# --all: a full rebuild, so warnings of unchanged pages are reported again (and fail -W)
jupyter-book build --all -W -n --keep-going .

printf '\nbook built in %d s: %s\n' "$((SECONDS - t0))" "_build/html/index.html"
