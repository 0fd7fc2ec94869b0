#!/usr/bin/env bash
# The main job of the Quick start: installs what is missing, builds, writes a small Hugging Face style run
# directory with Debian's PyTorch, and shows it with ckpt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh build
run=${1:-/tmp/ckpt-demo-run}
/usr/bin/python3 scripts/make_demo_run.py "$run"
./build/ckpt inspect "$run"
./build/ckpt inspect "$run/checkpoint-20"
