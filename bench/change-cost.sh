#!/usr/bin/env bash
# What one metadata change costs with many partitions hosted (issue 13).
#
#   bench/change-cost.sh [KMETA_BINARY] [THOUSANDS_OF_PARTITIONS] [CHANGES]
#
# Starts `kmeta dev` (3 controllers + 3 brokers in one process, on 127.0.0.1:29092 and
# :29192), creates THOUSANDS topics of 1,000 partitions (RF 3), measures the process's idle CPU
# for 10 s, then creates CHANGES one-partition topics one after another and prints the
# process CPU per change (utime + stime from /proc, idle subtracted). Stops by itself and
# removes its data directory.
set -euo pipefail
BIN=${1:-target/release/kmeta}
T=${2:-30}
N=${3:-100}
dir=$(mktemp -d)
"$BIN" dev --data-dir "$dir/data" --broker-port 29092 --controller-port 29192 >"$dir/dev.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 150); do grep -q bootstrap.servers "$dir/dev.log" && break; sleep 0.2; done
B=127.0.0.1:29092
for t in $(seq 1 "$T"); do
  "$BIN" topics create --topic "big-$t" --partitions 1000 --replication-factor 3 --bootstrap-server $B >/dev/null
done
sleep 5
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
now() { date +%s.%N; }
hz=$(getconf CLK_TCK)
i0=$(cpu); sleep 10; i1=$(cpu)
c0=$(cpu); s0=$(now)
for i in $(seq 1 "$N"); do
  "$BIN" topics create --topic "one-$i" --partitions 1 --replication-factor 3 --bootstrap-server $B >/dev/null
done
s1=$(now); c1=$(cpu)
awk -v i0="$i0" -v i1="$i1" -v c0="$c0" -v c1="$c1" -v s0="$s0" -v s1="$s1" -v hz="$hz" \
  -v n="$N" -v p=$((T * 1000)) 'BEGIN {
    idle = (i1 - i0) / 10; wall = s1 - s0;
    printf "partitions=%d changes=%d wall=%.1fs idle=%.0f%% of a core cpu_per_change=%.1fms\n",
      p + n, n, wall, idle * 100 / hz, ((c1 - c0) - idle * wall) * 1000 / hz / n }'
