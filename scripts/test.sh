#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: once in a normal build and once under
# AddressSanitizer + UndefinedBehaviorSanitizer. This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

bash scripts/build.sh build
ctest --test-dir build -j"$(nproc)" --output-on-failure

# Sanitizers: every test again but the exhaustive rotation table (tests/CMakeLists.txt says why); a report
# aborts the test that triggered it.
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
bash scripts/build.sh build-asan -DCKPT_SANITIZE=ON
# The trainer's concurrency run is shorter here: the normal pass runs it for 180 s.
CKPT_CONCURRENCY_SECONDS=30 ctest --test-dir build-asan -j"$(nproc)" --output-on-failure --label-exclude exhaustive

# Every libFuzzer target for a short smoke (tests/fuzz/README.md); a crash fails the run.
bash scripts/fuzz.sh 20
echo "fuzz: every target passed its smoke"
