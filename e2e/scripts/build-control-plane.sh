#!/usr/bin/env bash
# Builds the real Kubernetes control plane, node and chart tools from their Go modules:
#   kube-apiserver, kube-controller-manager, kubectl,
#   kubelet, kube-scheduler, kube-proxy
#                            (k8s.io/kubernetes, staging modules replaced by their v0.x releases)
#   etcd                     (a tiny main around go.etcd.io/etcd/server/v3/etcdmain)
#   coredns                  (a tiny main around coremain with the plugins a cluster DNS needs)
#   helm, kubeconform        (go install of their own modules)
# Binaries are cached by version outside the work tree, so a second run takes seconds.
# Prints the bin directory on its last line of stdout. Never commit what it builds.
#
# Environment:
#   KUBEMAIL_TOOLS_DIR  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/kubemail-tools)
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
COREDNS_VERSION=v1.14.7
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

# A module that depends on k8s.io/kubernetes with every staging module replaced by its release
# (upstream go.mod requires them at v0.0.0 and points at ./staging, which a consumer ignores).
kubernetes_module() {
    local dir=$1; shift
    rm -rf "$dir" && mkdir -p "$dir"
    cd "$dir"
    go mod init kubemail.local/kubernetes >/dev/null 2>&1
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
    {
        printf '//go:build tools\n\npackage tools\n\nimport (\n'
        for cmd in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
        printf ')\n'
    } > tools.go
    go mod tidy >/dev/null 2>"$dir/tidy.log" || { cat "$dir/tidy.log" >&2; die "go mod tidy failed for k8s.io/kubernetes@${K8S_VERSION}"; }
    local major=${K8S_VERSION#v}; major=${major%%.*}
    local minor_only=${minor%%.*}
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor_only}"
        ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
    done
    for cmd in "$@"; do
        go build -ldflags "$ldflags" -o "$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
}

build_kubernetes() {
    have kube-apiserver && have kube-controller-manager && have kubectl && return 0
    log "building kube-apiserver, kube-controller-manager and kubectl ${K8S_VERSION} (several minutes the first time)"
    kubernetes_module "$WORK/kubernetes-${K8S_VERSION}" kube-apiserver kube-controller-manager kubectl
}

# The node: what runs pods (containerd, runc and the CNI plugins come from Debian's packages).
build_node() {
    have kubelet && have kube-scheduler && have kube-proxy && return 0
    log "building kubelet, kube-scheduler and kube-proxy ${K8S_VERSION}"
    kubernetes_module "$WORK/kubernetes-node-${K8S_VERSION}" kubelet kube-scheduler kube-proxy
}

build_coredns() {
    have coredns && return 0
    log "building coredns ${COREDNS_VERSION}"
    local dir="$WORK/coredns-${COREDNS_VERSION}"
    rm -rf "$dir" && mkdir -p "$dir"
    cd "$dir"
    go mod init kubemail.local/coredns >/dev/null 2>&1
    cat > main.go <<'GO'
// CoreDNS with the plugins a cluster's DNS needs and no others (no forwarding: the test cluster
// is offline). The order of Directives is the order plugins see a query, as in plugin.cfg.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	"github.com/coredns/coredns/coremain"
)

func init() {
	dnsserver.Directives = []string{"reload", "ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
    go mod edit -require "github.com/coredns/coredns@${COREDNS_VERSION}"
    # One client-go for the whole cluster: the control plane's.
    local minor=${K8S_VERSION#v1.}
    for m in k8s.io/client-go k8s.io/api k8s.io/apimachinery; do
        go mod edit -require "$m@v0.${minor}"
    done
    go mod tidy >/dev/null 2>"$dir/tidy.log" || { cat "$dir/tidy.log" >&2; die "go mod tidy failed for coredns ${COREDNS_VERSION}"; }
    go build -ldflags "-s -w" -o "$BIN/coredns" .
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
build_node
build_etcd
build_coredns
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" helm.sh/helm/v3/internal/version.version
go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" main.version

for b in kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy etcd coredns helm kubeconform; do
    have "$b" || die "$b is missing from $BIN after the build"
done
echo "$BIN"
