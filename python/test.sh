#!/usr/bin/env bash
# Builds the drove wheel, installs it into a new virtual environment with pytest, and
# runs the Python tests (arguments go to pytest). The wheel is built in the dev
# profile, which reuses what `cargo test --workspace` compiled; set
# DROVE_WHEEL_PROFILE=release for an optimized one.
set -euo pipefail
cd "$(dirname "$0")"
target=$(cd .. && pwd)/target
venv="$target/python-venv"
wheels="$target/wheels"

python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install -q "maturin>=1.8,<2" pytest pandas
rm -rf "$wheels"
"$venv/bin/maturin" build --profile "${DROVE_WHEEL_PROFILE:-dev}" --out "$wheels"
"$venv/bin/python" -m pip install -q "$wheels"/drove-*.whl
ls -l "$wheels"
# pytest, not `python -m pytest`: the latter would import the source tree's drove/,
# which lacks the native module, instead of the installed wheel.
"$venv/bin/pytest" -q -p no:cacheprovider tests "$@"
