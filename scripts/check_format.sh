#!/usr/bin/env bash
# Fails, naming the files and lines, when a C++ source differs from what clang-format (.clang-format: Google style
# at 120 columns) makes of it. Reformat with: clang-format -i $(git ls-files '*.cpp' '*.hpp')
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t sources < <(find src tests bench -name '*.cpp' -o -name '*.hpp' | sort)
clang-format --dry-run --Werror "${sources[@]}"
echo "check_format: ${#sources[@]} files as clang-format writes them"
