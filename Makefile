# Thin wrapper over CMake/CTest: the README's commands and nothing clever.
# `make` builds a release tree in build/; `make check` runs the whole suite
# (plain, then ASan+UBSan, then TSan on the thread tests); `make bench` runs
# braid-bench --quick; `make install` installs to PREFIX (default /usr/local);
# `make demo-mdi` runs the GTK windows <-> tabs demo on your desktop.
PREFIX ?= /usr/local
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE  ?= cmake
CTEST  ?= ctest

.PHONY: all bootstrap build check check-plain check-asan check-tsan bench install clean demo-mdi

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

demo-mdi: build
	@test -x build/examples/mdi/braid-mdi || { echo "demo-mdi: not built (GTK 3 missing? make bootstrap)"; exit 1; }
	@build/examples/mdi/braid-mdi $(DEMO_ARGS)

install: build
	@$(CMAKE) --install build

clean:
	rm -rf build build-*
