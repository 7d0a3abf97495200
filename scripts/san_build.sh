#!/usr/bin/env bash
# Configures and builds the sanitizer build that scripts/sanitize.sh and scripts/fuzz.sh share:
# clang, ASan + UBSan on every target, libFuzzer coverage on the library and the CLI
# (MIXTRAIN_FUZZ), -O1 with line tables, no benchmarks, in ${SAN_BUILD_DIR:-build-san}.
# Usage: scripts/san_build.sh [TARGET...]   (default: everything: library, CLI, tests, fuzz targets)
#
# One build for both, measured on the 2-core machine: ~400 s of compiler CPU at -O1 (~480 s at
# -O2, the suite no faster there). Before, a g++ ASan build for the suite and a separate clang
# coverage build for the fuzz targets each cost about as much again.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SAN_BUILD_DIR:-build-san}
cmake -S . -B "$BUILD_DIR" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" -DMIXTRAIN_FUZZ=ON \
  -DMIXTRAIN_BUILD_BENCH=OFF >/dev/null
if (($#)); then
  cmake --build "$BUILD_DIR" -j"$(nproc)" --target "$@"
else
  cmake --build "$BUILD_DIR" -j"$(nproc)"
fi
