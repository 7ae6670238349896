#!/usr/bin/env bash
# Usage rows into PostgreSQL as a replica writes them: a throwaway cluster (PostgreSQL's own
# binaries, `fsync=off` so that the disk is not what is measured), then `ccproxy-bench pg-rows`
# at batch sizes of 1, 64 and 512 rows (the writer thread's batches hold up to 512), each
# printing rows per second and the CPU per row of the client and of its database backend.
#
#   scripts/bench/pg-rows.sh [BENCH_BINARY] [ROWS]   (default target/release/ccproxy-bench,
#       20000 rows per batch size; needs PostgreSQL's initdb and postgres)
#
# Loopback only (the cluster listens on 127.0.0.1); run as root, the cluster runs as `postgres`.
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH=$(realpath "${1:-target/release/ccproxy-bench}")
ROWS=${2:-20000}
PG=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")
[ -x "$PG/initdb" ] || PG=$(dirname "$(command -v initdb)")
DIR=$(mktemp -d /tmp/ccproxy-pg-bench-XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown -R postgres: "$DIR"
as_pg "$PG/initdb" -D "$DIR/data" -U ccproxy --auth=trust -E UTF8 --no-sync --no-instructions >/dev/null
PORT=$((20000 + RANDOM % 20000))
as_pg "$PG/postgres" -D "$DIR/data" -p "$PORT" -k "$DIR" -c listen_addresses=127.0.0.1 \
  -c fsync=off >"$DIR/pg.log" 2>&1 &
PGPID=$!
trap 'kill $PGPID 2>/dev/null; wait $PGPID 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do
  "$PG/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.1
done
URL="postgres://ccproxy@127.0.0.1:$PORT/postgres"
# A first pass creates the schema and warms the cache; its figures are not kept.
"$BENCH" pg-rows --url "$URL" --rows 2000 --batch 64 >/dev/null
for batch in 1 64 512; do
  "$BENCH" pg-rows --url "$URL" --rows "$ROWS" --batch "$batch"
done
