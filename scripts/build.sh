#!/usr/bin/env bash
# Configures and builds mixtrain (Release) into ${BUILD_DIR:-build}: the CPU build (CI's build
# and test stages), so the CUDA backend is off whatever the folder's cache says (MIXTRAIN_CUDA
# is opt-in; scripts/cuda_build.sh builds it). Arguments go to CMake after it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DMIXTRAIN_CUDA=OFF "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
