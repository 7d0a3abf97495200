#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*_fuzz.cpp; clang, ASan + UBSan) into
# ${FUZZ_BUILD_DIR:-build-fuzz} and runs each for SECONDS (default 60), one after the other,
# starting from its committed seeds in fuzz/corpus/<target>/. Exits non-zero on the first crash,
# leak, timeout or out-of-memory; the input that caused it is left under $BUILD_DIR/artifacts/.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (targets: safetensors idx text cli_args; default all)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(safetensors idx text cli_args)
BUILD_DIR=${FUZZ_BUILD_DIR:-build-fuzz}

cmake -S . -B "$BUILD_DIR" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMIXTRAIN_FUZZ=ON -DMIXTRAIN_BUILD_TESTS=OFF -DMIXTRAIN_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target "${TARGETS[@]/%/_fuzz}"

export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"
mkdir -p "$BUILD_DIR/artifacts"
for t in "${TARGETS[@]}"; do
  # New inputs go to the first corpus directory (in the build dir), so the committed seeds stay
  # as they are. -timeout: one input running 10 s is a hang; -rss_limit_mb: no input should need
  # 2 GiB (every reader bounds its allocations by the input size).
  work="$BUILD_DIR/corpus/$t"
  mkdir -p "$work"
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s"
  log="$BUILD_DIR/artifacts/${t}.log"
  rc=0
  "$BUILD_DIR/${t}_fuzz" "$work" "fuzz/corpus/$t" -max_total_time="$SECONDS_PER_TARGET" \
    -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$BUILD_DIR/artifacts/${t}-" >"$log" 2>&1 || rc=$?
  if ((rc != 0)); then
    tail -n 80 "$log"
    echo "fuzz: $t FAILED (exit $rc); reproduce with: $BUILD_DIR/${t}_fuzz $BUILD_DIR/artifacts/${t}-*"
    exit "$rc"
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)|cov:' "$log" | tail -n 4
done
echo "fuzz: all targets ran without a crash"
