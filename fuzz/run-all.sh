#!/usr/bin/env bash
# Runs every libFuzzer target for SECONDS each (default 60), from the seed corpus of
# real encodings, and prints the executions each made. On demand; see README.md.
#
#   fuzz/run-all.sh [SECONDS] [extra cargo-fuzz build flags, e.g. --dev or -s none]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: fuzz/run-all.sh [SECONDS] [cargo-fuzz build flags]: SECONDS must be a positive whole number, not '$seconds'" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: install it with 'cargo install cargo-fuzz'" >&2
  exit 2
fi

echo "== seed corpus: real encodings, in fuzz/corpus/<target>/"
DROVE_FUZZ_CORPUS_OUT="$PWD/fuzz/corpus" DROVE_FUZZ_ITERATIONS=0 \
  cargo test -q -p drove-exec --test it fuzz_network_decoders

# cargo-fuzz passes nightly-only flags to rustc: a nightly toolchain if there is one,
# else the stable one with RUSTC_BOOTSTRAP (only here: cargo fingerprints it, so the
# test above would rebuild everything).
fuzz=(cargo fuzz)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
fi

echo "== build"
(cd fuzz && "${fuzz[@]}" build "$@")

logs="$(mktemp -d)"
failed=0
for target in $(cd fuzz && "${fuzz[@]}" list); do
  echo "== $target, ${seconds} s"
  if (cd fuzz && "${fuzz[@]}" run "$@" "$target" -- -max_total_time="$seconds" -print_final_stats=1) \
    >"$logs/$target.log" 2>&1; then
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$target.log" | grep -o '[0-9]*$' || echo '?')"
    echo "$target: $runs executions, no crash"
  else
    failed=1
    echo "$target: FAILED; the log is $logs/$target.log, the input under fuzz/artifacts/$target/"
    tail -30 "$logs/$target.log"
  fi
done
exit "$failed"
