#!/usr/bin/env bash
# Compares two builds of mixtrain on one machine, alternating them so both see the same load:
#   1. training bits: `mixtrain train` for 200 steps (MLP fp32, bf16, fp16; GPT bf16), each
#      run's export compared byte for byte between the builds;
#   2. speed and memory: `mixtrain bench step` (GPT batch 8 and MLP batch 256, bf16 and fp32),
#      ROUNDS rounds of old then new, medians of the per-round medians and peak RSS.
#
#   bash scripts/ab_builds.sh OLD_BINARY NEW_BINARY [OUT_JSON]
#
# ROUNDS (default 3) and REPEATS (timed steps per bench run, default 7) set the sample sizes;
# SKIP_BITS=1 or SKIP_SPEED=1 leave a part out. Prints a table and writes the raw results.
set -euo pipefail
OLD=${1:?old binary}
NEW=${2:?new binary}
OUT=${3:-ab_builds.json}
ROUNDS=${ROUNDS:-3}
REPEATS=${REPEATS:-7}
PY=/usr/bin/python3
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# Whether two safetensors files hold the same tensors bit for bit (names, dtypes, shapes and
# data; the metadata, which names the run folder, may differ).
same_tensors() {
  "$PY" - "$1" "$2" <<'PY'
import json, struct, sys
def load(p):
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        return header, f.read()
(ha, da), (hb, db) = load(sys.argv[1]), load(sys.argv[2])
sys.exit(0 if ha == hb and da == db else 1)
PY
}

if [[ "${SKIP_BITS:-0}" != 1 ]]; then
  # name | train flags
  TRAINS=(
    "mlp-fp32|--model mlp --precision fp32"
    "mlp-bf16|--model mlp --precision bf16"
    "mlp-fp16|--model mlp --precision fp16"
    "gpt-bf16|--model gpt --precision bf16 --batch 8"
  )
  for spec in "${TRAINS[@]}"; do
    IFS='|' read -r name flags <<<"$spec"
    for side in old new; do
      bin=$OLD
      [[ $side == new ]] && bin=$NEW
      echo "== bits: $name ($side)" >&2
      "$bin" train $flags --steps 200 --seed 1 --quiet --out "$TMP/$side-$name" >/dev/null
      "$bin" export "$TMP/$side-$name" --out "$TMP/$side-$name.safetensors" >/dev/null
    done
    if same_tensors "$TMP/old-$name.safetensors" "$TMP/new-$name.safetensors"; then
      echo "bits $name identical" >>"$TMP/bits.txt"
    else
      echo "bits $name DIFFER" >>"$TMP/bits.txt"
    fi
  done
fi

if [[ "${SKIP_SPEED:-0}" != 1 ]]; then
  BENCHES=(
    "gpt8-bf16|--model gpt --precision bf16 --batch 8"
    "gpt8-fp32|--model gpt --precision fp32 --batch 8"
    "mlp256-bf16|--model mlp --precision bf16 --batch 256"
    "mlp256-fp32|--model mlp --precision fp32 --batch 256"
  )
  for ((r = 0; r < ROUNDS; ++r)); do
    for spec in "${BENCHES[@]}"; do
      IFS='|' read -r name flags <<<"$spec"
      for side in old new; do
        bin=$OLD
        [[ $side == new ]] && bin=$NEW
        echo "== speed round $r: $name ($side)" >&2
        "$bin" bench step $flags --repeats "$REPEATS" --json >"$TMP/$r-$side-$name.json"
      done
    done
  done
fi

"$PY" - "$TMP" "$OUT" <<'PY'
import glob, json, os, statistics, sys
tmp, out = sys.argv[1], sys.argv[2]
res = {"bits": [], "speed": {}}
if os.path.exists(f"{tmp}/bits.txt"):
    res["bits"] = open(f"{tmp}/bits.txt").read().split("\n")[:-1]
runs = {}
for f in sorted(glob.glob(f"{tmp}/*-*-*.json")):
    r, side, name = os.path.basename(f)[:-5].split("-", 2)
    runs.setdefault(name, {}).setdefault(side, []).append(json.load(open(f)))
if runs:
    print(f"{'workload':14} {'old ms':>9} {'new ms':>9} {'new/old':>8} {'old RSS MiB':>12} {'new RSS MiB':>12} {'new/old':>8}")
for name, sides in sorted(runs.items()):
    row = {}
    for side in ("old", "new"):
        ms = [x["ms_per_step"] for x in sides[side]]
        rss = [x["peak_rss_bytes"] / 2**20 for x in sides[side]]
        row[side] = {"ms_rounds": ms, "rss_mib_rounds": rss,
                     "ms": statistics.median(ms), "rss_mib": statistics.median(rss)}
    row["ms_ratio"] = row["new"]["ms"] / row["old"]["ms"]
    row["rss_ratio"] = row["new"]["rss_mib"] / row["old"]["rss_mib"]
    res["speed"][name] = row
    print(f"{name:14} {row['old']['ms']:9.2f} {row['new']['ms']:9.2f} {row['ms_ratio']:8.3f} "
          f"{row['old']['rss_mib']:12.1f} {row['new']['rss_mib']:12.1f} {row['rss_ratio']:8.3f}")
for line in res["bits"]:
    print(line)
json.dump(res, open(out, "w"), indent=2)
PY
