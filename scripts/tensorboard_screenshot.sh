#!/usr/bin/env bash
# The README's TensorBoard screenshot: a `mixtrain compare` of the byte-level GPT in fp32, bf16
# and fp16 (its event files, one sub-folder per precision), served by TensorBoard and rendered
# by headless Chromium into docs/tensorboard.png.
#
# Usage: bash scripts/tensorboard_screenshot.sh   (needs the tensorboard package for
#        /usr/bin/python3 and chromium: `apt-get install chromium`; COMPARE_STEPS=200)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-./build/mixtrain}
command -v chromium >/dev/null || { echo "tensorboard_screenshot: needs chromium (apt-get install chromium)" >&2; exit 1; }
/usr/bin/python3 -c "import tensorboard" 2>/dev/null ||
  { echo "tensorboard_screenshot: needs the tensorboard package for /usr/bin/python3" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill "${tb:-0}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$BIN" compare --model gpt --layers 2 --width 64 --heads 2 --context 64 --batch 8 \
  --steps "${COMPARE_STEPS:-200}" --log-every 5 --lr 3e-3 --precisions fp32,bf16,fp16 \
  --diagnose-every 50 \
  --seed 1 --quiet --out "$tmp/compare" >/dev/null
port=$((6100 + RANDOM % 500))
/usr/bin/python3 -m tensorboard.main --logdir "$tmp/compare/tensorboard" --port "$port" \
  --bind_all >"$tmp/tb.log" 2>&1 &
tb=$!
for _ in $(seq 60); do
  curl -s "http://localhost:$port" >/dev/null 2>&1 && break
  sleep 1
done
# The scalars dashboard filtered to the loss cards (loss, val_loss, loss_scale); the virtual time budget lets
# its scripts fetch and draw the runs before the shot.
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,1000 \
  --virtual-time-budget=20000 --screenshot="$PWD/docs/tensorboard.png" \
  "http://localhost:$port/?darkMode=false&tagFilter=%5E(loss|loss_scale|grad_norm)%24&smoothing=0&forceSVG=true#timeseries" >/dev/null 2>&1
echo "docs/tensorboard.png written ($(stat -c %s docs/tensorboard.png) bytes)"
