#!/usr/bin/env bash
# Provision a current nats-server (JetStream) by building its Go module through the Go module
# proxy (Debian's package is 2.9, too old), cached by version outside the checkout. Prints the
# binary's path.
set -euo pipefail
NATS_VERSION="${CONSORT_NATS_VERSION:-v2.15.2}"
CACHE="${CONSORT_CACHE:-$HOME/.cache/consort}"
dest="$CACHE/nats-server-$NATS_VERSION"
if [ ! -x "$dest/nats-server" ]; then
  command -v go >/dev/null || { echo "nats-server.sh: Go is needed to build nats-server" >&2; exit 1; }
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/nats-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  GOBIN="$tmp" CGO_ENABLED=0 go install "github.com/nats-io/nats-server/v2@$NATS_VERSION" >&2
  "$tmp/nats-server" --version >&2
  rm -rf "$dest" && mkdir -p "$dest" && mv "$tmp/nats-server" "$dest/nats-server"
fi
echo "$dest/nats-server"
