#!/usr/bin/env bash
# An all-to-all shuffle at 500 by 500 partitions against the same query at 8 by 8:
# a two-level group-by over TPC-H lineitem on `drove local` (2 workers x 2 slots), so
# the second exchange has 500 map tasks writing 500 blocks each. Prints each run's
# seconds, how many Flight calls the workers served (their do_get debug lines), and
# the answer, which must be the same at both widths.
#
#   bench/shuffle/run.sh DROVE_BINARY TPCH_DIR [RUNS]
#
# TPCH_DIR comes from `drove gen tpch --scale 1 --out DIR`; use a release binary
# (cargo build --release -p drove).
set -euo pipefail

if [ $# -lt 2 ] || [ ! -x "$1" ] || [ ! -d "$2" ]; then
  echo "usage: $0 DROVE_BINARY TPCH_DIR [RUNS]   (TPCH_DIR from 'drove gen tpch --scale 1 --out DIR')" >&2
  exit 2
fi
bin=$1
data=$2
runs=${3:-3}
work=$(mktemp -d)
RUST_LOG=warn,drove_worker::flight=debug "$bin" local --workers 2 --slots 2 \
  --bind 127.0.0.1:0 --http 127.0.0.1:0 --work-dir "$work/spill" >"$work/out" 2>"$work/log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 600); do
  grep -q '^coordinator:' "$work/out" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; exit 1; }
  sleep 0.1
done
coordinator=$(sed -n 's/^coordinator: *//p' "$work/out")
if [ -z "$coordinator" ]; then
  echo "error: drove local was not ready in 60 s" >&2
  exit 1
fi

query="SELECT count(*), sum(s) FROM (SELECT l_suppkey, sum(q) AS s FROM (SELECT l_orderkey, l_suppkey, sum(l_quantity) AS q FROM lineitem GROUP BY l_orderkey, l_suppkey) a GROUP BY l_suppkey) b"
for partitions in 8 500; do
  for run in $(seq "$runs"); do
    calls_before=$(grep -c 'do_get' "$work/log" || true)
    start=$(date +%s%N)
    "$bin" sql --coordinator "$coordinator" --tpch "$data" --no-progress \
      -e "SET datafusion.execution.target_partitions = $partitions; $query" >"$work/result"
    end=$(date +%s%N)
    calls_after=$(grep -c 'do_get' "$work/log" || true)
    answer=$(grep -E '^\| *[0-9]' "$work/result" | tr -s ' ')
    echo "partitions=$partitions run=$run ms=$(((end - start) / 1000000)) flight_calls=$((calls_after - calls_before)) answer=$answer"
  done
done
