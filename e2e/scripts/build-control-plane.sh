#!/usr/bin/env bash
# Builds the real Kubernetes control plane and the chart tools from their Go modules:
#   kube-apiserver, kube-controller-manager, kubectl
#                            (k8s.io/kubernetes, staging modules replaced by their v0.x releases)
#   etcd                     (a tiny main around go.etcd.io/etcd/server/v3/etcdmain)
#   helm, kubeconform        (go install of their own modules)
# Binaries are cached by version outside the work tree, so a second run takes seconds.
# Prints the bin directory on its last line of stdout. Never commit what it builds.
#
# Environment:
#   KUBEMAIL_TOOLS_DIR  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/kubemail-tools)
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.7.0

CACHE_ROOT=${KUBEMAIL_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubemail-tools}
# Bump RECIPE when the way a binary is built changes, so caches built the old way are not reused.
RECIPE=2
BIN="$CACHE_ROOT/bin-r${RECIPE}-k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-helm-${HELM_VERSION}-kubeconform-${KUBECONFORM_VERSION}"
WORK="$CACHE_ROOT/build"

log() { echo "build-control-plane: $*" >&2; }
die() { echo "build-control-plane: error: $*" >&2; exit 1; }

command -v go >/dev/null || die "the go command is not on PATH; install Go (the polyglot machine ships it)"
mkdir -p "$BIN" "$WORK"
export GOFLAGS="${GOFLAGS:-} -trimpath"
# A CGO-free build is static and does not depend on the machine's libc.
export CGO_ENABLED=0

have() { [[ -x "$BIN/$1" ]]; }

build_kubernetes() {
    have kube-apiserver && have kube-controller-manager && have kubectl && return 0
    log "building kube-apiserver, kube-controller-manager and kubectl ${K8S_VERSION} (several minutes the first time)"
    local dir="$WORK/kubernetes-${K8S_VERSION}"
    rm -rf "$dir" && mkdir -p "$dir"
    cd "$dir"
    go mod init kubemail.local/control-plane >/dev/null 2>&1
    # Upstream go.mod requires every staging module at v0.0.0 and points it at ./staging with
    # replace directives that a consumer's build ignores; replace each with its real release.
    local gomod staging minor
    gomod=$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@${K8S_VERSION} from the Go module proxy"
    minor=${K8S_VERSION#v1.}
    staging=$(awk '$2 == "v0.0.0" && $1 ~ /^k8s.io\// { print $1 }' "$gomod" | sort -u)
    [[ -n "$staging" ]] || die "found no staging modules in upstream go.mod; the replace rule needs revisiting"
    for m in $staging; do
        go mod edit -replace "$m=$m@v0.${minor}"
    done
    go mod edit -require "k8s.io/kubernetes@${K8S_VERSION}"
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod tidy >/dev/null 2>"$dir/tidy.log" || { cat "$dir/tidy.log" >&2; die "go mod tidy failed for k8s.io/kubernetes@${K8S_VERSION}"; }
    local major=${K8S_VERSION#v}; major=${major%%.*}
    local minor_only=${minor%%.*}
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor_only}"
        ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
    done
    go build -ldflags "$ldflags" -o "$BIN/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    go build -ldflags "$ldflags" -o "$BIN/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
    go build -ldflags "$ldflags" -o "$BIN/kubectl" k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
    have etcd && return 0
    log "building etcd ${ETCD_VERSION}"
    local dir="$WORK/etcd-${ETCD_VERSION}"
    rm -rf "$dir" && mkdir -p "$dir"
    cd "$dir"
    go mod init kubemail.local/etcd >/dev/null 2>&1
    cat > main.go <<'GO'
// etcd, built from go.etcd.io/etcd/server/v3: its own go.mod has monorepo replaces that stop
// `go install`, so this module depends on it and calls the real entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    go mod edit -require "go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
    go mod tidy >/dev/null 2>"$dir/tidy.log" || { cat "$dir/tidy.log" >&2; die "go mod tidy failed for etcd ${ETCD_VERSION}"; }
    go build -ldflags "-s -w" -o "$BIN/etcd" .
}

go_install() {
    local name=$1 pkg=$2 version=$3 version_var=$4
    have "$name" && return 0
    log "building $name ${version}"
    GOBIN="$BIN" go install -ldflags "-s -w -X ${version_var}=${version}" "${pkg}@${version}" \
        || die "go install ${pkg}@${version} failed"
}

build_kubernetes
build_etcd
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" helm.sh/helm/v3/internal/version.version
go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" main.version

for b in kube-apiserver kube-controller-manager kubectl etcd helm kubeconform; do
    have "$b" || die "$b is missing from $BIN after the build"
done
echo "$BIN"
