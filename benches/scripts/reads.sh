#!/bin/bash
# Times the read side of issue 11 on a 1,000,000-message campaign: filtered
# pages (first and deep) and full exports (CSV, NDJSON) with the hub's peak
# anonymous memory (RssAnon, sampled every 10 ms).
#
# usage: benches/scripts/reads.sh HUB_BIN sqlite|postgres [MESSAGES]
#   HUB_BIN: target/release/statushub. PostgreSQL needs psql and the server
#   on 127.0.0.1:5432 (user postgres, trust); a database sh_reads_<random>
#   is created and dropped.
#
# The campaign is seeded in SQL, in one statement (the registration API
# would take minutes, and this measures reads): a tenth pending, a tenth
# sent, three tenths delivered, four tenths read, a tenth failed (two error
# codes), recipients like +1 and 11 digits; a second campaign of the same
# size sits beside it, so every query has to stay within its campaign.
set -u
HUB=$1; BACKEND=$2; N=${3:-1000000}
PORT=28441; BASE=http://127.0.0.1:$PORT; ADMIN=bench-admin-token-0123456789
D=$(mktemp -d /tmp/reads.XXXX)
case $BACKEND in
  sqlite) URL=sqlite://$D/hub.db ;;
  postgres) DB=sh_reads_$RANDOM; psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $DB" postgres
            URL=postgres://postgres@127.0.0.1/$DB ;;
esac
export DATABASE_URL=$URL STATUSHUB_ADMIN_TOKEN=$ADMIN STATUSHUB_DATA_DIR=$D/data RUST_LOG=warn
$HUB serve --bind 127.0.0.1:$PORT > $D/hub.log 2>&1 &
HUBPID=$!
trap 'kill $HUBPID 2>/dev/null; wait $HUBPID 2>/dev/null; [ $BACKEND = postgres ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $DB WITH (FORCE)" postgres; rm -rf $D' EXIT
for i in $(seq 1 300); do curl -sf $BASE/readyz >/dev/null && break; sleep 0.1; done
for c in big neighbour; do
  curl -sf -H "authorization: Bearer $ADMIN" $BASE/api/v1/messages \
    -d "{\"tenant_id\":\"t\",\"campaign_id\":\"$c\",\"channel\":\"whatsapp\",\"provider_message_id\":\"wamid.$c\"}" >/dev/null
done
sql() { case $BACKEND in
  sqlite) sqlite3 $D/hub.db "$1" ;;
  postgres) psql -q -t -A -h 127.0.0.1 -U postgres -c "$1" $DB ;;
esac; }
seed() { # campaign_pk
  local numbers from
  case $BACKEND in
    sqlite) numbers="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $N)"; from=n ;;
    postgres) numbers=""; from="generate_series(1, $N) AS n(i)" ;;
  esac
  sql "$numbers INSERT INTO messages (campaign_pk, channel, provider_message_id, recipient, seen, status,
         sent_at, delivered_at, read_at, failed_at, error_code, error_title, created_at, updated_at)
       SELECT $1, 'whatsapp', 'wamid.seed.$1.' || i, '+1' || (10000000000 + i),
         CASE WHEN i % 10 = 0 THEN 0 WHEN i % 10 = 1 THEN 1 WHEN i % 10 < 5 THEN 3 WHEN i % 10 < 9 THEN 7 ELSE 32 END,
         CASE WHEN i % 10 = 0 THEN 'pending' WHEN i % 10 = 1 THEN 'sent' WHEN i % 10 < 5 THEN 'delivered'
              WHEN i % 10 < 9 THEN 'read' ELSE 'failed' END,
         CASE WHEN i % 10 BETWEEN 1 AND 8 THEN 1700000000000 + i END,
         CASE WHEN i % 10 BETWEEN 2 AND 8 THEN 1700000001000 + i END,
         CASE WHEN i % 10 BETWEEN 5 AND 8 THEN 1700000002000 + i END,
         CASE WHEN i % 10 = 9 THEN 1700000003000 + i END,
         CASE WHEN i % 10 = 9 THEN (CASE WHEN i % 20 = 9 THEN '131026' ELSE '131047' END) END,
         CASE WHEN i % 10 = 9 THEN 'Message undeliverable' END,
         1700000000000, 1700000000000 + i
       FROM $from"
}
T0=$(date +%s.%N)
seed $(sql "SELECT id FROM campaigns WHERE campaign_id = 'big'")
seed $(sql "SELECT id FROM campaigns WHERE campaign_id = 'neighbour'")
[ $BACKEND = postgres ] && sql "VACUUM ANALYZE messages"
echo "seeded 2 x $N messages in $(echo "$(date +%s.%N) - $T0" | bc) s"

# A page: the median and p90 of 30 requests, in ms.
page() { # label query
  local times=() next deep
  for i in $(seq 1 30); do
    times+=($(curl -s -o /dev/null -w '%{time_total}' -H "authorization: Bearer $ADMIN" "$BASE/api/v1/campaigns/big/messages?$2"))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v label="$1" '{a[NR]=$1*1000} END {printf "page %-55s p50 %6.2f ms  p90 %6.2f ms  (30 requests)\n", label, a[int(NR*0.5)], a[int(NR*0.9)]}'
}
# A cursor half-way through the campaign: the id of its 500,000th message.
MID=$(sql "SELECT id FROM messages WHERE campaign_pk = (SELECT id FROM campaigns WHERE campaign_id = 'big') ORDER BY id LIMIT 1 OFFSET $((N / 2))")
CURSOR=$(printf 'm1:%s' $MID | base64 | tr '+/' '-_' | tr -d '=')
page "limit=100 (no filter)" "limit=100"
page "seen=delivered&not_seen=read&limit=100" "seen=delivered&not_seen=read&limit=100"
page "seen=delivered&not_seen=read&limit=100, from the middle" "seen=delivered&not_seen=read&limit=100&cursor=$CURSOR"
page "status=failed&failure_code=131026&limit=100" "status=failed&failure_code=131026&limit=100"
page "status=read&limit=1000" "status=read&limit=1000"
page "updated_since=(last 1%)&limit=100" "updated_since=2023-11-14T22:29:50Z&limit=100"

# An export: time, bytes, lines, peak RssAnon growth.
export_run() { # label accept query
  local base_kib peak=0 v
  base_kib=$(awk '/RssAnon/ {print $2}' /proc/$HUBPID/status)
  ( while kill -0 $HUBPID 2>/dev/null; do awk '/RssAnon/ {print $2}' /proc/$HUBPID/status; sleep 0.01; done ) > $D/rss.txt &
  local sampler=$!
  local out
  out=$(curl -s -H "authorization: Bearer $ADMIN" -H "accept: $2" "$BASE/api/v1/campaigns/big/messages?$3" \
        -w '%{time_total} %{size_download}' -o $D/export.out)
  kill $sampler; wait $sampler 2>/dev/null
  peak=$(sort -n $D/rss.txt | tail -1)
  set -- "$1" $out
  printf 'export %-40s %8.2f s  %6.1f MB  %8d lines  %6.1f MB/s  RssAnon %d KiB before, peak +%d KiB\n' \
    "$1" "$2" "$(echo "$3 / 1000000" | bc -l)" "$(wc -l < $D/export.out)" "$(echo "$3 / 1000000 / $2" | bc -l)" $base_kib $((peak - base_kib))
}
export_run "csv, whole campaign" text/csv ""
export_run "ndjson, whole campaign" application/x-ndjson ""
export_run "csv, seen=delivered&not_seen=read" text/csv "seen=delivered&not_seen=read"
