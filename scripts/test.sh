#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: once in a normal build and once under
# AddressSanitizer + UndefinedBehaviorSanitizer. This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

bash scripts/build.sh build
ctest --test-dir build -j"$(nproc)" --output-on-failure

# Sanitizers and fuzzing: one clang build under AddressSanitizer + UndefinedBehaviorSanitizer, with the libFuzzer
# targets. It runs every test again but the exhaustive rotation table (tests/CMakeLists.txt says why), then each fuzz
# target for a short smoke (tests/fuzz/README.md); a report aborts the test or the target that triggered it.
# Clang cannot compile LibTorch 1.13's headers, so the trainer library is the normal build's: the trainer's own code
# is not instrumented in this pass, the binary, the core and everything they read are.
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
CC=clang CXX=clang++ bash scripts/build.sh build-sanitize -DCKPT_SANITIZE=ON -DCKPT_FUZZ=ON \
  -DCKPT_PREBUILT_TRAINER="$PWD/build/libckpt_train.so"
# The trainer's concurrency run is shorter here: the normal pass runs it for 180 s.
CKPT_CONCURRENCY_SECONDS=30 ctest --test-dir build-sanitize -j"$(nproc)" --output-on-failure --label-exclude exhaustive
bash scripts/fuzz.sh 20
echo "fuzz: every target passed its smoke"
