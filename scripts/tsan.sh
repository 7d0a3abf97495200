#!/usr/bin/env bash
# Builds mixtrain with ThreadSanitizer (MIXTRAIN_TSAN: clang -O1, LLVM's libomp) into
# ${TSAN_BUILD_DIR:-build-tsan} and runs tests there with OpenMP on 4 threads. Any data race
# TSan sees fails its test (TSan exits 66), so the script exits non-zero.
# Usage: scripts/tsan.sh            the whole suite (everything built)
#        scripts/tsan.sh --kernels  the threaded kernels only: tests/threads_test.cpp, which runs
#                                   every OpenMP region of src/ on a team of 4 threads, and the
#                                   storage allocator's tests (tests/memory_test.cpp: step plans
#                                   with other threads allocating); only the library, the CLI
#                                   and those tests are built (what .ci/run runs)
#
# OpenMP under TSan: libomp's barriers and task handoffs are invisible to TSan (libomp is not
# instrumented), so the archer tool (libomp-dev: libarcher.so, loaded through OMP_TOOL_LIBRARIES)
# reports them to TSan through OMPT. oneDNN (Debian's, built for libgomp) binds to libomp's
# GOMP_* entry points in this build, so its regions are covered by archer too; its own code is
# not instrumented, and ignore_noninstrumented_modules=1 keeps TSan from checking memory that
# uninstrumented libraries (oneDNN, OpenMPI) touch through intercepted calls (memcpy, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${TSAN_BUILD_DIR:-build-tsan}
ARCHER=${ARCHER_LIBRARY:-/usr/lib/llvm-14/lib/libarcher.so}
if [[ ! -f "$ARCHER" ]]; then
  echo "tsan: $ARCHER not found (Debian: apt-get install libomp-dev; or set ARCHER_LIBRARY)" >&2
  exit 1
fi
cmake -S . -B "$BUILD_DIR" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" -DMIXTRAIN_TSAN=ON \
  -DMIXTRAIN_BUILD_BENCH=OFF >/dev/null
JOBS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc honours both
if [[ "${1:-}" == --kernels ]]; then
  cmake --build "$BUILD_DIR" -j"$JOBS" --target threads_test memory_test
  FILTER=(-R '^(Threads|MemoryPlan|StepMemoryScope)\.')
else
  cmake --build "$BUILD_DIR" -j"$JOBS"
  FILTER=()
fi

export OMP_TOOL_LIBRARIES="$ARCHER"
export TSAN_OPTIONS="${TSAN_OPTIONS:+$TSAN_OPTIONS:}ignore_noninstrumented_modules=1:second_deadlock_stack=1"
# 4 threads, more than the 2 cores: the OS interleaves them more ways than one per core.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# As in scripts/sanitize.sh: every 17th block of the 2^32 fp32 patterns (see the test).
export MIXTRAIN_EXHAUSTIVE_STRIDE=${MIXTRAIN_EXHAUSTIVE_STRIDE:-17}
cd "$BUILD_DIR"
ctest --output-on-failure -j"$JOBS" "${FILTER[@]}"
