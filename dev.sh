#!/usr/bin/env bash
# One-command setup for a fresh machine with Python 3.11+:
#   ./dev.sh cluster   set up (.venv) and run a local 3-node cluster on ports 8001-8003 (Ctrl-C stops it)
#   ./dev.sh test      set up (.venv) and run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

setup() {
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,native,bench]'
  # Compile the hot-path modules with mypyc: once, and again only after one of them changed (a minute or
  # two). Where that fails (no C compiler), nodes run the same modules as Python.
  .venv/bin/dynamostore native build --optional
}

case "${1:-}" in
  cluster)
    shift
    setup
    exec .venv/bin/dynamostore cluster --nodes 3 --data-dir ./data --base-port 8001 "$@"
    ;;
  test)
    shift
    setup
    # -p no:cacheprovider keeps a read-only checkout clean; exit 5 ("no tests ran") fails like any other error.
    exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
    ;;
  *)
    echo "usage: ./dev.sh cluster [--settings FILE] | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
