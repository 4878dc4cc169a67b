#!/usr/bin/env bash
# Run a command inside a network namespace made for it: loopback up and the cluster tier's pod
# range routed to it, so every pod address is local and no test traffic can leave. Needs root.
#   hack/cluster/netns.sh CMD [ARGS...]
set -euo pipefail
POD_CIDR=${POD_CIDR:-10.244.0.0/16}
[ "$(id -u)" = 0 ] || { echo "netns.sh: needs root to create a network namespace" >&2; exit 1; }
command -v ip >/dev/null || { apt-get update -q && apt-get install -y -q iproute2; }
ns=vgate-cluster-$$
ip netns add "$ns"
cleanup() {
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip route add local "$POD_CIDR" dev lo
ip netns exec "$ns" "$@"
