#!/usr/bin/env bash
# Builds the drove wheel, installs it alone into a new virtual environment, runs a
# first line of Python and the `drove` command there, then installs pytest and runs
# the Python tests (arguments go to pytest). The wheel is built in the dev profile,
# which reuses what `cargo test --workspace` compiled; DROVE_WHEEL_PROFILE=release
# builds an optimized one.
set -euo pipefail
cd "$(dirname "$0")"
target=$(cd .. && pwd)/target
venv="$target/python-venv"
wheels="$target/wheels"

./build-wheel.sh "${DROVE_WHEEL_PROFILE:-dev}" "$wheels"
ls -l "$wheels"

# A new environment with the wheel alone: the first lines a user runs.
python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install -q "$wheels"/drove-*.whl
(cd "$target" && "$venv/bin/python" -c "import drove; s = drove.local(2); print(s.sql('select 1 as x').to_pandas())")
"$venv/bin/drove" --help >/dev/null

"$venv/bin/python" -m pip install -q pytest
# pytest, not `python -m pytest`: the latter would import the source tree's drove/,
# which lacks the native module, instead of the installed wheel.
"$venv/bin/pytest" -q -p no:cacheprovider tests "$@"
