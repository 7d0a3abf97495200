#!/usr/bin/env bash
# Runs `mixtrain bench step` and the PyTorch peer (bench/peer_torch.py) on the benchmark
# workloads, alternating mixtrain and torch per workload so both see the same machine load,
# then prints the ratios and writes them with every raw result to bench/results/compare.json.
#
#   scripts/bench_compare.sh [BUILD_DIR] [OUT_JSON]      (ROUNDS=2 repeats the alternation)
#
# PEER_GPT=0 leaves PyTorch out of the GPT runs: on CPUs without AVX512-BF16 Debian's torch has
# neither bf16 kernels nor an fp32 BLAS, and one GPT step takes minutes there. The machine
# (`mixtrain info --json`) is recorded with the results.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
OUT=${2:-bench/results/compare.json}
ROUNDS=${ROUNDS:-1}
REPEATS=${REPEATS:-7}
PEER_GPT=${PEER_GPT:-1}
MIX="$BUILD/mixtrain"
PY=/usr/bin/python3
[[ -x "$MIX" ]] || { echo "bench_compare: $MIX not built (cmake --build $BUILD --target mixtrain)" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# name | mixtrain args | torch args (empty: mixtrain only)
RUNS=(
  "mlp-bf16|--model mlp --precision bf16 --repeats $REPEATS|--model mlp --precision bf16 --repeats $REPEATS"
  "mlp-fp32|--model mlp --precision fp32 --repeats $REPEATS|"
  "gpt-bf16|--model gpt --precision bf16 --repeats $REPEATS|--model gpt --precision bf16 --repeats $REPEATS"
  "gpt-fp32|--model gpt --precision fp32 --repeats $REPEATS|"
  "gpt32-bf16|--model gpt --precision bf16 --batch 32 --repeats 3 --warmup 1|--model gpt --precision bf16 --batch 32 --repeats 3 --warmup 1"
  "gpt32-fp32|--model gpt --precision fp32 --batch 32 --repeats 3 --warmup 1|"
  "mlp-fp16|--model mlp --precision fp16 --repeats $REPEATS|"
  "gpt-fp16|--model gpt --precision fp16 --repeats $REPEATS|"
  "gpt32-fp16|--model gpt --precision fp16 --batch 32 --repeats 3 --warmup 1|"
)
"$MIX" info --json >"$TMP/machine.info"
for ((round = 0; round < ROUNDS; ++round)); do
  for spec in "${RUNS[@]}"; do
    IFS='|' read -r name margs targs <<<"$spec"
    [[ $PEER_GPT == 1 || $name == mlp-* ]] || targs=""
    echo "== round $round: $name (mixtrain)" >&2
    # Each configuration in its own process: peak RSS is per process.
    "$MIX" bench step $margs --json >"$TMP/$round-mix-$name.json"
    if [[ -n "$targs" ]]; then
      echo "== round $round: $name (torch)" >&2
      "$PY" bench/peer_torch.py $targs --json >"$TMP/$round-torch-$name.json"
    fi
  done
done
mkdir -p "$(dirname "$OUT")"
"$PY" bench/compare_report.py "$TMP" "$OUT"
