# Monitoring: Prometheus (promtool for the alert tests, the server for the dashboard tests and
# `vgate dev --monitoring`) and a headless Chromium (the status page test), from Debian's packages.
#
#   make monitoring-tools     install what is missing (apt as root, or through sudo -n); make test runs it
#   make dev-monitoring       the local stack with Prometheus beside it (http://127.0.0.1:9090)
#   make status-screenshot    re-run the status page test and replace docs/status-page.png
# Any of these is a Chromium the browser test can drive (VGATE_CHROMIUM names another).
CHROMIUM_NAMES ?= chromium chromium-browser google-chrome

.PHONY: monitoring-tools dev-monitoring status-screenshot

monitoring-tools: ## install Prometheus (+promtool) and Chromium where missing (Debian packages; make test needs them)
	@missing=""; \
	command -v prometheus >/dev/null && command -v promtool >/dev/null || missing="prometheus"; \
	found=""; for b in $(CHROMIUM_NAMES) $$VGATE_CHROMIUM; do command -v $$b >/dev/null && found=$$b; done; \
	[ -n "$$found" ] || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "monitoring-tools: missing$$missing; install them (apt-get install$$missing) or run make as root" >&2; exit 1; fi; \
	echo "monitoring-tools: installing$$missing (Debian packages, apt-get)"; \
	$$sudo apt-get update -q && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

dev-monitoring: venv monitoring-tools ## the local stack (make dev) with Prometheus beside it, on 127.0.0.1:9090
	exec $(BIN)/vgate dev --monitoring

status-screenshot: venv monitoring-tools ## re-run the status page browser test, replacing docs/status-page.png
	VGATE_UPDATE_SCREENSHOT=1 $(BIN)/pytest tests/integration/test_status_page.py $(PYTEST_ARGS)
