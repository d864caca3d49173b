# Thin wrapper over CMake/CTest: the README's commands and nothing clever.
# `make` builds a release tree in build/; `make check` runs the whole suite
# (plain, then ASan+UBSan, then TSan on the thread tests); `make bench` runs
# braid-bench --quick; `make install` installs to PREFIX (default /usr/local).
PREFIX ?= /usr/local
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE  ?= cmake
CTEST  ?= ctest

.PHONY: all bootstrap build check check-plain check-asan check-tsan bench install clean

all: build

bootstrap:
	@scripts/bootstrap

build: bootstrap
	@$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	@$(CMAKE) --build build -j $(JOBS)

check: bootstrap
	@scripts/check

check-plain check-asan check-tsan: bootstrap
	@scripts/check $(subst check-,,$@)

bench: build
	@build/bench/braid-bench --quick $(BENCH_ARGS)

install: build
	@$(CMAKE) --install build

clean:
	rm -rf build build-*
