# Images, the Helm chart, and the kind end-to-end path.
#
#   make e2e-kind      kind cluster + images + ingress-nginx + chart + examples/dry-run.yaml + tests/e2e
#   make kind-down     delete the cluster again
#
# Needs docker, kind, kubectl and helm on PATH (CI installs them with their official actions).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
REGISTRY ?= ghcr.io/vgate
GATEWAY_IMAGE ?= $(REGISTRY)/gateway:$(VERSION)
WORKER_IMAGE ?= $(REGISTRY)/worker:$(VERSION)
DRY_RUN_IMAGE ?= $(REGISTRY)/worker-dry-run:$(VERSION)
DOCKER ?= docker
KIND ?= kind
KUBECTL ?= kubectl
HELM ?= helm
KIND_CLUSTER ?= vgate
KIND_CONFIG ?= hack/kind-config.yaml
# The GPU worker image is not loaded into kind: kind nodes have no GPU.
KIND_IMAGES ?= $(GATEWAY_IMAGE) $(DRY_RUN_IMAGE)
HELM_RELEASE ?= vgate
HELM_NAMESPACE ?= vgate-system
HELM_ARGS ?=
E2E_NAMESPACE ?= vgate-e2e
E2E_EXAMPLE ?= examples/dry-run.yaml
E2E_TIMEOUT ?= 300s
E2E_PYTEST_ARGS ?=
INGRESS_NGINX_VERSION ?= controller-v1.12.1
INGRESS_NGINX_MANIFEST ?= https://raw.githubusercontent.com/kubernetes/ingress-nginx/$(INGRESS_NGINX_VERSION)/deploy/static/provider/kind/deploy.yaml
CHART := charts/vgate

.PHONY: crds images image-gateway image-worker image-worker-dry-run kind-up kind-load deploy \
	undeploy e2e-kind kind-down chart-lint lint-docker

# The CRD's schema comes from the operator's pydantic models (operator/vgate_operator/crd.py).
crds: venv ## generate the VGateDeployment CRD from the operator's models into crds/ and the chart (a unit test fails when they drift)
	$(BIN)/python -m vgate_operator.crd crds $(CHART)/crds

image-gateway: ## docker build the gateway/operator image
	$(DOCKER) build -f Dockerfile.gateway -t $(GATEWAY_IMAGE) .

image-worker-dry-run: ## docker build the dry-run worker image (simulator, no vLLM)
	$(DOCKER) build -f Dockerfile.worker --target dry-run -t $(DRY_RUN_IMAGE) .

image-worker: ## docker build the GPU worker image (vLLM; large)
	$(DOCKER) build -f Dockerfile.worker --target gpu -t $(WORKER_IMAGE) .

images: image-gateway image-worker-dry-run image-worker ## docker build all three images

kind-up: ## create the kind cluster (ingress ports 80/443 on the host), unless it exists
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
		echo "kind cluster $(KIND_CLUSTER) exists"; \
	else \
		$(KIND) create cluster --name $(KIND_CLUSTER) --config $(KIND_CONFIG) --wait 120s; \
	fi

kind-load: ## load the gateway and dry-run worker images into the kind cluster
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(KIND_IMAGES)

deploy: crds ## install ingress-nginx and the chart (local images), wait for the rollout
	$(KUBECTL) --context kind-$(KIND_CLUSTER) apply -f $(INGRESS_NGINX_MANIFEST)
	$(KUBECTL) --context kind-$(KIND_CLUSTER) -n ingress-nginx rollout status \
		deployment/ingress-nginx-controller --timeout=$(E2E_TIMEOUT)
	$(KUBECTL) --context kind-$(KIND_CLUSTER) create namespace $(E2E_NAMESPACE) --dry-run=client -o yaml \
		| $(KUBECTL) --context kind-$(KIND_CLUSTER) apply -f -
	$(HELM) --kube-context kind-$(KIND_CLUSTER) upgrade --install $(HELM_RELEASE) $(CHART) \
		--namespace $(HELM_NAMESPACE) --create-namespace \
		--set image.tag=$(VERSION) --set image.pullPolicy=IfNotPresent \
		--wait --timeout $(E2E_TIMEOUT) $(HELM_ARGS)

undeploy: ## uninstall the chart and ingress-nginx, delete the e2e namespace (CRDs stay)
	-$(HELM) --kube-context kind-$(KIND_CLUSTER) uninstall $(HELM_RELEASE) --namespace $(HELM_NAMESPACE) --wait
	-$(KUBECTL) --context kind-$(KIND_CLUSTER) delete namespace $(E2E_NAMESPACE) --ignore-not-found
	-$(KUBECTL) --context kind-$(KIND_CLUSTER) delete -f $(INGRESS_NGINX_MANIFEST) --ignore-not-found

# The release also creates a dry-run VGateDeployment of its own, which `helm test` checks.
# The operator watches the release namespace and the e2e one (a Role in each), not the cluster.
e2e-kind: HELM_ARGS += --set deployment.enabled=true --set 'watchNamespaces={$(HELM_NAMESPACE),$(E2E_NAMESPACE)}'
e2e-kind: venv kind-up image-gateway image-worker-dry-run kind-load deploy ## the whole kind path, then tests/e2e through the Ingress
	$(HELM) --kube-context kind-$(KIND_CLUSTER) test $(HELM_RELEASE) --namespace $(HELM_NAMESPACE) \
		--timeout $(E2E_TIMEOUT) --logs
	$(KUBECTL) --context kind-$(KIND_CLUSTER) create namespace $(E2E_NAMESPACE) --dry-run=client -o yaml \
		| $(KUBECTL) --context kind-$(KIND_CLUSTER) apply -f -
	$(KUBECTL) --context kind-$(KIND_CLUSTER) -n $(E2E_NAMESPACE) apply -f $(E2E_EXAMPLE)
	VGATE_E2E=1 VGATE_E2E_CONTEXT=kind-$(KIND_CLUSTER) VGATE_E2E_NAMESPACE=$(E2E_NAMESPACE) \
		VGATE_E2E_EXAMPLE=$(E2E_EXAMPLE) $(BIN)/pytest tests/e2e -p no:cacheprovider $(E2E_PYTEST_ARGS)

kind-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)

chart-lint: venv ## helm lint the chart (the helm binary if present, else Helm's Go SDK via helm-python-sdk)
	@if command -v $(HELM) >/dev/null 2>&1; then \
		$(HELM) lint --strict $(CHART) && $(HELM) lint --strict $(CHART) --set deployment.enabled=true; \
	else \
		$(BIN)/python hack/chart_lint.py $(CHART); \
	fi

lint-docker: venv ## hadolint the Dockerfiles
	$(BIN)/hadolint Dockerfile.gateway Dockerfile.worker
