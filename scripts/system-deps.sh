#!/usr/bin/env bash
# Install the Debian packages named as arguments when their commands are missing.
# As root it uses apt-get; otherwise it says what to install and fails.
set -euo pipefail
declare -A probe=([orthanc]=/usr/sbin/Orthanc [dcmtk]=dcmqrscp [redis-server]=redis-server
                  [docker-compose]=docker-compose)
missing=()
for pkg in "$@"; do
  cmd=${probe[$pkg]:-$pkg}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "$cmd" ]; then missing+=("$pkg"); fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "pacs-discovery: missing Debian packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
