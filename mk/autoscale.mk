# Autoscaling: KEDA's published ScaledObject CRD, against which the unit tests validate the
# ScaledObjects the operator renders (engine: keda). Fetched from KEDA's Go module through the
# Go module proxy into ~/.cache/vgate/keda/<version>/ (never into the repository).
.PHONY: keda-crd

keda-crd: ## fetch (once; cached outside the repo) KEDA's ScaledObject CRD for the unit tests
	@hack/keda/crd.sh >/dev/null

test test-unit test-cluster: keda-crd
