# Fuzzing the gateway: schemathesis from its own OpenAPI document against a running gateway
# (no 5xx, errors in OpenAI's shape, documented content types), hypothesis on the request parser.
#
#   make fuzz                        300 cases per test (a few minutes)
#   make fuzz FUZZ_EXAMPLES=25       the short pass CI runs
FUZZ_EXAMPLES ?= 300

.PHONY: fuzz

fuzz: venv ## fuzz the gateway (schemathesis + hypothesis); FUZZ_EXAMPLES cases per test
	VGATE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/fuzz -p no:cacheprovider $(PYTEST_ARGS)
