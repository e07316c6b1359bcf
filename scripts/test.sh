#!/usr/bin/env bash
# The whole test suite, as the README's test command runs it on a fresh machine.
# Installs what it needs (rustfmt/clippy components, cargo-nextest when missing), then runs
# formatting, lints, the purity check of the core crate, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

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

step "tests"
# nextest's summary is the closing line CI reads.
cargo nextest run --workspace --locked --no-fail-fast
