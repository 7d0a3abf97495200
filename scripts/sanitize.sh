#!/usr/bin/env bash
# Builds mixtrain with AddressSanitizer + UndefinedBehaviorSanitizer (scripts/san_build.sh:
# clang -O1, ${SAN_BUILD_DIR:-build-san}, shared with scripts/fuzz.sh) and runs the whole test
# suite there. Any report fails its test (ASan exits non-zero; UBSan is compiled with
# -fno-sanitize-recover), so the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${SAN_BUILD_DIR:-build-san}
SAN_BUILD_DIR=$BUILD_DIR bash scripts/san_build.sh

# Leak checking stays on (the default on x86-64 Linux). OpenMP (LLVM's libomp here, and the
# libgomp that oneDNN brings) gives no leak reports. OpenMPI does: some of what MPI_Init and its
# first collectives allocate is never freed, by plugins that MPI_Finalize unloads, so the
# reports name no library. The MPI backend runs its own calls with leak tracking off
# (src/dist/mpi/comm_mpi.cpp); what is left is OpenMPI's progress thread (libevent), whose
# stacks run through libraries built without frame pointers: matching them needs the slow
# unwinder at malloc, which only the tests under mpirun get, in a second ctest run, and only 12
# frames deep. Those 7 tests took 68 s with the full stacks and the old
# list of MPI libraries to suppress, 32 s so; a leak injected into comm_mpi.cpp is still reported.
SUPP="$PWD/$BUILD_DIR/lsan.supp"
echo "leak:libevent" >"$SUPP"
ASAN_BASE="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$SUPP"
# UBSan prints a stack so a report names the line (the build already aborts on the first one).
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"
# Nothing is excluded. The one test shortened: DtypeExhaustive checks every 17th block of 2^16
# fp32 patterns (3856 of 65536 blocks: every sign, exponent and rounding case, on every
# conversion path) instead of all 2^32, which take ~2 CPU-minutes under ASan and find no
# memory error the strided sweep would miss (fixed-size buffers, the same code per block).
# The plain build's run (scripts/test.sh) checks all 2^32.
export MIXTRAIN_EXHAUSTIVE_STRIDE=${MIXTRAIN_EXHAUSTIVE_STRIDE:-17}

cd "$BUILD_DIR"
status=0
JOBS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
# The tests that run ranks under mpirun: the Dist tests and the sharded kill-and-resume test.
MPIRUN_TESTS='^Dist\.|^KillResume\.Sharded'
ASAN_OPTIONS="$ASAN_BASE" ctest --output-on-failure -j"$JOBS" -E "$MPIRUN_TESTS" || status=$?
ASAN_OPTIONS="$ASAN_BASE:fast_unwind_on_malloc=0:malloc_context_size=12" \
  ctest --output-on-failure -j"$JOBS" -R "$MPIRUN_TESTS" || status=$?
exit "$status"
