# Top-level entry points. `make demo` and `make test` each do the whole set-up on a
# fresh Debian 12 machine: install the packages, configure, build, then run.
# scripts/fresh-check runs them in a fresh debian:12-slim container and times them.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: all deps demo-deps configure build test unit demo cluster cluster-down bench sanitize fuzz format clean

all: build

CONFIGURE = cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

deps:
	bash scripts/install-deps

configure: deps
	$(CONFIGURE)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	bash scripts/test $(BUILD)

unit: build
	ctest --test-dir $(BUILD) -L unit --output-on-failure

# The demo installs and builds only what it runs: the pmdrl tool and the three processes
# `pmdrl local` starts (the tests' tools, tests and benches wait for `make build` / `make test`).
DEMO_TARGETS = pmdrl pmdrl-learner pmdrl-actor pmdrl-verifier
demo-deps:
	bash scripts/install-deps --demo

demo: demo-deps
	$(CONFIGURE)
	cmake --build $(BUILD) -j $(JOBS) --target $(DEMO_TARGETS)
	bash scripts/demo $(BUILD)

# The docker-compose cluster (deploy/docker-compose.yml): Docker engine, base image, token,
# image build and `up` with ACTORS (3) actors and VERIFIERS (2) verifiers; see scripts/cluster.
cluster:
	bash scripts/cluster up

cluster-down:
	bash scripts/cluster down

bench: build
	$(BUILD)/bench/throughput_bench

# Unit tests under AddressSanitizer + UndefinedBehaviorSanitizer.
sanitize: deps
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DPMDRL_SANITIZE=ON
	cmake --build build-asan -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=0 ctest --test-dir build-asan -L unit --output-on-failure

# The libFuzzer targets (fuzz/): built with clang in build-fuzz/, each run FUZZ_SECONDS over
# its seed corpus (scripts/fuzz; FUZZ_SECONDS=0 FUZZ_ARGS=-runs=1000000 runs a count instead).
FUZZ_SECONDS ?= 60
FUZZ_ARGS ?=
fuzz: deps
	bash scripts/fuzz $(FUZZ_SECONDS) $(FUZZ_ARGS)

format:
	clang-format -i $$(git ls-files '*.cc' '*.h')

clean:
	rm -rf $(BUILD) build-asan build-fuzz
