#!/usr/bin/env bash
# Regenerates every figure in the README: runs the benchmarks and training comparisons, keeps
# their JSON under results/, and rewrites the README's generated sections from that JSON.
# Usage: bash scripts/results.sh [all|gemm|mlp|gpt|step|readme]   (default all; ~40 min)
# Environment: MLP_EPOCHS (10), GPT_STEPS (300).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
bash scripts/build.sh >/dev/null
BIN=./build/mixtrain
mkdir -p results
MLP_EPOCHS=${MLP_EPOCHS:-10}
GPT_STEPS=${GPT_STEPS:-300}

if [[ $what == all || $what == gemm ]]; then
  echo "== GEMM and conversion benchmarks"
  $BIN bench gemm --json > results/gemm.json
  $BIN bench convert --json > results/convert.json
  # memcpy_gbps is one thread: the one-thread conversion is the like-for-like comparison.
  OMP_NUM_THREADS=1 $BIN bench convert --json > results/convert_1thread.json
  $BIN info --json > results/info.json 2>/dev/null || $BIN info > results/info.txt
fi
if [[ $what == all || $what == mlp ]]; then
  echo "== Fashion-MNIST MLP, $MLP_EPOCHS epochs, every precision"
  rm -rf results/compare-mlp
  $BIN compare --model mlp --epochs "$MLP_EPOCHS" --precisions fp32,bf16,fp16,fp16:none \
    --seed 1 --quiet --out results/compare-mlp
fi
if [[ $what == all || $what == gpt ]]; then
  echo "== GPT 6x384, context 256, $GPT_STEPS steps on the Jargon File"
  rm -rf results/compare-gpt
  $BIN compare --model gpt --steps "$GPT_STEPS" --batch 8 --lr 1e-3 --schedule cosine --warmup 20 \
    --eval-batches 16 --precisions fp32,bf16,fp16 --seed 1 --quiet --out results/compare-gpt
fi
if [[ $what == all || $what == step ]] && [[ -f scripts/bench_compare.sh ]]; then
  echo "== training-step speed against PyTorch"
  bash scripts/bench_compare.sh build results/step.json
fi
/usr/bin/python3 scripts/update_readme.py
