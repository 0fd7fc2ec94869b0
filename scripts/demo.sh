#!/usr/bin/env bash
# The main job of the Quick start: installs what is missing, builds, trains the default embedded model with
# `ckpt save` (a fresh run directory, checkpoints every 20 steps) and lists the run with `ckpt list`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build
run=${1:-/tmp/ckpt-demo-run}
rm -rf "$run"
./build/ckpt save --output-dir "$run" --max-steps 100 --save-steps 20 --save-total-limit 3
./build/ckpt list "$run"
