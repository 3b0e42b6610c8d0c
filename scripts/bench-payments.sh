#!/usr/bin/env bash
# Benchmarks the payments service on PostgreSQL, next to PostgreSQL's
# single-row insert ceiling measured in the same run (docs/performance.md).
#
#   scripts/bench-payments.sh            # needs PostgreSQL at 127.0.0.1:5432 (user postgres)
#   RATE=965 PAYMENTS_BIN=/tmp/old-atiende-payments scripts/bench-payments.sh
#
# Builds release binaries, starts atiende-payments on a scratch database,
# trusting only the bench's test key, runs pgbench and atiende-bench: each
# scenario at full speed, then paced at half of that, each run followed by
# the WAL PostgreSQL wrote per payment. With RATE, each
# scenario runs only paced at that rate, without pgbench, on a fresh
# database: to compare two builds (PAYMENTS_BIN, default the one just
# built) at one rate, run alternately.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/atiende-target}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
DB=atiende_bench_payments
# The service reaches PostgreSQL over its Unix socket: sqlx does not set
# TCP_NODELAY, and over TCP a statement written while the previous one is
# unacknowledged waits ~40 ms for a delayed ACK (docs/performance.md).
# pgbench's ceiling is measured both ways; the socket figure is the baseline.
SOCKET_URL="${SOCKET_URL:-postgres://postgres@localhost/$DB?host=/var/run/postgresql}"
SCENARIOS="${SCENARIOS:-payments.create payments.lifecycle}"
DURATION="${DURATION:-10}"
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"

cargo build --release -q -p atiende-payments -p atiende-bench

fresh_db() {
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" 2>/dev/null
}
fresh_db
"$BIN/atiende-bench" --write-test-jwks "$WORK/jwks.json" > /dev/null
PAYMENTS_BIN="${PAYMENTS_BIN:-$BIN/atiende-payments}"
RATE="${RATE:-}"

if [ -z "$RATE" ]; then
echo "== PostgreSQL ceiling: one single-row INSERT per transaction (pgbench, 16 clients), over TCP then over the Unix socket"
psql "$PG/$DB" -qc "CREATE TABLE pgbench_rows (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL)"
echo "INSERT INTO pgbench_rows (payload) VALUES ('pay_0123456789abcdef0123456789abcdef');" > "$WORK/insert.sql"
pgbench -n -c 16 -j 2 -T "$DURATION" -f "$WORK/insert.sql" "$PG/$DB" 2>/dev/null | grep -E "^tps|latency average"
pgbench -n -c 16 -j 2 -T "$DURATION" -f "$WORK/insert.sql" -h /var/run/postgresql -U postgres "$DB" 2>/dev/null | grep -E "^tps|latency average"
fi

start_server() {
  ATIENDE_STORAGE__DATABASE_URL="$SOCKET_URL" \
  ATIENDE_STORAGE__MAX_CONNECTIONS=32 \
  ATIENDE_STORAGE__DATA_DIR="$WORK" \
  ATIENDE_GRPC__LISTEN_ADDR=127.0.0.1:50063 \
  ATIENDE_HTTP__LISTEN_ADDR=127.0.0.1:8063 \
  ATIENDE_HTTP__PUBLIC_URL=http://127.0.0.1:8063 \
  ATIENDE_AUTH__JWKS_FILE="$WORK/jwks.json" \
  ATIENDE_AUTH__ISSUER=https://identity.test.invalid \
  ATIENDE_AUTH__AUDIENCE=atiende \
  ATIENDE_TELEMETRY__LOG_FILTER=warn \
    "$PAYMENTS_BIN" > "$WORK/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do
    ok=$("$BIN/atiende-bench" --target http://127.0.0.1:50063 --scenario health --duration 1 --warmup 0 --connections 1 --in-flight 1 2>/dev/null | grep -c "errors 0" || true)
    [ "$ok" = 1 ] && return 0
    sleep 0.2
  done
  echo "server did not start"; cat "$WORK/server.log"; exit 1
}
trap 'kill $SERVER 2>/dev/null || true' EXIT

bench() {
  "$BIN/atiende-bench" --target http://127.0.0.1:50063 --test-key --duration "$DURATION" "$@"
}

# The WAL that PostgreSQL wrote per payment (created or taken through its
# lifecycle, warm-up included) during a run: unlike latency, it does not
# move with whatever else the machine is doing, so it shows what a change
# to the schema or the statements saves.
wal_and_payments() {
  psql "$PG/$DB" -Atc "SELECT (SELECT wal_bytes FROM pg_stat_wal) || ' ' || (SELECT count(*) FROM payments)"
}
measured() {
  local before after
  before=$(wal_and_payments)
  bench "$@"
  after=$(wal_and_payments)
  echo "$before $after" | awk '$4 > $2 { printf "  PostgreSQL WAL per payment: %.0f bytes\n", ($3 - $1) / ($4 - $2) }'
}

start_server
echo "== atiende-payments on PostgreSQL (Unix socket)"
bench --scenario health
for scenario in $SCENARIOS; do
  if [ -n "$RATE" ]; then
    measured --scenario "$scenario" --rate "$RATE"
    continue
  fi
  # Printed from a variable, not with `tee /dev/stderr`: tee reopens the
  # file that stderr is redirected to and truncates it.
  report=$(measured --scenario "$scenario")
  echo "$report"
  max=$(echo "$report" | awk '/ max /{print int($3)}')
  measured --scenario "$scenario" --rate $((max / 2))
done
