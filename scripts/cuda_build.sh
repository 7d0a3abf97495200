#!/usr/bin/env bash
# Builds mixtrain with its CUDA backend (MIXTRAIN_CUDA=ON) into ${CUDA_BUILD_DIR:-build-cuda}:
# the CLI and test_backend_ops, then runs both. Without a GPU (CI) that checks the CUDA code
# compiles and links against the toolkit and that the backend reports why it cannot run (the
# harness lists cuda as skipped); on a GPU machine the harness runs every op on it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${CUDA_BUILD_DIR:-build-cuda}
if [[ ! -x /usr/local/cuda/bin/nvcc ]] && ! command -v nvcc >/dev/null; then
  echo "cuda_build: no CUDA toolkit (nvcc) on this machine: nothing to build" >&2
  exit 0
fi
# Warnings are errors for the CUDA code (nvcc's --Werror all-warnings) and the C++ of src/cuda
# and src/dist/nccl (MIXTRAIN_CUDA_WERROR). The architectures are CMakeLists.txt's default
# (70;80;89;90, with 75 for 70 under CUDA 13, which dropped sm_70).
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DMIXTRAIN_CUDA=ON -DMIXTRAIN_CUDA_WERROR=ON \
  -DMIXTRAIN_BUILD_TESTS=ON -DMIXTRAIN_BUILD_BENCH=OFF "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target mixtrain test_backend_ops
"$BUILD_DIR/mixtrain" info
"$BUILD_DIR/tests/test_backend_ops" >"$BUILD_DIR/backend_ops.txt" || {
  cat "$BUILD_DIR/backend_ops.txt"
  exit 1
}
grep -E '^\*|test_backend_ops:' "$BUILD_DIR/backend_ops.txt"
