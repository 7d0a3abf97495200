#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (H100/H200: nvcc, CMake, ninja, PyTorch, no package
# registry, x86-64), run from the repository root with .devdeps/ carried along (fill it here
# first: bash scripts/device_deps.sh). Through the device tool:
#   run(command="bash scripts/device_check.sh", carry=[".devdeps"], timeout_s=600)
# Stages, each under its own timeout; a failed stage is recorded and the next one runs:
#   deps      unpack .devdeps/*.deb (dpkg -x) into a prefix; CMake and the loader look there
#   build     the CUDA configuration for sm_90 only (MPI off: one GPU), the CLI and the tests
#             that concern the GPU
#   harness   test_backend_ops: every op on every backend against the scalar reference
#   ctest     the ctest tests of those executables (device selection, CUDA-only tests)
#   bench     `mixtrain bench step --device cuda` on GPT-2 small (12 layers, width 768, 12
#             heads, context 1024, vocabulary 50257, batch 16) in bf16 and in fp32 (TF32 off:
#             NVIDIA_TF32_OVERRIDE=0), each with its cuBLASLt bf16 GEMM peak measured in the
#             same process (bench step's GPU peak: mixtrain::gemm on n = 8192 through the
#             backend), so mfu is against the bf16 peak in both
#   torch     scripts/torch_gpt_step.py: the same GPT step in PyTorch eager, autocast bf16
#   curves    300 steps of a small GPT on cuda and on cpu, same seed and data, bf16: the loss
#             curves must agree within bf16's tolerance
#   fp16      fp16 on cuda with injected non-finite gradients: skipped steps, the loss scale
#             halved at each and growing again
#   resume    a checkpoint written on cuda resumed on the cpu (and generation on cuda)
# It ends with one JSON line of every figure and each stage's status. Set DEVICE_CHECK_OUT to
# keep the logs elsewhere than $OUT (the device tool's) or /tmp/device_check;
# DEVICE_CHECK_PREBUILT=1 uses DEVICE_BUILD_DIR (default build-device) as it is, unbuilt;
# CURVE_STEPS shortens the curves' runs; CHECK_DEVICE=cpu runs the GPU stages' commands on the
# CPU and SKIP_BENCH=1 leaves the benchmarks out (both to test this script without a GPU).
# Written without a GPU at hand: the stages have not run yet.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
LOG=${DEVICE_CHECK_OUT:-${OUT:-/tmp/device_check}}
mkdir -p "$LOG"
PREFIX=${DEVICE_DEPS_PREFIX:-/tmp/mixtrain-deps}
BUILD=${DEVICE_BUILD_DIR:-build-device}
PY=${PYTHON:-python3}
T0=$(date +%s)
declare -A STATUS
RESULTS="$LOG/results.jsonl"  # one {"key": value} object per line, merged at the end
: >"$RESULTS"

note() { echo "[device_check $(($(date +%s) - T0))s] $*" >&2; }
# stage NAME TIMEOUT CMD...: runs CMD under the timeout, its output in $LOG/NAME.log.
stage() {
  local name=$1 limit=$2
  shift 2
  note "stage $name (timeout ${limit}s)"
  local t
  t=$(date +%s)
  # A child bash runs it (so the exported functions below can be stages too); timeout signals
  # its whole process group.
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  local status=ok
  ((rc == 124 || rc == 137)) && status="timeout after ${limit}s"
  ((rc != 0 && rc != 124 && rc != 137)) && status="failed (exit $rc)"
  STATUS[$name]="$status"
  echo "{\"stage_seconds_$name\": $(($(date +%s) - t))}" >>"$RESULTS"
  if [[ $status != ok ]]; then
    note "$name: $status; the log's end:"
    tail -n 15 "$LOG/$name.log" >&2
  fi
  [[ $status == ok ]]
}
skip() {
  STATUS[$1]="skipped ($2)"
  note "$1 skipped: $2"
}
# record KEY JSON-VALUE
record() { echo "{\"$1\": $2}" >>"$RESULTS"; }
MT="$ROOT/$BUILD/mixtrain"
DEV=${CHECK_DEVICE:-cuda}
RUNS=/tmp/device_check_runs
DATA="text:$ROOT/tests/data/jargon_sample.txt"
export ROOT PREFIX BUILD PY MT RUNS DATA DEV

# ---- deps ------------------------------------------------------------------------------------
unpack_deps() {
  shopt -s nullglob
  local debs=("$ROOT"/.devdeps/*.deb)
  if ((${#debs[@]} == 0)); then
    echo "no .devdeps/*.deb: run scripts/device_deps.sh where the registry is reachable" >&2
    return 1
  fi
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX"
  for d in "${debs[@]}"; do dpkg -x "$d" "$PREFIX" || return 1; done
  # A -dev package's lib*.so link whose target is a base package's library (zlib1g-dev's
  # libz.so -> libz.so.1.x) dangles in the prefix: point it at the machine's own copy.
  local lib=$PREFIX/usr/lib/x86_64-linux-gnu l base sys
  for l in "$lib"/lib*.so; do
    [[ -L $l && ! -e $l ]] || continue
    base=$(basename "$l")
    sys=$(ldconfig -p | awk -v n="$base." 'index($1, n) == 1 {print $NF; exit}')
    if [[ -n $sys ]]; then
      ln -sf "$sys" "$l"
      echo "linked $base -> $sys (the machine's)"
    else
      echo "warning: $base dangles and the machine has no $base.*" >&2
    fi
  done
  # Everything CMake must find, checked before configuring.
  local need=(usr/include/oneapi/dnnl/dnnl.hpp usr/include/fmt/format.h
              usr/include/CLI/CLI.hpp usr/include/nlohmann/json.hpp usr/include/zlib.h
              usr/include/gtest/gtest.h usr/include/CL/cl.h
              usr/lib/x86_64-linux-gnu/libdnnl.so usr/lib/x86_64-linux-gnu/libfmt.so
              usr/lib/x86_64-linux-gnu/libOpenCL.so.1 usr/lib/x86_64-linux-gnu/libgtest.a
              usr/lib/x86_64-linux-gnu/cmake/dnnl/dnnl-config.cmake
              usr/lib/x86_64-linux-gnu/cmake/fmt/fmt-config.cmake
              usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake
              usr/share/cmake/CLI11/CLI11Config.cmake
              usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake)
  local ok=0
  for f in "${need[@]}"; do
    if [[ ! -e $PREFIX/$f ]]; then
      echo "missing after unpacking: $f" >&2
      ok=1
    fi
  done
  return $ok
}
export -f unpack_deps
deps_env() {
  export CMAKE_PREFIX_PATH="$PREFIX/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$PREFIX/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # zlib's headers may be missing from the machine: FindZLIB searches CMAKE_PREFIX_PATH too.
}

# `--deps-only DIR`: unpack and configure a CPU build in DIR against the prefix alone (how this
# part is tested on a machine without a GPU), then stop.
if [[ ${1:-} == --deps-only ]]; then
  unpack_deps || exit 1
  deps_env
  cmake -S "$ROOT" -B "${2:-/tmp/device-deps-build}" -DCMAKE_BUILD_TYPE=Release \
    -DMIXTRAIN_CUDA=OFF -DMIXTRAIN_MPI=OFF -DMIXTRAIN_BUILD_BENCH=OFF -DMIXTRAIN_BUILD_TESTS=ON \
    -DCMAKE_FIND_PACKAGE_PREFER_CONFIG=ON "${@:3}" || exit 1
  exit 0
fi

record machine "\"$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 | tr -d '"')\""
record nvcc "\"$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' | head -1)\""

if stage deps 60 unpack_deps; then
  deps_env
fi

# ---- build -----------------------------------------------------------------------------------
build() {
  # The tests that concern the GPU: device selection and any tests/*cuda*_test.cpp.
  local tests=(device_test) gen=() f
  for f in tests/*cuda*_test.cpp; do [[ -e $f ]] && tests+=("$(basename "$f" .cpp)"); done
  command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DMIXTRAIN_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DMIXTRAIN_MPI=OFF -DMIXTRAIN_BUILD_TESTS=ON \
    -DMIXTRAIN_BUILD_BENCH=OFF -DCMAKE_FIND_PACKAGE_PREFER_CONFIG=ON &&
    cmake --build "$BUILD" -j"$(nproc)" --target mixtrain test_backend_ops "${tests[@]}"
}
export -f build
if [[ -n ${DEVICE_CHECK_PREBUILT:-} ]]; then
  # A build folder made beforehand (carried, or here to test the script): used as it is.
  STATUS[build]="ok"
  note "build: using the prebuilt $BUILD"
elif [[ ${STATUS[deps]:-} == ok ]]; then
  stage build 300 build
else
  skip build "no dependencies"
fi
BUILT=0
[[ ${STATUS[build]:-} == ok && -x $MT ]] && BUILT=1
((BUILT)) && "$MT" info >"$LOG/info.txt" 2>&1

# ---- harness and ctest -----------------------------------------------------------------------
if ((BUILT)); then
  stage harness 120 "$BUILD/tests/test_backend_ops"
  # Its summary lines (a '*' marks a failure) into the JSON.
  record harness_summary "$(grep -E 'test_backend_ops:' "$LOG/harness.log" | tail -1 | $PY -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')"
  stage ctest 120 bash -c "cd '$BUILD' && ctest --output-on-failure -j4 -R 'Device|AutoPrecision|ModuleTo|Cuda|CUDA|Nccl'"
else
  skip harness "no build"
  skip ctest "no build"
fi

# ---- bench: GPT-2 small ----------------------------------------------------------------------
GPT2=(--model gpt --gpt-layers 12 --gpt-width 768 --gpt-heads 12 --gpt-context 1024
      --gpt-vocab 50257 --batch 16 --warmup 2 --peak-time 1 --json)
if ((BUILT)) && [[ -z ${SKIP_BENCH:-} ]]; then
  stage bench_bf16 120 "$MT" bench step --device cuda --precision bf16 --repeats 6 "${GPT2[@]}" &&
    record bench_bf16 "$(sed -n '/^{/,/^}/p' "$LOG/bench_bf16.log" | $PY -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))')"
  stage bench_fp32 150 env NVIDIA_TF32_OVERRIDE=0 "$MT" bench step --device cuda \
    --precision fp32 --peak-dtype bf16 --repeats 3 --no-optimizer-bandwidth "${GPT2[@]}" &&
    record bench_fp32_tf32_off "$(sed -n '/^{/,/^}/p' "$LOG/bench_fp32.log" | $PY -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))')"
  # fp8 (delayed scaling): on sm_89/sm_90 the per-tensor recipes (delayed, current) run their
  # GEMMs as cuBLASLt FP8 GEMMs over E4M3/E5M2 codes (gemm_fp8.cpp; products whose dims are not
  # multiples of 16 are emulated), so this times fp8 tensor cores plus the quantization; on an
  # older GPU they stay bf16 GEMMs over fp8 values. The record keeps its name (bench_fp8_emulated)
  # for comparison with earlier runs.
  stage bench_fp8 120 "$MT" bench step --device cuda --precision fp8 --repeats 3 \
    --no-optimizer-bandwidth "${GPT2[@]}" &&
    record bench_fp8_emulated "$(sed -n '/^{/,/^}/p' "$LOG/bench_fp8.log" | $PY -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))')"
else
  skip bench_bf16 "no build, or SKIP_BENCH"
  skip bench_fp32 "no build, or SKIP_BENCH"
  skip bench_fp8 "no build, or SKIP_BENCH"
fi

# ---- torch: the same step in PyTorch eager, autocast bf16 ------------------------------------
stage torch 150 $PY scripts/torch_gpt_step.py --layers 12 --width 768 --heads 12 --context 1024 \
  --vocab 50257 --batch 16 --warmup 2 --repeats 6 &&
  record torch_bf16 "$(grep '^{' "$LOG/torch.log" | tail -1)"

# ---- curves: cuda against cpu ----------------------------------------------------------------
SMALL=(--model gpt --data "$DATA" --layers 4 --width 256 --heads 4 --context 128 --batch 16
       --steps "${CURVE_STEPS:-300}" --lr 1e-3 --seed 7 --precision bf16 --log-every 1 --eval-batches 4
       --checkpoint-minutes 0 --tensorboard false --quiet)
rm -rf "$RUNS"
if ((BUILT)); then
  stage curves_cuda 120 "$MT" train "${SMALL[@]}" --device "$DEV" --out "$RUNS/cuda"
  stage curves_cpu 240 "$MT" train "${SMALL[@]}" --device cpu --out "$RUNS/cpu"
  if [[ ${STATUS[curves_cuda]:-} == ok && ${STATUS[curves_cpu]:-} == ok ]]; then
    # bf16 tolerance: the two devices round the same values in other orders (GEMM blocking),
    # so the curves drift apart step by step; their 25-step means must stay within 3% and the
    # final validation losses within 3%.
    stage curves_compare 30 $PY - "$RUNS/cuda" "$RUNS/cpu" "$RESULTS" <<'PY'
import json, sys
def curve(d):
    out = {}
    for line in open(d + "/metrics.jsonl"):
        j = json.loads(line)
        if "loss" in j and "step" in j and j.get("loss") is not None:
            out[j["step"]] = j["loss"]
    return out
a, b = curve(sys.argv[1]), curve(sys.argv[2])
steps = sorted(set(a) & set(b))
worst = 0.0
for k in range(0, len(steps) - 24, 25):
    w = steps[k:k + 25]
    ma = sum(a[s] for s in w) / 25
    mb = sum(b[s] for s in w) / 25
    worst = max(worst, abs(ma - mb) / abs(mb))
va = json.load(open(sys.argv[1] + "/summary.json"))["val_loss"]
vb = json.load(open(sys.argv[2] + "/summary.json"))["val_loss"]
res = {"curves": {"steps_compared": len(steps), "worst_25_step_mean_rel_gap": worst,
                  "val_loss_cuda": va, "val_loss_cpu": vb,
                  "val_rel_gap": abs(va - vb) / abs(vb),
                  "first_loss_cuda": a.get(1), "first_loss_cpu": b.get(1)}}
open(sys.argv[3], "a").write(json.dumps(res) + "\n")
print(json.dumps(res))
ok = len(steps) >= int(__import__("os").environ.get("CURVE_STEPS", "300")) and worst < 0.03 and res["curves"]["val_rel_gap"] < 0.03
sys.exit(0 if ok else 1)
PY
  else
    skip curves_compare "a run failed"
  fi
else
  skip curves_cuda "no build"
  skip curves_cpu "no build"
  skip curves_compare "no build"
fi

# ---- fp16: loss scaling on the GPU -----------------------------------------------------------
if ((BUILT)); then
  F16=(--model gpt --data "$DATA" --layers 2 --width 128 --heads 4 --context 64 --batch 8
       --steps 60 --seed 3 --precision fp16 --log-every 1 --eval-batches 2 --scale-init 1024
       --scale-growth-interval 10 --inject-nonfinite-grad 20,40 --checkpoint-minutes 0
       --tensorboard false --quiet)
  if stage fp16 90 "$MT" train "${F16[@]}" --device "$DEV" --out "$RUNS/fp16"; then
    # Each injected step is skipped and halves the scale; 10 clean steps double it again.
    stage fp16_check 30 $PY - "$RUNS/fp16" "$RESULTS" <<'PY'
import json, math, sys
d = sys.argv[1]
m = {}
for line in open(d + "/metrics.jsonl"):
    j = json.loads(line)
    if "step" in j and "loss_scale" in j:
        m[j["step"]] = j
s = json.load(open(d + "/summary.json"))
def scale(k): return m[k]["loss_scale"] if k in m else None
res = {"fp16": {"skipped_steps": s["skipped_steps"], "final_loss_scale": s["final_loss_scale"],
                "val_loss": s["val_loss"], "scale_at_19": scale(19), "scale_at_20": scale(20),
                "scale_at_30": scale(30), "skipped_at_20": m.get(20, {}).get("skipped"),
                "skipped_at_40": m.get(40, {}).get("skipped")}}
open(sys.argv[2], "a").write(json.dumps(res) + "\n")
print(json.dumps(res))
f = res["fp16"]
ok = (f["skipped_steps"] >= 2 and f["skipped_at_20"] and f["skipped_at_40"]
      and f["scale_at_20"] is not None and f["scale_at_19"] is not None
      and f["scale_at_20"] < f["scale_at_19"] and f["scale_at_30"] > f["scale_at_20"]
      and math.isfinite(f["val_loss"]))
sys.exit(0 if ok else 1)
PY
  else
    skip fp16_check "the run failed"
  fi
else
  skip fp16 "no build"
  skip fp16_check "no build"
fi

# ---- resume: written on cuda, resumed on cpu -------------------------------------------------
if ((BUILT)); then
  resume() {
    local R=(--model gpt --data "$DATA" --layers 2 --width 128 --heads 4 --context 64 --batch 8
             --seed 5 --precision bf16 --eval-batches 2 --checkpoint-minutes 0
             --tensorboard false --quiet)
    "$MT" train "${R[@]}" --steps 20 --device "$DEV" --out "$RUNS/resume" &&
      "$MT" train --resume "$RUNS/resume" --steps 40 --device cpu --quiet &&
      $PY -c "import json,math,sys; s=json.load(open('$RUNS/resume/summary.json')); print(json.dumps(s)); sys.exit(0 if s['steps']==40 and math.isfinite(s['val_loss']) else 1)" &&
      "$MT" generate "$RUNS/resume" --device "$DEV" --prompt "The " --tokens 16
  }
  export -f resume
  stage resume 120 resume
else
  skip resume "no build"
fi

# ---- the JSON line ---------------------------------------------------------------------------
for k in "${!STATUS[@]}"; do record "status_$k" "\"${STATUS[$k]}\""; done
record total_seconds "$(($(date +%s) - T0))"
$PY - "$RESULTS" <<'PY'
import json, sys
out = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        try:
            out.update(json.loads(line))
        except ValueError:
            out.setdefault("unparsed", []).append(line[:200])
b16, f32, t = out.get("bench_bf16", {}), out.get("bench_fp32_tf32_off", {}), out.get("torch_bf16", {})
summary = {"device_check": 1}
for name, r in (("mixtrain_bf16", b16), ("mixtrain_fp32_tf32_off", f32)):
    if r:
        summary[name] = {k: r.get(k) for k in ("ms_per_step", "throughput", "mfu",
                                               "gemm_peak_gflops", "gemm_peak_dtype",
                                               "parameters", "peak_tensor_bytes")}
if t:
    summary["torch_bf16"] = dict(t)
    peak = b16.get("gemm_peak_gflops")
    if peak and t.get("model_gflops_per_s"):
        summary["torch_bf16"]["mfu_vs_mixtrain_bf16_peak"] = t["model_gflops_per_s"] / peak
summary.update({k: v for k, v in out.items()
                if k not in ("bench_bf16", "bench_fp32_tf32_off", "torch_bf16")})
summary["failed_stages"] = sorted(k[7:] for k, v in out.items()
                                  if k.startswith("status_") and v != "ok" and not v.startswith("skipped"))
print(json.dumps(summary, sort_keys=True))
PY
