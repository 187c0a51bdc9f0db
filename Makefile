# clef-agent developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
BIN := target/release/clef-agent
# The shipped executable: musl, fully static (packaging/README.md has the musl/glibc numbers).
STATIC_TARGET := x86_64-unknown-linux-musl
STATIC_BIN := target/static/clef-agent
# `make run` listens on CLEF_AGENT_PORT when it is set, like the agent itself.
DEMO_PORT ?= $(or $(CLEF_AGENT_PORT),7779)
DEMO_TOKEN ?= demo-token-not-secret
# The Python environment of the AWS tests (moto_server, boto3, botocore), git-ignored.
VENV := .venv
AWS_REQUIREMENTS := tests/aws/requirements.txt
# The Kubernetes schema validator of tests/packaging/kubernetes_sidecar.sh, also in .venv.
PACKAGING_REQUIREMENTS := tests/packaging/requirements.txt
# What `make image` tags: push it to your registry under your own name (README, Deployment).
IMAGE ?= localhost/clef-agent:dev

.PHONY: help build run test deps lint fmt bench bench-deps fixtures clean static static-deps test-packaging test-systemd lambda-layer fuzz image podman-deps packaging-deps

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

build: ## Build the release binary (target/release/clef-agent)
	$(CARGO) build --release --locked

run: build ## Serve the bundled DEMO artifact (demo key, demo secrets) on 127.0.0.1:7779 (or CLEF_AGENT_PORT)
	@echo "Serving demo/demo.age.json (DEMO ONLY: its key is public in this repository)."
	@echo "In another terminal:"
	@echo "  curl -H 'Authorization: Bearer $(DEMO_TOKEN)' http://127.0.0.1:$(DEMO_PORT)/v1/secrets"
	@echo
	CLEF_AGENT_SOURCE=demo/demo.age.json CLEF_AGENT_AGE_KEY_FILE=demo/demo.agekey \
	CLEF_AGENT_TOKEN=$(DEMO_TOKEN) CLEF_AGENT_PORT=$(DEMO_PORT) ./$(BIN)

deps: ## Install what the tests need (age, openssl and node, moto_server/boto3/cryptography in .venv) and check the toolchain
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
	@if ! command -v node >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null; \
	  else echo "error: node is required by the HTTP client tests: install the 'nodejs' package"; exit 1; fi; \
	fi
	@command -v node >/dev/null || { echo "error: installing nodejs failed"; exit 1; }
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

bench: static deps bench-deps ## Size, idle RSS, start-up, throughput vs nginx, and pipeline time (~4 min)
	python3 bench/run.py $(STATIC_BIN)
	$(CARGO) bench --locked --bench pipeline

bench-deps:
	@for tool in wrk nginx taskset; do \
	  if ! command -v $$tool >/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light util-linux >/dev/null; \
	    else echo "error: the benchmark needs $$tool: apt-get install wrk nginx-light util-linux"; exit 1; fi; \
	  fi; \
	  command -v $$tool >/dev/null || { echo "error: installing $$tool failed"; exit 1; }; \
	done

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

test-packaging: static lambda-layer deps podman-deps packaging-deps ## Static binary in a chroot, the image under podman, the Kubernetes pod, systemd unit, Lambda layer (also under AWS's emulator)
	tests/packaging/static_isolation.sh $(STATIC_BIN)
	tests/packaging/container_image.sh
	tests/packaging/kubernetes_sidecar.sh
	tests/packaging/systemd_verify.sh $(STATIC_BIN)
	tests/packaging/lambda_layer.sh
	tests/packaging/lambda_rie.sh target/lambda/clef-agent-layer.zip

# Not in `make test`: the first run builds a Debian root file system (cached in target/systemd-rootfs/).
test-systemd: static ## The systemd unit under a real systemd (mmdebstrap root fs booted with systemd-nspawn; root)
	tests/packaging/systemd_boot.sh $(STATIC_BIN)

image: static podman-deps ## Build the scratch image localhost/clef-agent:dev (or IMAGE=…) with podman from target/static/clef-agent
	podman build --format docker -f packaging/docker/Dockerfile --build-arg BINARY=prebuilt -t $(IMAGE) .
	@echo "$(IMAGE): $$(podman image inspect --format '{{.Size}}' $(IMAGE)) bytes"

# podman and runc run the image and the Kubernetes pod; Debian's static busybox is the
# stand-in application in a scratch image (nothing can be pulled in CI).
podman-deps:
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null || [ ! -x /bin/busybox ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc busybox-static >/dev/null; \
	  else echo "error: the container tests need podman, runc and a static busybox: apt-get install podman runc busybox-static"; exit 1; fi; \
	fi
	@command -v podman >/dev/null && command -v runc >/dev/null && [ -x /bin/busybox ] \
	  || { echo "error: installing podman, runc and busybox-static failed"; exit 1; }

packaging-deps:
	@if [ ! -x $(VENV)/bin/pip ]; then \
	  rm -rf $(VENV) && python3 -m venv $(VENV) \
	    || { echo "error: python3 -m venv $(VENV) failed"; exit 1; }; \
	fi
	@if [ ! -x $(VENV)/bin/kubernetes-validate ] || ! cmp -s $(PACKAGING_REQUIREMENTS) $(VENV)/packaging-requirements.installed; then \
	  echo "Installing $(PACKAGING_REQUIREMENTS) into $(VENV)"; \
	  $(VENV)/bin/pip install -q --disable-pip-version-check -r $(PACKAGING_REQUIREMENTS) \
	    || { echo "error: pip install -r $(PACKAGING_REQUIREMENTS) into $(VENV) failed"; exit 1; }; \
	  cp $(PACKAGING_REQUIREMENTS) $(VENV)/packaging-requirements.installed; \
	fi
	@test -x $(VENV)/bin/kubernetes-validate && $(VENV)/bin/python -c 'import yaml' \
	  || { echo "error: $(VENV) lacks kubernetes-validate or PyYAML after the install"; exit 1; }

lambda-layer: static ## Build the Lambda layer zip (target/lambda/clef-agent-layer.zip)
	packaging/lambda/build-layer.sh $(STATIC_BIN) target/lambda/clef-agent-layer.zip

# cargo fuzz (fuzz/README.md): each target runs FUZZ_SECONDS on its committed corpus
# fuzz/corpus/<target>, which is then minimized (cargo fuzz cmin) to the inputs that keep its
# edge coverage (-use_counters=0: hit-count variants are dropped, so the corpus stays small).
# Crashes land in fuzz/artifacts/<target>/; logs in fuzz/target/logs/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= artifact decrypt routing
# Extra libFuzzer flags, e.g. FUZZ_FLAGS=-fork=2.
FUZZ_FLAGS ?=
FUZZ_LOGS := fuzz/target/logs

fuzz: ## Fuzz each target for FUZZ_SECONDS (60) on nightly, minimize the corpus, print executions
	@command -v rustup >/dev/null || { echo "error: cargo fuzz needs the nightly toolchain: install rustup (https://rustup.rs)"; exit 1; }
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal \
	  || { echo "error: rustup toolchain install nightly failed"; exit 1; }
	@$(CARGO) +nightly fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked \
	  || { echo "error: cargo install cargo-fuzz --locked failed"; exit 1; }
	@$(CARGO) +nightly fuzz --version >/dev/null 2>&1 || { echo "error: cargo +nightly fuzz does not run after the install"; exit 1; }
	$(CARGO) +nightly fuzz build --debug-assertions
	@mkdir -p $(FUZZ_LOGS); failed=""; summary=""; \
	for target in $(FUZZ_TARGETS); do \
	  log=$(FUZZ_LOGS)/$$target.log; mkdir -p fuzz/corpus/$$target; \
	  echo "fuzz: $$target for $(FUZZ_SECONDS) s (log: $$log)"; \
	  if $(CARGO) +nightly fuzz run --debug-assertions $$target fuzz/corpus/$$target -- \
	      -max_total_time=$(FUZZ_SECONDS) -timeout=10 -dict=fuzz/dict/$$target.dict -print_final_stats=1 \
	      $(FUZZ_FLAGS) >$$log 2>&1; then \
	    result=ok; \
	    $(CARGO) +nightly fuzz cmin --debug-assertions $$target fuzz/corpus/$$target -- -use_counters=0 >>$$log 2>&1 \
	      || { result="cmin failed"; failed="$$failed $$target"; }; \
	  else \
	    result=FAILED; failed="$$failed $$target"; tail -n 40 $$log; \
	  fi; \
	  execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log | tail -n 1); \
	  [ -n "$$execs" ] || execs=$$(grep -oE '^#[0-9]+' $$log | tail -n 1 | tr -d '#'); \
	  rate=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $$log | tail -n 1); \
	  files=$$(find fuzz/corpus/$$target -type f | wc -l); size=$$(find fuzz/corpus/$$target -type f -printf '%s\n' | awk '{s += $$1} END {print int(s / 1024)}'); \
	  summary="$$summary$$(printf '%-10s %12s %10s %8s %8s KiB  %s' $$target "$${execs:-?}" "$${rate:-?}" $$files $$size "$$result")\n"; \
	done; \
	printf '\n%-10s %12s %10s %8s %12s  %s\n' target executions 'execs/s' 'corpus' 'size' result; \
	printf "$$summary"; \
	if [ -n "$$failed" ]; then \
	  echo "error: fuzzing failed for:$$failed (crash inputs in fuzz/artifacts/<target>/, logs in $(FUZZ_LOGS)/)"; exit 1; \
	fi
