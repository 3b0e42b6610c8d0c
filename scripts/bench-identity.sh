#!/usr/bin/env bash
# Benchmarks the citizen sign-in (docs/performance.md): the raw argon2id
# hash rate of this machine at the service's parameters, then the login
# pages' credential check and the code exchange against `atiende dev`
# (SQLite), each at full speed and paced at half.
#
#   scripts/bench-identity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/atiende-target}"
DURATION="${DURATION:-10}"
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"

cargo build --release -q -p atiende -p atiende-bench

ATIENDE_TELEMETRY__LOG_FILTER=warn "$BIN/atiende" dev --data-dir "$WORK" \
  --grpc-addr 127.0.0.1:50091 --http-addr 127.0.0.1:8091 > "$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  [ -f "$WORK/dev-credentials.json" ] && break
  sleep 0.2
done
sleep 1

echo "== raw argon2id (m=19 MiB, t=2, p=1) on every core, no server"
# Reports are printed from a variable, not with `tee /dev/stderr`: tee
# reopens the file that stderr is redirected to and truncates it.
report=$("$BIN/atiende-bench" --scenario identity.argon2-raw --duration "$DURATION" --warmup 2)
echo "$report"
raw=$(echo "$report" | awk '{print $4}')
cores=$(nproc)

bench() {
  "$BIN/atiende-bench" --target http://127.0.0.1:50091 --http-target http://127.0.0.1:8091 \
    --credentials "$WORK/dev-credentials.json" --duration "$DURATION" "$@"
}
for scenario in identity.password-login identity.code-exchange; do
  echo "== $scenario"
  in_flight=4
  [ "$scenario" = identity.code-exchange ] && in_flight=16
  report=$(bench --scenario "$scenario" --connections 1 --in-flight "$in_flight")
  echo "$report"
  max=$(echo "$report" | awk '/ max /{print $3}')
  if [ "$scenario" = identity.password-login ]; then
    awk -v max="$max" -v raw="$raw" -v cores="$cores" 'BEGIN {
      printf "   = %.1f logins/s per core (target >= 60), %.1f %% of the raw argon2id rate (target >= 80)\n",
        max / cores, 100 * max / raw }'
  fi
  half=$(( ${max%.*} / 2 ))
  bench --scenario "$scenario" --connections 1 --in-flight "$in_flight" --rate "$half" | tail -1
done
