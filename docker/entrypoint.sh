#!/bin/sh
# Turns KMETA_* environment variables into a kmeta config file, formats storage on the first
# start, and runs `kmeta server`. As Kafka's images do: KMETA_NODE_ID -> node.id (strip the
# prefix, lower-case, `_` -> `.`, `__` -> `_`, `___` -> `-`).
#
# Not config keys: KMETA_CLUSTER_ID (required: the cluster id to format with), KMETA_LOG (log
# filter). log.dirs defaults to /var/lib/kmeta/data (the image's volume).
set -eu

config=/etc/kmeta/server.properties
: > "$config"
env | while IFS='=' read -r name value; do
  case "$name" in
    KMETA_CLUSTER_ID|KMETA_LOG) ;;
    KMETA_*)
      key=$(printf '%s' "${name#KMETA_}" | sed -e 's/___/-/g' -e 's/__/\x01/g' -e 's/_/./g' -e 's/\x01/_/g' | tr 'A-Z' 'a-z')
      printf '%s=%s\n' "$key" "$value" >> "$config"
      ;;
  esac
done
if ! grep -q '^log\.dirs=' "$config"; then
  echo "log.dirs=/var/lib/kmeta/data" >> "$config"
fi
if [ -z "${KMETA_CLUSTER_ID:-}" ]; then
  echo "kmeta-entrypoint: KMETA_CLUSTER_ID is required (make one with: kmeta storage random-uuid)" >&2
  exit 2
fi
kmeta storage format --config "$config" --cluster-id "$KMETA_CLUSTER_ID" --ignore-formatted
exec kmeta server --config "$config" "$@"
