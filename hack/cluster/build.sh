#!/usr/bin/env bash
# Build the real control-plane tier's binaries from source, once, into a cache outside the repository:
#   kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl helm
# The folder is keyed by the pinned versions (versions.sh); GOCACHE and GOMODCACHE live beside it, so a
# rebuild after a version bump reuses what it can. Prints the bin folder on its last line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"

# The official Go installation's place, for shells whose PATH does not have it.
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "build.sh: the Go toolchain (1.26+) is needed to build the cluster tier" >&2; exit 1; }
export GOCACHE=$CLUSTER_CACHE_ROOT/go-build GOMODCACHE=$CLUSTER_CACHE_ROOT/go-mod
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
mkdir -p "$CLUSTER_BIN" "$GOCACHE" "$GOMODCACHE"
work=$CLUSTER_BIN/../src
mkdir -p "$work"
start=$(date +%s)

have() { [ -x "$CLUSTER_BIN/$1" ]; }
log() { echo "build.sh: $*" >&2; }

# Kubernetes: its go.mod pins the staging modules at v0.0.0 and replaces them with ./staging paths that are
# not in the module zip, so a wrapper module replaces each with its published v0.Y.Z twin.
kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
missing=()
for c in "${kube_cmds[@]}"; do have "$c" || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "building ${missing[*]} from k8s.io/kubernetes $K8S_VERSION"
    mod=$work/kubernetes
    mkdir -p "$mod"
    if [ ! -f "$mod/go.sum" ]; then
        kgomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
        staging=v0.${K8S_VERSION#v1.}
        {
            echo "module vgate.local/cluster-kubernetes"
            echo
            echo "go 1.26.0"
            echo
            echo "require k8s.io/kubernetes $K8S_VERSION"
            echo
            grep -E '^\s+k8s\.io/[a-z0-9.-]+ => \./staging/' "$kgomod" |
                awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
        } >"$mod/go.mod"
        {
            echo "//go:build tools"
            echo
            echo "package tools"
            echo
            echo "import ("
            for c in "${kube_cmds[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
            echo ")"
        } >"$mod/tools.go"
        (cd "$mod" && go mod tidy)
    fi
    minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
    ldflags="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    pkgs=()
    for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$CLUSTER_BIN/" "${pkgs[@]}")
fi

# etcd: the server module's main package is the etcd binary.
if ! have etcd; then
    log "building etcd $ETCD_VERSION"
    mod=$work/etcd
    mkdir -p "$mod"
    if [ ! -f "$mod/go.sum" ]; then
        printf 'module vgate.local/cluster-etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$mod/go.mod"
        printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$mod/tools.go"
        (cd "$mod" && go mod tidy)
    fi
    (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$CLUSTER_BIN/etcd" go.etcd.io/etcd/server/v3)
fi

# kwok, kwokctl and helm have no replace directives: go install pkg@version builds them as released.
for c in kwok kwokctl; do
    if ! have $c; then
        log "building $c $KWOK_VERSION"
        GOBIN=$CLUSTER_BIN go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/$c@$KWOK_VERSION"
    fi
done
if ! have helm; then
    log "building helm $HELM_VERSION"
    GOBIN=$CLUSTER_BIN go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

log "binaries ready in $(( $(date +%s) - start ))s"
echo "$CLUSTER_BIN"
