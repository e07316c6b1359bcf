#!/usr/bin/env bash
# Builds the kmeta image (tag: ${KMETA_IMAGE:-kmeta:latest}): the release binary with cargo,
# the base image if missing (prepare-base.sh), then `docker build` from a small context.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
cargo build --release --locked --bin kmeta
"$here/prepare-base.sh"
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp target/release/kmeta "$context/kmeta"
strip "$context/kmeta" 2>/dev/null || true
cp "$here/entrypoint.sh" "$context/entrypoint.sh"
docker build -q -f "$here/Dockerfile" -t "${KMETA_IMAGE:-kmeta:latest}" \
  ${KMETA_BASE_IMAGE:+--build-arg BASE="$KMETA_BASE_IMAGE"} "$context" >/dev/null
echo "image ${KMETA_IMAGE:-kmeta:latest} built"
