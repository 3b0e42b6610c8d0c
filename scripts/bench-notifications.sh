#!/usr/bin/env bash
# Benchmarks the notifications service on PostgreSQL, next to PostgreSQL's
# single-row insert ceiling measured in the same run (docs/performance.md).
#
#   scripts/bench-notifications.sh            # needs PostgreSQL at 127.0.0.1:5432 (user postgres)
#
# Builds release binaries, starts atiende-notifications on a scratch
# database, trusting only the bench's test key, with live email going to the
# bench's own SMTP server; then runs pgbench and atiende-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/atiende-target}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
# The service reaches PostgreSQL over its Unix socket: sqlx does not set
# TCP_NODELAY, and over TCP each group commit's large INSERT waits ~40 ms for
# a delayed ACK (docs/performance.md). pgbench is measured both ways.
SOCKET_URL="${SOCKET_URL:-postgres://postgres@localhost/atiende_bench_notifications?host=/var/run/postgresql}"
DB=atiende_bench_notifications
DURATION="${DURATION:-10}"
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"

cargo build --release -q -p atiende-notifications -p atiende-bench

psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
"$BIN/atiende-bench" --write-test-jwks "$WORK/jwks.json" > /dev/null

echo "== PostgreSQL ceiling: one single-row INSERT per transaction (pgbench, 16 clients), over TCP then over the Unix socket"
psql "$PG/$DB" -qc "CREATE TABLE pgbench_rows (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL)"
echo "INSERT INTO pgbench_rows (payload) VALUES ('ntf_0123456789abcdef0123456789abcdef');" > "$WORK/insert.sql"
pgbench -n -c 16 -j 2 -T "$DURATION" -f "$WORK/insert.sql" "$PG/$DB" 2>/dev/null | grep -E "^tps|latency average"
pgbench -n -c 16 -j 2 -T "$DURATION" -f "$WORK/insert.sql" -h /var/run/postgresql -U postgres "$DB" 2>/dev/null | grep -E "^tps|latency average"

start_server() {
  ATIENDE_STORAGE__DATABASE_URL="$SOCKET_URL" \
  ATIENDE_STORAGE__MAX_CONNECTIONS=32 \
  ATIENDE_STORAGE__DATA_DIR="$WORK" \
  ATIENDE_GRPC__LISTEN_ADDR=127.0.0.1:50061 \
  ATIENDE_HTTP__LISTEN_ADDR=127.0.0.1:8061 \
  ATIENDE_AUTH__JWKS_FILE="$WORK/jwks.json" \
  ATIENDE_AUTH__ISSUER=https://identity.test.invalid \
  ATIENDE_AUTH__AUDIENCE=atiende \
  ATIENDE_EMAIL__SMTP_URL=smtp://127.0.0.1:2525 \
  ATIENDE_EMAIL__FROM_ADDRESS=bench@atiende.test \
  ATIENDE_EMAIL__MAX_CONNECTIONS=96 \
  ATIENDE_DELIVERY__CONCURRENCY=192 \
  ATIENDE_LIMITS__SENDS_PER_MINUTE=0 \
  ATIENDE_LIMITS__DAILY_EMAILS=0 \
  ATIENDE_TELEMETRY__LOG_FILTER=warn \
  ATIENDE_DELIVERY__ENABLED="${DELIVERY:-true}" \
    "$BIN/atiende-notifications" > "$WORK/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do
    grpc_ok=$("$BIN/atiende-bench" --target http://127.0.0.1:50061 --scenario health --duration 1 --warmup 0 --connections 1 --in-flight 1 2>/dev/null | grep -c "errors 0" || true)
    [ "$grpc_ok" = 1 ] && return 0
    sleep 0.2
  done
  echo "server did not start"; cat "$WORK/server.log"; exit 1
}
trap 'kill $SERVER 2>/dev/null || true' EXIT

fresh_db() {
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" 2>/dev/null
}

echo "== an API-only instance (delivery.enabled=false): health, then sends accepted and committed"
DELIVERY=false start_server
"$BIN/atiende-bench" --target http://127.0.0.1:50061 --scenario health --duration "$DURATION"
"$BIN/atiende-bench" --target http://127.0.0.1:50061 --test-key --scenario notifications.send-email --duration "$DURATION" --smtp-sink 127.0.0.1:2525
kill $SERVER; wait $SERVER 2>/dev/null || true

for RATE in 0 1000 500; do
  fresh_db
  DELIVERY=true start_server
  echo "== one instance accepting and delivering to the bench's SMTP server, sends paced at ${RATE}/s (0: as fast as possible)"
  "$BIN/atiende-bench" --target http://127.0.0.1:50061 --test-key --scenario notifications.delivery --duration "$DURATION" --rate "$RATE" --smtp-sink 127.0.0.1:2525
  kill $SERVER; wait $SERVER 2>/dev/null || true
done
