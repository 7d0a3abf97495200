#!/usr/bin/env bash
# Sharded data parallel, measured: the GPT at 6x384 and 12x768 on 1, 2 and 4 ranks, ZeRO
# stages 0 to 3, bf16 compute with bf16 gradients on the wire (--allreduce compute) and fp32
# master weights and Adam moments. For each run, rank 0's model-state bytes (from its
# summary.json), wire bytes per step by collective (its last metrics line), peak RSS and the
# median step time, beside the theory for each (computed here from the model's shape; see the
# formulas in theory()). Writes results/zero.json; update_readme.py makes the table.
#
# Usage: bash scripts/zero_bench.sh          (ZERO_STEPS=6, ZERO_MODELS="6x384 12x768",
#                                             ZERO_RANKS="1 2 4", ZERO_STAGES="0 1 2 3")
# Ranks share this machine's cores (one OpenMP thread each, oversubscribed), so step times are
# for comparing stages at one rank count, not for scaling.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-./build/mixtrain}
[[ -n ${SKIP_BUILD:-} ]] || bash scripts/build.sh >/dev/null
command -v mpirun >/dev/null || { echo "zero_bench: needs mpirun (scripts/setup.sh installs it)" >&2; exit 1; }
STEPS=${ZERO_STEPS:-6}
MODELS=${ZERO_MODELS:-"6x384 12x768"}
RANKS=${ZERO_RANKS:-"1 2 4"}
STAGES=${ZERO_STAGES:-"0 1 2 3"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for m in $MODELS; do
  L=${m%x*}
  C=${m#*x}
  for n in $RANKS; do
    for z in $STAGES; do
      name="gpt$m-${n}r-zero$z"
      echo "== $name" >&2
      mpirun --allow-run-as-root --oversubscribe -np "$n" -x OMP_NUM_THREADS=1 "$BIN" train \
        --model gpt --layers "$L" --width "$C" --heads $((C / 64)) --context 64 --batch 4 \
        --steps "$STEPS" --log-every 1 --eval-batches 1 --seed 1 --precision bf16 --master fp32 \
        --allreduce compute --zero "$z" --quiet --out "$tmp/$name" >/dev/null
      echo "$m $n $z 1" > "$tmp/$name.cfg"
    done
  done
done
# Gradient accumulation (2 micro-batches of 2 rows): stages 0 and 1 accumulate each rank's
# gradients unsharded and reduce once a step; stages 2 and 3 reduce-scatter every micro-batch
# into the fp32 shard (accumulation sharded), and stage 3 gathers the weights again for each.
if [[ -z ${ZERO_NO_ACCUM:-} ]]; then
  m=${MODELS%% *}
  for z in $STAGES; do
    name="gpt$m-2r-zero$z-accum2"
    echo "== $name" >&2
    mpirun --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS=1 "$BIN" train \
      --model gpt --layers "${m%x*}" --width "${m#*x}" --heads $((${m#*x} / 64)) --context 64 \
      --batch 4 --grad-accum 2 --steps "$STEPS" --log-every 1 --eval-batches 1 --seed 1 \
      --precision bf16 --master fp32 --allreduce compute --zero "$z" --quiet --out "$tmp/$name" \
      >/dev/null
    echo "$m 2 $z 2" > "$tmp/$name.cfg"
  done
fi
/usr/bin/python3 - "$tmp" "$STEPS" > results/zero.json <<'PY'
import glob, json, os, statistics, sys

d, steps = sys.argv[1], int(sys.argv[2])


def theory(L, C, V, T, n, z, accum):
    """Bytes per rank a bf16 run holds and sends per step, by the formulas of the ZeRO paper
    with mixtrain's units: P parameters, bf16 weights (2 B), fp32 gradients (4 B, the model's or
    a shard's), fp32 master (4 B) and Adam moments (8 B); bf16 gradients on the wire."""
    block = 12 * C * C + 13 * C
    units = [V * C, T * C, 2 * C, C * V] + [block] * L  # tok, pos, ln_f, head, blocks
    P = sum(units)
    big = sorted(units)[-2:]  # a unit and its prefetched neighbour: the most gathered at once
    state = {
        0: 18 * P,
        1: 2 * P + 4 * P + 12 * P / n,
        2: 2 * P + 16 * P / n,
        # the shards, plus the units gathered at once (bf16) and one unit's fp32 gradients
        # before its reduce-scatter
        3: 18 * P / n + 2 * sum(big) + 4 * max(units),
    }[z] if n > 1 else 18 * P  # one rank: every stage holds everything once
    f = (n - 1) / n
    g = f * 2 * P  # one reduce-scatter or all-gather of P bf16 elements
    wire = {
        0: 2 * g,          # all-reduce (a reduce-scatter and an all-gather) once a step
        1: g + g,          # reduce-scatter of gradients, all-gather of updated weights
        2: accum * g + g,  # reduce-scatter per micro-batch, all-gather of updated weights
        3: accum * 3 * g,  # per micro-batch: reduce-scatter; weights for forward and backward
    }[z]
    return P, state, wire


out = []
for cfg in sorted(glob.glob(os.path.join(d, "*.cfg"))):
    name = os.path.basename(cfg)[:-4]
    m, n, z, accum = open(cfg).read().split()
    L, C, n, z, accum = int(m.split("x")[0]), int(m.split("x")[1]), int(n), int(z), int(accum)
    s = json.load(open(os.path.join(d, name, "summary.json")))
    lines = [json.loads(l) for l in open(os.path.join(d, name, "metrics.jsonl"))]
    # tokens per step / throughput of that step's window (one step): the step time; the first
    # step (primitive creation, the memory plan's recording) is left out.
    ms = [1e3 * 4 * 64 / l["throughput"] for l in lines[1:]]
    P, state, wire = theory(L, C, 256, 64, n, z, accum)
    last = lines[-1]
    r = {"name": name, "model": "gpt %dx%d" % (L, C), "layers": L, "width": C, "ranks": n,
         "zero": z, "grad_accum": accum, "parameters": s["parameters"], "theory_parameters": P,
         "command": "mpirun -np %d -x OMP_NUM_THREADS=1 mixtrain train --model gpt --layers %d "
                    "--width %d --heads %d --context 64 --batch 4 --steps %d --precision bf16 "
                    "--master fp32 --allreduce compute --zero %d%s"
                    % (n, L, C, C // 64, steps, z, " --grad-accum 2" if accum > 1 else ""),
         "model_state_bytes_per_rank": s["model_state_bytes_per_rank"],
         "theory_model_state_bytes_per_rank": state,
         "weight_bytes_per_rank": s["weight_bytes_per_rank"],
         "gradient_bytes_per_rank": s["gradient_bytes_per_rank"],
         "gathered_weight_bytes_per_rank": s.get("gathered_weight_bytes_per_rank", 0),
         "unreduced_gradient_bytes_per_rank": s.get("unreduced_gradient_bytes_per_rank", 0),
         "comm_bytes_per_step": last.get("comm_bytes_per_step", 0),
         "comm_bytes_by_collective": last.get("comm_bytes_by_collective", {}),
         "theory_comm_bytes_per_step": wire,
         "peak_rss_bytes": s["peak_rss_bytes"],
         "step_ms": ms, "median_step_ms": statistics.median(ms),
         "final_train_loss": s["final_train_loss"]}
    out.append(r)
out.sort(key=lambda r: (r["width"], r["grad_accum"], r["ranks"], r["zero"]))
for r in out:
    base = [b for b in out if b["width"] == r["width"] and b["ranks"] == r["ranks"] and
            b["grad_accum"] == r["grad_accum"] and b["zero"] == 0]
    if base:
        r["step_vs_stage0"] = r["median_step_ms"] / base[0]["median_step_ms"]
print(json.dumps(out, indent=2))
PY
echo "results/zero.json written" >&2
