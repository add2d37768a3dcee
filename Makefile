# Thin wrapper: everything real lives in CMake and the seqmix binary.
BUILD ?= build
JOBS ?= $(shell nproc)
CONFIG ?= configs/quickstart.yaml
CMAKE_FLAGS ?=

.PHONY: setup configure build test train clean

setup:
	@bash scripts/setup.sh

configure: setup
	@cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS) > $(BUILD).configure.log 2>&1 || (cat $(BUILD).configure.log; exit 1)

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# Runs every test; GPU tests (label `gpu`) report as skipped where there is no GPU.
test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

train: build
	@bash scripts/train.sh $(BUILD) $(CONFIG)

clean:
	rm -rf $(BUILD) $(BUILD).configure.log
