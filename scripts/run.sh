#!/usr/bin/env bash
# Sets up, builds and runs mixtrain's main job on its defaults. This is the README's main command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec ./build/mixtrain "$@"
