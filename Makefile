# Consort: the two commands are `make demo` and `make test`; both provision what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help
NODE_BIN := $(shell bash scripts/node.sh)
export PATH := $(NODE_BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

STAMP := node_modules/.consort-setup

.PHONY: help setup demo test bench lint typecheck format build clean cluster cluster-down kube prometheus chromium crds dashboards

help:
	@echo "make demo   - train the five-hospital example on this machine (out/hospitals/)"
	@echo "make test   - the whole test suite"
	@echo "make bench  - benchmarks (FedProx paper, backend throughput, 1000-site simulation)"
	@echo "make lint   - formatter/linter and type check"
	@echo "make cluster - a local Kubernetes control plane with the operator (until Ctrl-C or make cluster-down)"
	@echo "make crds   - regenerate crds/ from the zod FederatedJob schema (core/job)"
	@echo "make dashboards - regenerate manifests/grafana/ from the dashboard code (operator/dashboard)"

# npm packages (install scripts off: tfjs-node's would download libtensorflow), then the native
# TF.js backend built from PyPI's tensorflow-cpu wheel (cached outside the checkout).
# And a current nats-server built from its Go module (tests and `consort run --nats embedded`).
# nats.js's parser is patched to gather a large payload at its final size (scripts/nats-js-patch.mjs).
$(STAMP): package.json package-lock.json scripts/tfjs-native.sh scripts/nats-server.sh scripts/nats-js-patch.mjs
	npm ci --ignore-scripts --no-audit --no-fund
	node scripts/nats-js-patch.mjs
	bash scripts/tfjs-native.sh
	bash scripts/nats-server.sh >/dev/null
	@touch $@

setup: $(STAMP)

demo: setup
	node cli/consort.ts run manifests/examples/hospitals.yaml --baselines --out out/hospitals

test: setup kube prometheus chromium
	npx vitest run

# The control plane of the tests and `make cluster`: kube-apiserver, controller manager, scheduler,
# kubectl and etcd built from their Go modules once (several minutes), then cached.
kube:
	bash scripts/kube.sh >/dev/null

# Prometheus 3.x and promtool, built from their Go module once (a few minutes), then cached: the
# tests scrape the operator with it and check the alert rules and the metrics with promtool.
prometheus:
	bash scripts/prometheus.sh >/dev/null

# A headless Chromium (Debian's package, installed once) that playwright-core drives to open the
# run report (test/e2e/report-browser.test.ts); nothing is downloaded from Playwright's CDN.
chromium:
	bash scripts/chromium.sh >/dev/null

cluster: setup kube
	node scripts/cluster.ts

cluster-down:
	@if [ -f out/cluster/pid ]; then pid=$$(cat out/cluster/pid); kill -TERM $$pid && while kill -0 $$pid 2>/dev/null; do sleep 0.2; done; echo "cluster stopped"; else echo "no cluster running"; fi

bench: setup
	node test/bench/run.ts

typecheck: setup
	npx tsc --noEmit -p .

lint: setup
	npx biome check .
	npx tsc --noEmit -p .
	node operator/crd/generate.ts --check
	node operator/dashboard/generate.ts --check

# The CRD is generated from the zod schema, never edited by hand; `make lint` fails when it is stale.
crds: setup
	node operator/crd/generate.ts

# The Grafana dashboard (JSON and its sidecar ConfigMap) is generated from TypeScript; `make lint` fails when it is stale.
dashboards: setup
	node operator/dashboard/generate.ts

format: setup
	npx biome check --write .

build: setup
	npx tsc -p tsconfig.build.json

clean:
	rm -rf out dist test/artifacts
