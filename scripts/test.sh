#!/usr/bin/env bash
# The whole test suite, as the README's test command runs it on a fresh machine.
# Installs what it needs (rustfmt/clippy components, cargo-nextest, kcat from Debian, and a
# Python venv with confluent-kafka, kafka-python and aiokafka), then runs formatting, lints,
# the purity check of the core crate, the Docker compose test (when a Docker engine answers;
# loudly skipped otherwise), a bounded part of the quorum simulation and of the fault suite
# (docs/FAULTS.md; the fault suite needs root, loudly skipped otherwise), and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

step "Kafka clients for the real-client tests"
if ! command -v kcat >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get install -y -q kcat >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q kcat >/dev/null; }
fi
kcat -V | head -1
# The fault suite's network namespaces (only usable as root).
if [ "$(id -u)" -eq 0 ] && ! { command -v ip && command -v iptables; } >/dev/null 2>&1; then
  apt-get install -y -q iproute2 iptables >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q iproute2 iptables >/dev/null; }
fi
venv="${KMETA_VENV:-target/pyenv}"
if ! "$venv/bin/python" -c 'import confluent_kafka, kafka, aiokafka' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r tests/clients/requirements.txt
fi
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
export KMETA_PYTHON="$venv/bin/python"
"$KMETA_PYTHON" -c 'import confluent_kafka, kafka, aiokafka; print("confluent-kafka", confluent_kafka.version()[0], "kafka-python", kafka.__version__, "aiokafka", aiokafka.__version__)'

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the pure core has no async or I/O dependency"
forbidden='^(tokio|mio|async-std|smol|futures|socket2|libc|getrandom|rand)$'
deps=$(cargo tree -p kmeta-metadata -e normal --prefix none --format '{p}' --locked | awk '{print $1}' | sort -u)
if bad=$(echo "$deps" | grep -E "$forbidden"); then
  echo "kmeta-metadata depends on: $bad" >&2
  exit 1
fi
echo "ok: $(echo "$deps" | wc -l) crates, none of them async or I/O"

step "Docker: the compose cluster, broken on purpose"
if docker info >/dev/null 2>&1; then
  timeout 900 tests/docker/compose_test.sh
else
  printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
  printf '!!! SKIPPED: no Docker engine answers here; the compose test did not run.\n'
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
fi

step "the quorum simulation: both regression cases of issue 10, then random seeds"
cargo build --release --locked --bin kmeta
sim_first="${KMETA_SIM_FIRST_SEED:-1}"
./target/release/kmeta sim --scenario full-restart --seeds 20 | tail -n 1
./target/release/kmeta sim --scenario leader-pause --seeds 20 | tail -n 1
./target/release/kmeta sim --seeds 300 --first-seed "$sim_first" | grep -v ': ok$'

step "the fault suite: real processes in network namespaces"
if [ "$(id -u)" -eq 0 ] && ip netns add kmeta-probe-$$ 2>/dev/null; then
  ip netns del kmeta-probe-$$
  timeout 900 ./target/release/kmeta faults --schedules "${KMETA_FAULT_SCHEDULES:-4}" \
    --first-seed "${KMETA_FAULT_FIRST_SEED:-1}" --seconds 10 --jobs 2 --data-dir target/faults \
    | grep -v '^  fault'
  # The same faults with the clients on SASL_SSL listeners (docs/SECURITY.md).
  timeout 600 ./target/release/kmeta faults --secure --schedules 2 \
    --first-seed "$(( ${KMETA_FAULT_FIRST_SEED:-1} + 1000 ))" --seconds 10 --jobs 2 \
    --data-dir target/faults-secure | grep -v '^  fault'
else
  printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
  printf '!!! SKIPPED: the fault suite needs root and network namespaces.\n'
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
fi

step "tests"
# nextest's summary is the closing line CI reads.
cargo nextest run --workspace --locked --no-fail-fast
