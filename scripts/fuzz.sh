#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) into build-sanitize/ (the test command's sanitizer build,
# so after it nothing is rebuilt) and runs each for SECONDS
# (default 20), or only the named targets. New inputs go to a scratch corpus; the seeds are not modified.
# Usage: scripts/fuzz.sh [SECONDS [TARGET...]]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pickle roundtrip torch_archive safetensors json archive dcp)

CC=clang CXX=clang++ bash scripts/build.sh build-sanitize -DCKPT_SANITIZE=ON -DCKPT_FUZZ=ON
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "fuzz_$target: ${seconds}s" >&2
  ./build-sanitize/tests/fuzz/fuzz_"$target" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -dict=tests/fuzz/pickle.dict -artifact_prefix="$scratch/$target-" -print_final_stats=1 \
    "$scratch/$target" "tests/fuzz/corpus/$target" tests/fuzz/regressions 2>&1 | grep -E "stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY|Done" >&2 || {
      echo "fuzz_$target failed; the crashing input is in $scratch" >&2
      cp -r "$scratch" "build-sanitize/failed-$target" 2>/dev/null || true
      exit 1
    }
done
