#!/usr/bin/env bash
# Provision a current Prometheus (3.x) and promtool for the tests: built from the Go module
# github.com/prometheus/prometheus through the Go module proxy (Debian's package is 2.42, too
# old), cached by version outside the checkout. Prints the bin directory.
#
# The Go module's versions are v0.3MM.P for Prometheus 3.MM.P. The module has no replace
# directives, so `go install pkg@version` builds it as is. Left out on purpose: the web UI's
# compiled assets (the `builtinassets` tag needs an npm build of the React app; the HTTP API,
# /metrics and /-/ready work without them) and the cloud service discoveries (`remove_all_sd`;
# static, file, http and kubernetes discovery stay), which halves the build.
set -euo pipefail
PROM_MODULE_VERSION="${CONSORT_PROMETHEUS_VERSION:-v0.316.0}"
CACHE="${CONSORT_CACHE:-$HOME/.cache/consort}"
dest="$CACHE/prometheus-$PROM_MODULE_VERSION"
bins=(prometheus promtool)

complete() { for b in "${bins[@]}"; do [ -x "$dest/$b" ] || return 1; done; }

if ! complete; then
  command -v go >/dev/null || { echo "prometheus.sh: Go is needed to build Prometheus" >&2; exit 1; }
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/prometheus-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # v0.316.0 → 3.16.0
  minor_patch=${PROM_MODULE_VERSION#v0.3}
  release="3.$((10#${minor_patch%%.*})).${minor_patch#*.}"
  pkg=github.com/prometheus/common/version
  ldflags="-s -w -X $pkg.Version=$release -X $pkg.Revision=$PROM_MODULE_VERSION -X $pkg.Branch=HEAD"
  ldflags="$ldflags -X $pkg.BuildUser=consort -X $pkg.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)"
  echo "prometheus.sh: building Prometheus $release (a few minutes, once)" >&2
  GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -tags "netgo,remove_all_sd,enable_kubernetes_sd" -ldflags "$ldflags" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROM_MODULE_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROM_MODULE_VERSION" >&2
  "$tmp/prometheus" --version >&2
  "$tmp/promtool" --version >&2
  rm -rf "$dest" && mkdir -p "$dest" && mv "$tmp/prometheus" "$tmp/promtool" "$dest/"
fi
echo "$dest"
