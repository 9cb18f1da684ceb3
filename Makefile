# Quick start: `make run` (dependencies, configure, build, run `kvtier demo`) and
# `make test` (the same set-up, then the whole suite through ctest).
BUILD_DIR ?= build
BUILD_TYPE ?= RelWithDebInfo
KVTIER_CUDA ?= AUTO
JOBS ?= $(shell nproc)
# CI sets CI=true: warnings become errors there.
WERROR := $(if $(filter true,$(CI)),ON,OFF)

.PHONY: all deps configure build run test clean

all: build

deps:
	./scripts/install-deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	  -DKVTIER_CUDA=$(KVTIER_CUDA) -DKVTIER_WERROR=$(WERROR)

configure: deps $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

run: build
	./$(BUILD_DIR)/tools/kvtier/kvtier demo

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 900

clean:
	rm -rf $(BUILD_DIR)
