#!/usr/bin/env bash
# Builds drove's wheel with maturin, in cargo's profile PROFILE (dev or release), into
# the directory OUT: made if missing, and only the drove wheels built there before are
# removed. maturin lives in a virtual environment of its own under target/. Used by
# test.sh and by `cargo xtask bench`.
set -euo pipefail
profile=${1:?usage: build-wheel.sh PROFILE OUT}
out=${2:?usage: build-wheel.sh PROFILE OUT}
cd "$(dirname "$0")"
builder="$(cd .. && pwd)/target/python-build-venv"
if [ ! -x "$builder/bin/maturin" ]; then
  python3 -m venv "$builder"
  "$builder/bin/python" -m pip install -q "maturin>=1.8,<2"
fi
mkdir -p "$out"
rm -f "$out"/drove-*.whl
"$builder/bin/maturin" build --profile "$profile" --out "$out"
