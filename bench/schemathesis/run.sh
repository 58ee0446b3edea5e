#!/usr/bin/env bash
# Property-tests the coordinator's REST API with schemathesis: every operation of the
# OpenAPI document at /api/v1/openapi.json, all checks (schema conformance of every
# answer, status codes, content types, 5xx, negative data rejected, methods not
# allowed...), with a fixed seed so that a run can be replayed.
#
#   bench/schemathesis/run.sh [DROVE_BINARY]        (default ./target/debug/drove)
#
# DROVE_SCHEMATHESIS_EXAMPLES   cases per operation and phase (default 50: CI's run)
# DROVE_SCHEMATHESIS_SEED       the seed (default 20261202)
# DROVE_SCHEMATHESIS_TIMEOUT_SECS  the most the schemathesis run may take (default 900)
#
# A longer run on demand: DROVE_SCHEMATHESIS_EXAMPLES=2000 bench/schemathesis/run.sh
#
# Starts `drove local` on free loopback ports, submits a few jobs (succeeded, failed,
# detached, a cached table) so that the job endpoints have data, and stops the cluster
# on exit. Schemathesis is installed from PyPI into target/schemathesis-venv. Exits
# non-zero on any failure, if no case ran, or if the cluster died during the run.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
examples="${DROVE_SCHEMATHESIS_EXAMPLES:-50}"
seed="${DROVE_SCHEMATHESIS_SEED:-20261202}"
timeout_secs="${DROVE_SCHEMATHESIS_TIMEOUT_SECS:-900}"

binary="${1:-./target/debug/drove}"
if [ ! -x "$binary" ]; then
  echo "error: '$binary' is not an executable drove binary; build it with 'cargo build -p drove'" >&2
  exit 2
fi
binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"
cd "$(dirname "$0")/../.."
root="$(pwd)"

venv="$root/target/schemathesis-venv"
st="$venv/bin/st"
if ! "$st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$st" --version

out="$root/target/schemathesis"
mkdir -p "$out"
work="$(mktemp -d)"
cluster_pid=""
stop_cluster() {
  if [ -n "$cluster_pid" ] && kill -0 "$cluster_pid" 2>/dev/null; then
    kill -TERM "$cluster_pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$cluster_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$cluster_pid" 2>/dev/null || true
    wait "$cluster_pid" 2>/dev/null || true
  fi
  cluster_pid=""
  rm -rf "$work"
}
trap stop_cluster EXIT

echo "== starting drove local"
: >"$work/cluster.out" # the background job opens it later
"$binary" local --workers 2 --bind 127.0.0.1:0 --http 127.0.0.1:0 \
  >"$work/cluster.out" 2>"$out/cluster.log" &
cluster_pid=$!
coordinator=""
http=""
for _ in $(seq 600); do
  coordinator="$(sed -n 's/^coordinator: *//p' "$work/cluster.out")"
  http="$(sed -n 's/^http: *//p' "$work/cluster.out")"
  if [ -n "$coordinator" ] && [ -n "$http" ]; then break; fi
  if ! kill -0 "$cluster_pid" 2>/dev/null; then
    echo "error: drove local exited before it was ready; its log:" >&2
    cat "$work/cluster.out" "$out/cluster.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$coordinator" ] || [ -z "$http" ]; then
  echo "error: drove local printed no coordinator and http address in 60 s" >&2
  exit 1
fi
echo "coordinator $coordinator, http $http"

echo "== submitting jobs"
sql() { "$binary" sql --coordinator "$coordinator" --no-progress "$@" >/dev/null; }
sql -e "SELECT 1"
sql -e "SELECT x % 3 AS k, count(*) FROM (VALUES (1), (2), (3), (4)) t(x) GROUP BY k ORDER BY k"
sql -e "CACHE TABLE small AS SELECT x FROM (VALUES (1), (2), (3)) t(x)"
sql -e "SELECT sum(x) FROM small"
sql --detach -e "SELECT 2"
if sql -e "SELECT 1 / 0" 2>/dev/null; then
  echo "error: SELECT 1 / 0 succeeded; it was meant to leave a failed job" >&2
  exit 1
fi

echo "== schemathesis: seed $seed, $examples examples per operation"
start=$(date +%s)
status=0
# Its cwd is a scratch directory: Hypothesis writes a .hypothesis folder there.
(cd "$work" && timeout "$timeout_secs" "$st" run "$http/api/v1/openapi.json" \
  --checks all \
  --seed "$seed" \
  --max-examples "$examples" \
  --generation-database none \
  --request-timeout 10 \
  --no-color \
  --report junit --report-junit-path "$out/junit.xml") 2>&1 | tee "$out/run.log" || status=$?
elapsed=$(($(date +%s) - start))

cases="$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$out/run.log" | tail -n 1)"
if ! kill -0 "$cluster_pid" 2>/dev/null; then
  echo "error: the cluster died during the run; its log is $out/cluster.log" >&2
  status=1
fi
if [ -z "$cases" ] || [ "$cases" -eq 0 ]; then
  echo "error: schemathesis ran no case" >&2
  status=1
fi
echo "schemathesis: ${cases:-0} cases ran in ${elapsed} s (seed $seed, --max-examples $examples); exit $status"
echo "replay with: DROVE_SCHEMATHESIS_SEED=$seed DROVE_SCHEMATHESIS_EXAMPLES=$examples $0 $binary"
exit "$status"
