# pdpool: the entry points. `make test` takes a fresh machine to green tests; `make demo` runs
# the local rack demo.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CTEST_ARGS ?=

.PHONY: all deps build test unit-test agent-test integration-test format bench demo demo-down chart-crds cluster-up cluster-down clean

all: build

deps:
	bash deploy/local/deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja

build: $(BUILD_DIR)/build.ninja
	cmake --build $(BUILD_DIR) -j $(JOBS)

# Everything: unit tests, then integration tests against a real local control plane.
test: deps build
	cd $(BUILD_DIR) && ctest --output-on-failure $(CTEST_ARGS)

unit-test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -L unit $(CTEST_ARGS)

agent-test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -L agent $(CTEST_ARGS)

integration-test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -L integration $(CTEST_ARGS)

format:
	find common controller agent tests bench -name '*.h' -o -name '*.cc' | xargs clang-format -i --style=file

bench: deps build
	bash bench/controller_scale.sh
	$(BUILD_DIR)/router_overhead

# The chart carries a copy of crds/ (Helm installs CRDs from the chart's crds/); a test fails
# when they differ.
chart-crds:
	bash tests/chart/sync_crds.sh

cluster-up: deps
	bash deploy/local/cluster.sh up

cluster-down:
	bash deploy/local/cluster.sh down

# The main job: the local rack demo (deploy/local/demo.sh; options in README.md "The demo").
DEMO_ARGS = $(if $(TRACE),--trace $(TRACE),) $(if $(COMPRESSION),--compression $(COMPRESSION),) \
	$(if $(RATE),--rate-multiplier $(RATE),) $(if $(WINDOW),--window $(WINDOW),) \
	$(if $(DURATION),--duration $(DURATION),) $(if $(KEEP),--keep,)
demo: deps build
	bash deploy/local/demo.sh up $(DEMO_ARGS)

demo-down:
	bash deploy/local/demo.sh down

clean:
	rm -rf $(BUILD_DIR)
