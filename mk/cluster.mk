# The real control-plane tier: kube-apiserver, kube-controller-manager, kube-scheduler, etcd,
# kwok and helm built from source (Go module proxy) once into a cache keyed by their versions
# (hack/cluster/versions.sh), then tests/cluster inside a network namespace of its own.
#
#   make test-cluster     needs Go 1.26+ and root (the network namespace); cold build ~30-45 min
#                         on 2 cores, a few minutes warm
CLUSTER_PYTEST_ARGS ?=
# pytest's own folder for the tier (cluster, pod logs): kept after a run for a look, wiped by the next.
CLUSTER_TMP ?= $(or $(TMPDIR),/tmp)/vgate-test-cluster

.PHONY: cluster-bin test-cluster

cluster-bin: ## build (once; cached outside the repo) the control-plane binaries for test-cluster
	nice -n 10 hack/cluster/build.sh

test-cluster: venv cluster-bin ## chart, operator and discovery on a real control plane (kwok nodes; root)
	hack/cluster/netns.sh $(BIN)/pytest tests/cluster -p no:cacheprovider --basetemp=$(CLUSTER_TMP) \
		$(CLUSTER_PYTEST_ARGS)
