#!/usr/bin/env bash
# Placeholder until the book exists: runs the data part of the pipeline on phantoms.
set -euo pipefail
kitsmsan phantoms --out data/phantoms --cases 4 --size 64 --seed 0
kitsmsan prepare --data data/phantoms --cache cache/phantoms
