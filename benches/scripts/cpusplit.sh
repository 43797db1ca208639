#!/bin/bash
# Runs the load generator against a fresh hub and reports the CPU the hub and
# the generator used over four seconds of the load (from /proc/<pid>/stat).
# usage: benches/scripts/cpusplit.sh HUB_BIN LOADGEN_BIN [loadgen flags...]
HUB=$1; LG=$2; shift 2
D=$(mktemp -d /tmp/bench.XXXX); cd $D
RUST_LOG=warn $HUB serve --bind 127.0.0.1:28777 > $D/hub.log 2>&1 &
HP=$!
for i in $(seq 1 100); do curl -sf http://127.0.0.1:28777/readyz >/dev/null && break; sleep 0.1; done
$LG --url http://127.0.0.1:28777 --data-dir $D/.statushub "$@" > $D/lg.out 2>&1 &
LP=$!
sleep 4
t() { awk '{print $14+$15}' /proc/$1/stat; }
h1=$(t $HP); l1=$(t $LP); s1=$(date +%s.%N)
sleep 4
h2=$(t $HP); l2=$(t $LP); s2=$(date +%s.%N)
wait $LP
grep ^ingest $D/lg.out | cut -c1-200
python3 -c "
tk=100; dt=$s2-$s1
print('hub %.2f cores, loadgen %.2f cores, total %.2f of 2' % (($h2-$h1)/tk/dt, ($l2-$l1)/tk/dt, ($h2-$h1+$l2-$l1)/tk/dt))"
kill $HP; wait $HP 2>/dev/null; rm -rf $D
