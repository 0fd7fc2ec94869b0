#!/usr/bin/env bash
# Installs, from Debian 12 packages only, what building and testing ckpt needs and is not yet present.
# Safe to run again: packages already installed are skipped without touching the network.
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang libclang-rt-14-dev clang-format
  libtorch-dev libgloo-dev
  libcli11-dev nlohmann-json3-dev libfmt-dev libzstd-dev doctest-dev
  python3-torch python3-numpy
  groff-base zsh fish bash-completion
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
