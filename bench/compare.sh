#!/usr/bin/env bash
# Issue 14's side-by-side figures: kmeta against etcd and ZooKeeper on this machine.
#
#   bench/compare.sh [kmeta bench compare options]    (default: 1,16,256 workers; about 6 minutes)
#
# Installs etcd and ZooKeeper from Debian's packages when missing (etcd-server, zookeeper;
# ZooKeeper brings a Java runtime), builds the release binary, and runs `kmeta bench compare`:
# each system as 3 real processes on 127.0.0.1 (kmeta: 3 controllers + 3 brokers), fsync on,
# the same closed-loop load, every acknowledged write read back. Each run's figures are
# appended to target/bench-compare.jsonl; the tables are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v etcd >/dev/null || [ ! -f /usr/share/java/zookeeper.jar ]; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get install -y -q etcd-server zookeeper >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q etcd-server zookeeper >/dev/null; }
fi
cargo build --release --locked
out=target/bench-compare.jsonl
rm -f "$out"
/usr/bin/time -v ./target/release/kmeta bench compare --json "$out" "$@"
echo "figures: $out"
