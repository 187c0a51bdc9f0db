# clef-agent developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
BIN := target/release/clef-agent
# The shipped executable: musl, fully static (packaging/README.md has the musl/glibc numbers).
STATIC_TARGET := x86_64-unknown-linux-musl
STATIC_BIN := target/static/clef-agent
DEMO_PORT ?= 7779
DEMO_TOKEN ?= demo-token-not-secret
# The Python environment of the AWS tests (moto_server, boto3, botocore), git-ignored.
VENV := .venv
AWS_REQUIREMENTS := tests/aws/requirements.txt

.PHONY: help build run test deps lint fmt bench fixtures clean static static-deps test-packaging lambda-layer

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

build: ## Build the release binary (target/release/clef-agent)
	$(CARGO) build --release --locked

run: build ## Serve the bundled DEMO artifact (demo key, demo secrets) on 127.0.0.1:7779
	@echo "Serving demo/demo.age.json (DEMO ONLY: its key is public in this repository)."
	@echo "In another terminal:"
	@echo "  curl -H 'Authorization: Bearer $(DEMO_TOKEN)' http://127.0.0.1:$(DEMO_PORT)/v1/secrets"
	@echo
	CLEF_AGENT_SOURCE=demo/demo.age.json CLEF_AGENT_AGE_KEY_FILE=demo/demo.agekey \
	CLEF_AGENT_TOKEN=$(DEMO_TOKEN) CLEF_AGENT_PORT=$(DEMO_PORT) ./$(BIN)

deps: ## Install what the tests need (age and openssl CLIs, moto_server/boto3/cryptography in .venv) and check the toolchain
	@command -v $(CARGO) >/dev/null || { echo "error: cargo is required (https://rustup.rs)"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy
	@if ! command -v age >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null; \
	  else echo "error: the age CLI is required by the tests: install the 'age' package (apt-get install age)"; exit 1; fi; \
	fi
	@command -v age >/dev/null || { echo "error: installing the age CLI failed"; exit 1; }
	@if ! command -v openssl >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; \
	  else echo "error: the openssl CLI is required by the Azure Key Vault tests: install the 'openssl' package"; exit 1; fi; \
	fi
	@command -v openssl >/dev/null || { echo "error: installing the openssl CLI failed"; exit 1; }
	@if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null; \
	  else echo "error: python3 with venv is required by the AWS tests: install python3 and python3-venv"; exit 1; fi; \
	fi
	@if [ ! -x $(VENV)/bin/pip ]; then \
	  rm -rf $(VENV) && python3 -m venv $(VENV) \
	    || { echo "error: python3 -m venv $(VENV) failed"; exit 1; }; \
	fi
	@if [ ! -x $(VENV)/bin/moto_server ] || ! $(VENV)/bin/python -c 'import boto3, botocore' 2>/dev/null \
	    || ! cmp -s $(AWS_REQUIREMENTS) $(VENV)/requirements.installed; then \
	  echo "Installing $(AWS_REQUIREMENTS) into $(VENV)"; \
	  $(VENV)/bin/pip install -q --disable-pip-version-check -r $(AWS_REQUIREMENTS) \
	    || { echo "error: pip install -r $(AWS_REQUIREMENTS) into $(VENV) failed"; exit 1; }; \
	  cp $(AWS_REQUIREMENTS) $(VENV)/requirements.installed; \
	fi
	@$(VENV)/bin/python -c 'import boto3, botocore, moto' && test -x $(VENV)/bin/moto_server \
	  || { echo "error: $(VENV) lacks moto_server or boto3 after the install"; exit 1; }

lint: ## rustfmt and clippy, warnings as errors
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

test: deps lint ## Install what is needed, then run every test
	$(CARGO) test --locked --all-targets
	$(MAKE) --no-print-directory test-packaging

fmt: ## Format the code
	$(CARGO) fmt

bench: static deps ## Measure size, idle RSS and spawn-to-ready time of the static executable
	python3 bench/run.py $(STATIC_BIN)

fixtures: ## Regenerate tests/fixtures (needs age, node/npm, python3 with cryptography)
	tests/fixtures/generate.sh

clean: ## Remove build output
	$(CARGO) clean

static-deps:
	@rustup target list --installed | grep -qx $(STATIC_TARGET) || rustup target add $(STATIC_TARGET)
	@if ! command -v musl-gcc >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null; \
	  else echo "error: musl-gcc is required to build ring for musl: install the 'musl-tools' package"; exit 1; fi; \
	fi

static: static-deps ## Build the fully static executable into target/static/clef-agent
	CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build --release --locked --target $(STATIC_TARGET)
	@mkdir -p $(dir $(STATIC_BIN))
	cp target/$(STATIC_TARGET)/release/clef-agent $(STATIC_BIN)
	@ldd $(STATIC_BIN) 2>&1 | grep -Eq 'statically linked|not a dynamic executable' \
	  || { echo "error: $(STATIC_BIN) is not statically linked"; exit 1; }
	@echo "$(STATIC_BIN): $$(stat -c %s $(STATIC_BIN)) bytes, static"

test-packaging: static ## Static binary alone in a chroot, systemd unit verification, Lambda layer
	tests/packaging/static_isolation.sh $(STATIC_BIN)
	tests/packaging/systemd_verify.sh $(STATIC_BIN)
	tests/packaging/lambda_layer.sh

lambda-layer: static ## Build the Lambda layer zip (target/lambda/clef-agent-layer.zip)
	packaging/lambda/build-layer.sh $(STATIC_BIN) target/lambda/clef-agent-layer.zip
