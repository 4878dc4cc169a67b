# Pinned versions of the real control-plane tier (sourced by build.sh and the tests' harness).
# Every component is built from source through the Go module proxy; change a version here and
# the next `make test-cluster` builds into a fresh cache folder keyed by these values.
K8S_VERSION=v1.36.3   # kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes)
ETCD_VERSION=v3.6.16  # go.etcd.io/etcd/server/v3
KWOK_VERSION=v0.8.0   # sigs.k8s.io/kwok: kwok (the fake kubelet) and kwokctl
HELM_VERSION=v3.22.0  # helm.sh/helm/v3
CLUSTER_CACHE_ROOT=${VGATE_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vgate/cluster}
CLUSTER_BIN=$CLUSTER_CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION/bin
