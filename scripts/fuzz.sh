#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*_fuzz.cpp; clang, ASan + UBSan; scripts/san_build.sh, in
# ${SAN_BUILD_DIR:-build-san}, the build scripts/sanitize.sh uses) and runs each for SECONDS
# (default 60) from its committed seeds in fuzz/corpus/<target>/, nproc targets at a time.
# Exits non-zero if any target finds a crash, leak, timeout or out-of-memory; the input that
# caused it is left under $BUILD_DIR/artifacts/.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (targets: safetensors idx text cli_args; default all)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(safetensors idx text cli_args)
BUILD_DIR=${SAN_BUILD_DIR:-build-san}
SAN_BUILD_DIR=$BUILD_DIR bash scripts/san_build.sh "${TARGETS[@]/%/_fuzz}"

export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"
# The targets run side by side, one per core, each on one OpenMP thread.
JOBS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc honours both
export OMP_NUM_THREADS=1
mkdir -p "$BUILD_DIR/artifacts"

run_one() {
  local t=$1 work="$BUILD_DIR/corpus/$1" log="$BUILD_DIR/artifacts/$1.log"
  # New inputs go to the first corpus directory (in the build dir), so the committed seeds stay
  # as they are. -timeout: one input running 10 s is a hang; -rss_limit_mb: no input should
  # need 2 GiB (every reader bounds its allocations by the input size).
  mkdir -p "$work"
  "$BUILD_DIR/${t}_fuzz" "$work" "fuzz/corpus/$t" -max_total_time="$SECONDS_PER_TARGET" \
    -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$BUILD_DIR/artifacts/${t}-" >"$log" 2>&1
}

echo "fuzz: ${TARGETS[*]}, ${SECONDS_PER_TARGET}s each, $JOBS at a time"
declare -A target_of=()  # running fuzzer pid -> target
failed=()
wait_one() {  # waits for one running target to end and reports it
  local pid rc=0
  wait -n -p pid "${!target_of[@]}" || rc=$?
  local t=${target_of[$pid]} log="$BUILD_DIR/artifacts/${target_of[$pid]}.log"
  unset "target_of[$pid]"
  if ((rc != 0)); then
    tail -n 80 "$log"
    echo "fuzz: $t FAILED (exit $rc); reproduce with: $BUILD_DIR/${t}_fuzz $BUILD_DIR/artifacts/${t}-*"
    failed+=("$t")
  else
    echo "fuzz: $t: $(awk '/^stat::number_of_executed_units/{print $2}' "$log") executions," \
      "$(awk '/^stat::new_units_added/{print $2}' "$log") new inputs," \
      "$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)"
  fi
}
for t in "${TARGETS[@]}"; do
  while ((${#target_of[@]} >= JOBS)); do wait_one; done
  run_one "$t" &
  target_of[$!]=$t
done
while ((${#target_of[@]})); do wait_one; done
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: all targets ran without a crash"
