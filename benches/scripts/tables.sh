#!/bin/bash
# Runs the BENCHMARKS.md tables of issue #10, one case at a time, each on a
# fresh directory (or PostgreSQL database) and a fresh hub on 127.0.0.1:28431
# (and :28432), and keeps each run's output, with its command line, in OUTDIR.
#
# usage: benches/scripts/tables.sh HUB_BIN LOADGEN_BIN OUTDIR CASE...
#   HUB_BIN: target/release/statushub; LOADGEN_BIN: target/release/deps/loadgen-<hash>
#   CASE: conn1 conn16 conn64 conn256 batch20 shuffled duplicated size1k size10k
#         size100k size1m hot1 spread1000 hot20 spread1000x20
#         open25|open50|open75 (RATE=requests/s in the environment) ses sse1k
#         sse10k ready pg1 pg2 pg1x20 pg2x20 pgopen1 (RATE=) pgspread1 pgspread
#         pgsse1k pgsse1k2 pgsize100k pgsize1m pgses pgsse10k pgready
#   PostgreSQL cases need psql and the server on 127.0.0.1:5432 (user postgres).
#   Between runs it stops every hub listening on 127.0.0.1:28xxx.
HUB=$1; LG=$2; OUT=$3; shift 3
mkdir -p $OUT
start_hub() { # dir port [env...]
  local d=$1 port=$2; shift 2
  (cd $d && env "$@" RUST_LOG=warn $HUB serve --bind 127.0.0.1:$port > $d/hub-$port.log 2>&1) &
  sleep 0.2
  HUBPID=$(pgrep -f "serve --bind 127.0.0.1:$port" | head -1)
  for i in $(seq 1 300); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
}
stop_hubs() { pkill -f "serve --bind 127.0.0.1:28"; for i in $(seq 1 100); do pgrep -f "serve --bind 127.0.0.1:28" >/dev/null || break; sleep 0.2; done; sleep 0.5; }
metrics() { local d=$1 port=$2
  TOKEN=$(python3 -c "import json;print(json.load(open('$d/.statushub/secrets.json'))['STATUSHUB_ADMIN_TOKEN'])")
  curl -s -H "authorization: Bearer $TOKEN" http://127.0.0.1:$port/metrics | grep -E "^statushub_db_(batch_rows|commit_seconds)_(sum|count)" | tr '\n' ' '; echo; }
run() { # name env-string -- loadgen args
  local name=$1 envs=$2; shift 2
  local d=$(mktemp -d /tmp/bench.XXXX); mkdir -p $d/sns-certs
  start_hub $d 28431 SNS_CERT_DIR=$d/sns-certs $envs
  local args=(); for a in "$@"; do [ "$a" = SNSDIR ] && a=$d/sns-certs; args+=("$a"); done; set -- "${args[@]}"
  echo "### $name: $LG --url http://127.0.0.1:28431 --data-dir $d/.statushub --hub-pid \$HUB $*" > $OUT/$name.txt
  $LG --url http://127.0.0.1:28431 --data-dir $d/.statushub --hub-pid $HUBPID "$@" >> $OUT/$name.txt 2>&1
  metrics $d 28431 >> $OUT/$name.txt
  stop_hubs; rm -rf $d
  grep -E "^ingest|^sse|^rss|^memory|registered" $OUT/$name.txt | cut -c1-400
}
runpg() { # name instances -- loadgen args
  local name=$1 n=$2; shift 2
  local d=$(mktemp -d /tmp/bench.XXXX) db=sh_bench_$RANDOM; mkdir -p $d/sns-certs
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
  local urls="" pids=""
  start_hub $d 28431 SNS_CERT_DIR=$d/sns-certs DATABASE_URL=postgres://postgres@127.0.0.1/$db; urls=http://127.0.0.1:28431; pids=$HUBPID
  if [ $n = 2 ]; then start_hub $d 28432 SNS_CERT_DIR=$d/sns-certs DATABASE_URL=postgres://postgres@127.0.0.1/$db; urls=$urls,http://127.0.0.1:28432; pids=$pids,$HUBPID; fi
  local args=(); for a in "$@"; do [ "$a" = SNSDIR ] && a=$d/sns-certs; args+=("$a"); done; set -- "${args[@]}"
  echo "### $name: $LG --url $urls --data-dir $d/.statushub $*" > $OUT/$name.txt
  $LG --url $urls --data-dir $d/.statushub --hub-pid $pids "$@" >> $OUT/$name.txt 2>&1
  metrics $d 28431 >> $OUT/$name.txt
  stop_hubs; rm -rf $d
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $db WITH (FORCE)" postgres
  grep -E "^ingest|^sse|registered" $OUT/$name.txt | cut -c1-400
}
for c in "$@"; do
case $c in
  conn1) run conn1 "" --messages 100000 --seconds 10 --concurrency 1 ;;
  conn16) run conn16 "" --messages 100000 --seconds 10 --concurrency 16 ;;
  conn64) run conn64 "" --messages 100000 --seconds 10 --concurrency 64 ;;
  conn256) run conn256 "" --messages 100000 --seconds 10 --concurrency 256 ;;
  batch20) run batch20 "" --messages 100000 --seconds 10 --concurrency 64 --per-request 20 ;;
  shuffled) run shuffled "" --messages 100000 --seconds 10 --concurrency 64 --order shuffled ;;
  duplicated) run duplicated "" --messages 100000 --seconds 10 --concurrency 64 --order duplicated ;;
  size1k) run size1k "" --messages 1000 --seconds 10 --concurrency 64 --laps 0 ;;
  size10k) run size10k "" --messages 10000 --seconds 10 --concurrency 64 --laps 0 ;;
  size100k) run size100k "" --messages 100000 --seconds 10 --concurrency 64 --laps 0 ;;
  size1m) run size1m "" --messages 1000000 --seconds 10 --concurrency 64 --laps 0 ;;
  hot1) run hot1 "" --campaigns 1 --messages 100000 --seconds 10 --concurrency 64 ;;
  spread1000) run spread1000 "" --campaigns 1000 --messages 100 --seconds 10 --concurrency 64 ;;
  hot20) run hot20 "" --campaigns 1 --messages 100000 --seconds 10 --concurrency 64 --per-request 20 ;;
  spread1000x20) run spread1000x20 "" --campaigns 1000 --messages 100 --seconds 10 --concurrency 64 --per-request 20 ;;
  open25|open50|open75) run $c "" --messages 100000 --seconds 10 --concurrency 256 --rate $RATE ;;
  ses) run ses "" --channel ses --sns-cert-dir SNSDIR --messages 10000 --seconds 10 --concurrency 64 ;;
  sse1k) run sse1k "" --campaigns 10 --messages 20000 --seconds 10 --concurrency 64 --rate 5000 --subscribers 1000 --status-subscribers 10 ;;
  sse10k) run sse10k "" --campaigns 10 --messages 20000 --seconds 10 --concurrency 64 --rate 5000 --subscribers 10000 --status-subscribers 10 ;;
  ready)
    d=$(mktemp -d /tmp/bench.XXXX)
    start_hub $d 28431
    echo "### ready: seed then restart" > $OUT/ready.txt
    $LG --url http://127.0.0.1:28431 --data-dir $d/.statushub --mode seed --campaigns 10000 --messages 100 >> $OUT/ready.txt 2>&1
    stop_hubs
    ls -la $d >> $OUT/ready.txt
    (cd $d && RUST_LOG=warn $HUB serve --bind 127.0.0.1:28431 > $d/hub2.log 2>&1) &
    sleep 0.05; P=$(pgrep -f "serve --bind 127.0.0.1:28431" | head -1)
    $LG --url http://127.0.0.1:28431 --data-dir $d/.statushub --mode ready --hub-pid $P >> $OUT/ready.txt 2>&1
    stop_hubs; rm -rf $d; tail -3 $OUT/ready.txt ;;
  pg1) runpg pg1 1 --messages 100000 --seconds 10 --concurrency 64 ;;
  pg2) runpg pg2 2 --messages 100000 --seconds 10 --concurrency 64 ;;
  pg1x20) runpg pg1x20 1 --messages 100000 --seconds 10 --concurrency 64 --per-request 20 ;;
  pg2x20) runpg pg2x20 2 --messages 100000 --seconds 10 --concurrency 64 --per-request 20 ;;
  pgopen1) runpg pgopen1 1 --messages 100000 --seconds 10 --concurrency 256 --rate $RATE ;;
  pgsse1k) runpg pgsse1k 1 --campaigns 10 --messages 20000 --seconds 10 --concurrency 64 --rate 1000 --subscribers 1000 --status-subscribers 10 ;;
  pgsse1k2) runpg pgsse1k2 2 --campaigns 10 --messages 20000 --seconds 10 --concurrency 64 --rate 1000 --subscribers 1000 --status-subscribers 10 ;;
  pgspread1) runpg pgspread1 1 --campaigns 1000 --messages 100 --seconds 10 --concurrency 64 ;;
  pgspread) runpg pgspread 2 --campaigns 1000 --messages 100 --seconds 10 --concurrency 64 ;;
  pgsize100k) runpg pgsize100k 1 --messages 100000 --seconds 10 --concurrency 64 --laps 0 ;;
  pgsize1m) runpg pgsize1m 1 --messages 1000000 --seconds 10 --concurrency 64 --laps 0 ;;
  pgses) runpg pgses 1 --channel ses --sns-cert-dir SNSDIR --messages 10000 --seconds 10 --concurrency 64 ;;
  pgsse10k) runpg pgsse10k 1 --campaigns 10 --messages 20000 --seconds 10 --concurrency 64 --rate 1000 --subscribers 10000 --status-subscribers 10 ;;
  pgready)
    d=$(mktemp -d /tmp/bench.XXXX); db=sh_bench_$RANDOM
    psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" postgres
    start_hub $d 28431 DATABASE_URL=postgres://postgres@127.0.0.1/$db
    echo "### pgready: seed then restart" > $OUT/pgready.txt
    $LG --url http://127.0.0.1:28431 --data-dir $d/.statushub --mode seed --campaigns 10000 --messages 100 >> $OUT/pgready.txt 2>&1
    stop_hubs
    (cd $d && DATABASE_URL=postgres://postgres@127.0.0.1/$db RUST_LOG=warn $HUB serve --bind 127.0.0.1:28431 > $d/hub2.log 2>&1) &
    sleep 0.05; P=$(pgrep -f "serve --bind 127.0.0.1:28431" | head -1)
    $LG --url http://127.0.0.1:28431 --data-dir $d/.statushub --mode ready --hub-pid $P >> $OUT/pgready.txt 2>&1
    stop_hubs; rm -rf $d
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE $db WITH (FORCE)" postgres
    tail -3 $OUT/pgready.txt ;;
esac
done
