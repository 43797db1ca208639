#!/bin/bash
# A/B ingest of two hub binaries with one load generator, interleaved
# (A then B for each case and round), each run on a fresh data directory.
# The hub is stopped by its own PID, so other hubs on the machine are left
# alone.
#
# usage: benches/scripts/ab.sh HUB_A HUB_B LOADGEN_BIN OUTDIR ROUNDS CASE...
#   CASE: conn64 (one status per request, 64 connections) or batch20 (20 per
#   request), both --messages 100000 --seconds 10.
set -u
A=$(realpath "$1"); B=$(realpath "$2"); LG=$(realpath "$3"); OUT=$4; ROUNDS=$5; shift 5
PORT=29431
mkdir -p "$OUT"
run() { # label hub case
  local d hubpid args
  d=$(mktemp -d /tmp/ab.XXXX)
  (cd "$d" && RUST_LOG=warn exec "$2" serve --bind 127.0.0.1:$PORT > "$d/hub.log" 2>&1) &
  hubpid=$!
  for _ in $(seq 1 300); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
  case $3 in
    conn64) args="--messages 100000 --seconds 10 --concurrency 64" ;;
    batch20) args="--messages 100000 --seconds 10 --concurrency 64 --per-request 20" ;;
  esac
  echo "### $1 $3: --url http://127.0.0.1:$PORT --hub-pid \$HUB $args" >> "$OUT/$1-$3.txt"
  "$LG" --url http://127.0.0.1:$PORT --data-dir "$d/.statushub" --hub-pid $hubpid $args >> "$OUT/$1-$3.txt" 2>&1
  kill $hubpid; wait $hubpid 2>/dev/null
  [ -s "$d/hub.log" ] && cp "$d/hub.log" "$OUT/$1-$3-hub.log"
  rm -rf "$d"
}
for round in $(seq 1 "$ROUNDS"); do
  for c in "$@"; do
    run A "$A" "$c"
    run B "$B" "$c"
  done
done
