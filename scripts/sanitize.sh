#!/usr/bin/env bash
# Builds mixtrain with AddressSanitizer + UndefinedBehaviorSanitizer (MIXTRAIN_SANITIZE) into
# ${ASAN_BUILD_DIR:-build-asan} and runs the test suite there. Any report fails its test (ASan
# exits non-zero; UBSan is compiled with -fno-sanitize-recover), so the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIXTRAIN_SANITIZE=ON \
  -DMIXTRAIN_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"

# Leak checking stays on (the default on x86-64 Linux). libgomp's thread pool gives no false
# reports under ASan + LSan, so OpenMP needs no suppression. OpenMPI does: MPI_Init's allocations
# (libmpi, libopen-pal and the MCA plugins it dlopens) are never freed, and LSan reports them in
# every rank that mpirun starts. Those stacks run through libraries built without frame
# pointers, so matching them needs the slow unwinder at malloc (fast_unwind_on_malloc=0), which
# only the Dist tests (the only ones under mpirun) get, in a second ctest run.
SUPP="$PWD/$BUILD_DIR/lsan.supp"
cat >"$SUPP" <<'SUPPRESSIONS'
leak:libmpi.so
leak:libopen-pal.so
leak:libopen-rte.so
leak:libpmix.so
leak:libhwloc.so
leak:libevent
leak:mca_
SUPPRESSIONS
ASAN_BASE="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1"
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$SUPP"
# UBSan prints a stack so a report names the line (the build already aborts on the first one).
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"

# Excluded, for time (the whole CI, plain and sanitized builds together, must stay well under
# 15 minutes on 2 cores), each covered by the plain build's test run:
# - DtypeExhaustive: all 2^32 fp32 patterns through every conversion path (~100 s under ASan);
#   pure arithmetic on fixed-size buffers.
# - AmpMlp.*, Trainer.GptLossFallsInEveryPrecision: ~50 s each under ASan; long training loops
#   over the same op, optimizer and checkpoint code that shorter tests run here. Their
#   assertions are loss tolerances, and they do not hold across optimisation levels (two
#   AmpMlp checks fail in this RelWithDebInfo build with no sanitizer report).
EXCLUDE='^(DtypeExhaustive\.|AmpMlp\.|Trainer\.GptLossFallsInEveryPrecision$|Dist\.)'
cd "$BUILD_DIR"
status=0
ASAN_OPTIONS="$ASAN_BASE" ctest --output-on-failure -j"$(nproc)" -E "$EXCLUDE" || status=$?
ASAN_OPTIONS="$ASAN_BASE:fast_unwind_on_malloc=0" ctest --output-on-failure -j"$(nproc)" \
  -R '^Dist\.' || status=$?
exit "$status"
