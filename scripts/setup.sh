#!/usr/bin/env bash
# Set up dermagan on a fresh clone: virtual env, install, raw HAM10000 data under data/.
# Idempotent: a second run only checks. Used by README's two commands and by CI.
#   HAM10000_SOURCE=/path/to/HAM10000 bash scripts/setup.sh   # re-point data.dvc at your own copy
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import dermagan, torch, torchvision, timm, mlflow, dvc, great_expectations, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "[setup] installing dermagan and its dependencies (first time: torch is large, a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"

if [ -n "${HAM10000_SOURCE:-}" ]; then
  echo "[setup] importing raw data from $HAM10000_SOURCE (rewrites data.dvc; commit it)"
  dvc import-url --force "$HAM10000_SOURCE" data
elif [ ! -f data/metadata.csv ]; then
  echo "[setup] fetching raw data tracked by data.dvc"
  dvc pull -q data.dvc 2>/dev/null || dvc update data.dvc
fi
for tracked in imports/*.dvc; do  # imports beside the raw data (acquisition sources, external test sets)
  [ -e "$tracked" ] || continue
  if [ ! -e "${tracked%.dvc}" ]; then
    echo "[setup] fetching ${tracked%.dvc}"
    dvc pull -q "$tracked" 2>/dev/null || dvc update -q "$tracked"
  fi
done
n_images=$(find data/images -maxdepth 1 -type f | wc -l)
echo "[setup] ready: data/ has $n_images images; run 'dvc repro' or 'python -m pytest'"
