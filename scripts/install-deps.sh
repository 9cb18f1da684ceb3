#!/usr/bin/env bash
# Installs the Debian packages kvtier builds against. Idempotent: installs only what is
# missing. As root it runs apt-get; otherwise it prints the command to run.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libfmt-dev libtbb-dev libhwloc-dev liburing-dev librocksdb-dev libhnswlib-dev
  libgtest-dev libgmock-dev libcli11-dev nlohmann-json3-dev libsodium-dev libxxhash-dev
  fio
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

cmd=(apt-get install -y --no-install-recommends "${missing[@]}")
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]}"
  echo "install-deps: run as root:  apt-get update && ${cmd[*]}"
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
"${cmd[@]}"
