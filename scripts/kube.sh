#!/usr/bin/env bash
# Provision a real Kubernetes control plane for the tests and `make cluster`: kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl built from k8s.io/kubernetes, and etcd
# built from go.etcd.io/etcd/server/v3, all through the Go module proxy (no download site is
# reachable here), cached by version outside the checkout. Prints the bin directory.
#
# k8s.io/kubernetes requires its staging modules at v0.0.0 with `=> ./staging/...` replaces,
# which only work inside its own tree; a wrapper module replaces each of them with the
# published module at v0.<minor>.<patch> instead. etcd's server module has replace
# directives too, so `go install` refuses it; a wrapper module that requires it builds fine.
set -euo pipefail
K8S_VERSION="${CONSORT_K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${CONSORT_ETCD_VERSION:-v3.6.16}"
CACHE="${CONSORT_CACHE:-$HOME/.cache/consort}"
dest="$CACHE/kube-$K8S_VERSION-etcd-$ETCD_VERSION"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

complete() { for b in "${bins[@]}"; do [ -x "$dest/$b" ] || return 1; done; }

if ! complete; then
  command -v go >/dev/null || { echo "kube.sh: Go is needed to build the control plane" >&2; exit 1; }
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/kube-build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

  # --- Kubernetes ---
  mkdir -p "$tmp/k8s" "$tmp/bin"
  mod=$(cd "$tmp/k8s" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  staging="v0.${K8S_VERSION#v1.}"
  {
    echo "module consort.local/kube"
    echo
    echo "go 1.25.0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    grep -E '=> \./staging/' "$mod" | sed -E 's/^[[:space:]]*(replace[[:space:]]+)?([^[:space:]]+)[[:space:]]+=>.*/replace \2 => \2 '"$staging"'/'
  } >"$tmp/k8s/go.mod"
  cat >"$tmp/k8s/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  (
    cd "$tmp/k8s"
    go mod tidy -e >&2
    echo "kube.sh: building Kubernetes $K8S_VERSION (several minutes, once)" >&2
    go build -ldflags "$ldflags" -o "$tmp/bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl >&2
  )

  # --- etcd ---
  mkdir -p "$tmp/etcd"
  cat >"$tmp/etcd/go.mod" <<EOF
module consort.local/etcd

go 1.25.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  cat >"$tmp/etcd/tools.go" <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3/etcdmain"
EOF
  cat >"$tmp/etcd/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (
    cd "$tmp/etcd"
    go mod tidy >&2
    echo "kube.sh: building etcd $ETCD_VERSION" >&2
    go build -ldflags "-s -w" -o "$tmp/bin/etcd" . >&2
  )

  "$tmp/bin/kube-apiserver" --version >&2
  "$tmp/bin/etcd" --version >&2
  rm -rf "$dest" && mkdir -p "$dest" && mv "$tmp/bin/"* "$dest/"
fi
echo "$dest"
