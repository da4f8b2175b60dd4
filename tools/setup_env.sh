#!/usr/bin/env bash
# Creates the project's virtualenv and installs the package with its test extra.
# Usage: tools/setup_env.sh [python] [venv-dir]. Safe to run again.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
cd "$(dirname "$0")/.."

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup_env: $python is missing or older than Python 3.11" >&2
  exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1; then
  echo "setup_env: installing python3-venv" >&2
  apt-get update -qq && apt-get install -y -qq python3-venv
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[test]'
"$venv/bin/python" -c 'import jax, flax, optax, orbax.checkpoint, transformers, torch, grain; print("setup_env: ok, jax", jax.__version__, "torch", torch.__version__)'
