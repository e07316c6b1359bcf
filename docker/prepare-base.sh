#!/usr/bin/env bash
# Makes sure the Dockerfile's base image exists locally.
#
# On an ordinary machine this pulls the usual public image (debian:bookworm-slim). Where no
# registry is reachable (kmeta's build machine), it builds an equivalent minimal Debian root
# filesystem with debootstrap from Debian's package mirror and loads it with `docker import`
# under the same name, so the same Dockerfile builds in both places.
set -euo pipefail
BASE="${KMETA_BASE_IMAGE:-debian:bookworm-slim}"
SUITE="${KMETA_DEBIAN_SUITE:-bookworm}"
MIRROR="${KMETA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$BASE" >/dev/null 2>&1; then
  echo "base image $BASE: present"
  exit 0
fi
if timeout 60 docker pull "$BASE" >/dev/null 2>&1; then
  echo "base image $BASE: pulled"
  exit 0
fi
echo "base image $BASE: no registry reachable; building it with debootstrap ($SUITE from $MIRROR)"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
if ! command -v debootstrap >/dev/null 2>&1; then
  $sudo_cmd apt-get install -y -q debootstrap >/dev/null \
    || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q debootstrap >/dev/null; }
fi
root="$(mktemp -d)"
trap '$sudo_cmd rm -rf "$root"' EXIT
$sudo_cmd debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >/dev/null
# Trim what a container never uses, as the -slim images do.
$sudo_cmd rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
$sudo_cmd tar -C "$root" -c . | docker import - "$BASE" >/dev/null
echo "base image $BASE: imported ($(docker image inspect "$BASE" --format '{{.Size}}') bytes)"
