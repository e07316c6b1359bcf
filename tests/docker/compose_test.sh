#!/usr/bin/env bash
# The compose cluster, broken on purpose (issue 6). Run by scripts/test.sh when a Docker engine
# answers. Bounded in time; removes its containers, network and volumes even when it fails.
#
#   1. build the image (docker/build.sh) and bring up 3 controllers + 3 brokers;
#   2. from the host, a real client (confluent-kafka) creates a topic and lists its leaders;
#   3. `docker stop` the broker leading partition 0: leadership moves to another broker;
#   4. disconnect the active controller from the network: a new one is elected and admin
#      writes succeed; reconnect it: it rejoins and catches up;
#   5. `compose down -v`.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${KMETA_PYTHON:?KMETA_PYTHON must point at a Python with the Kafka clients (scripts/test.sh sets it)}"

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
project="kmeta-test-$$"
# Three free ports below the ephemeral range (so no outgoing connection takes one meanwhile).
free_ports() {
  python3 - <<'PY'
import random, socket
while True:
    ports = random.sample(range(20000, 32000), 3)
    try:
        for p in ports:
            s = socket.socket(); s.bind(("0.0.0.0", p)); s.close()
        print(" ".join(map(str, ports))); break
    except OSError:
        pass
PY
}
export KMETA_CLUSTER_ID="kmeta-test-$$"
dc() { "${compose[@]}" -p "$project" -f docker/compose.yaml "$@"; }
kmeta=./target/release/kmeta
check=tests/clients/check.py
port_of() { eval "echo \$KMETA_BROKER_$1_PORT"; }

cleanup() {
  status=$?
  if [ $status -ne 0 ]; then
    echo "--- compose test failed; last logs:" >&2
    dc logs --tail 20 >&2 2>/dev/null || true
  fi
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  exit $status
}
trap cleanup EXIT

# until SECONDS WHAT CMD...: retries CMD until it succeeds, at most SECONDS.
until_ok() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out after ${limit}s: $what" >&2; return 1; fi
    sleep 0.5
  done
}
json() { "$KMETA_PYTHON" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

echo "compose: building the image"
./docker/build.sh
read -r KMETA_BROKER_1_PORT KMETA_BROKER_2_PORT KMETA_BROKER_3_PORT < <(free_ports)
export KMETA_BROKER_1_PORT KMETA_BROKER_2_PORT KMETA_BROKER_3_PORT
echo "compose: starting 3 controllers + 3 brokers (project $project)"
timeout 180 "${compose[@]}" -p "$project" -f docker/compose.yaml up -d >/dev/null 2>&1
all="localhost:$KMETA_BROKER_1_PORT,localhost:$KMETA_BROKER_2_PORT,localhost:$KMETA_BROKER_3_PORT"
until_ok 90 "three live brokers" "$KMETA_PYTHON" $check kcat --bootstrap "$all" --brokers 3

echo "compose: messages replicate between containers: produce with acks=all (RF 3, min ISR 2), read back"
timeout 120 "$KMETA_PYTHON" $check roundtrip --bootstrap "$all" --topic docker-data --client confluent --count 200 >/dev/null

echo "compose: a client on the host creates a topic and lists its leaders"
timeout 60 "$KMETA_PYTHON" $check create --bootstrap "$all" --topic docker-ha --partitions 3 --rf 3 >/dev/null
leaders=$(timeout 60 "$KMETA_PYTHON" $check leaders --bootstrap "$all" --topic docker-ha)
leader=$(echo "$leaders" | json 'd["leaders"]["0"]')
echo "compose: partition 0 is led by broker $leader; stopping its container"
timeout 60 docker stop "$(dc ps -q broker-$leader)" >/dev/null
rest=$(for b in 1 2 3; do [ "$b" = "$leader" ] || printf 'localhost:%s,' "$(port_of $b)"; done)
rest=${rest%,}
moved() {
  local now
  now=$(timeout 20 "$KMETA_PYTHON" $check leaders --bootstrap "$rest" --topic docker-ha) || return 1
  [ "$(echo "$now" | json 'd["leaders"]["0"]')" != "$leader" ] \
    && [ "$(echo "$now" | json 'd["leaders"]["0"] >= 0')" = "True" ]
}
until_ok 40 "partition 0 to move off broker $leader" moved
echo "compose: leadership moved"

status() { timeout 20 $kmeta quorum describe --status --output json --bootstrap-server "$rest"; }
active=$(status | json 'd["leader_id"]')
n=$((active - 3000))
container=$(dc ps -q controller-$n)
network=$(docker inspect "$container" --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' | awk '{print $1}')
echo "compose: disconnecting the active controller $active from $network"
docker network disconnect "$network" "$container"
new_leader() { local l; l=$(status | json 'd["leader_id"]') && [ "$l" != "$active" ] && [ "$l" -ge 3001 ]; }
until_ok 60 "a new active controller" new_leader
echo "compose: new active controller $(status | json 'd["leader_id"]'); writing"
until_ok 60 "an admin write without controller $active" \
  timeout 30 $kmeta topics create --topic after-partition --partitions 2 --replication-factor 2 --bootstrap-server "$rest"

echo "compose: reconnecting controller $active"
docker network connect --alias "controller-$n" "$network" "$container"
rejoined() {
  timeout 20 $kmeta quorum describe --replication --output json --bootstrap-server "$rest" \
    | "$KMETA_PYTHON" -c "import json,sys; r=[x for x in json.load(sys.stdin) if x['node_id']==$active]; sys.exit(0 if r and r[0]['lag']==0 and r[0]['log_end_offset']>0 else 1)"
}
until_ok 60 "controller $active to rejoin and catch up" rejoined
echo "compose: controller $active rejoined"
echo "compose: passed"
