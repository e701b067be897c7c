#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium for tests/dashboard.rs, installing Debian's
# `chromium` package when none is found (CI runs as root).
set -euo pipefail

for name in chromium chromium-browser; do
  if path=$(command -v "$name" 2>/dev/null); then
    echo "$path"
    exit 0
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "chromium is missing; install Debian's chromium package (as root: apt-get install chromium)" >&2
  exit 1
fi
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
command -v chromium
