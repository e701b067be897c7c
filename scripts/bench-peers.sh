#!/usr/bin/env bash
# Installs the tools `cargo bench --bench scale` measures faultline against, when missing:
# stress-ng (the Debian package, through apt) and Chaos Toolkit (its PyPI package, in a
# virtualenv at $FAULTLINE_PEERS_VENV, default target/bench-peers/venv). Says what it does.
# Prints nothing else on stdout but `chaos=PATH` and `stress-ng=PATH` lines for the bench.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${FAULTLINE_PEERS_VENV:-$root/target/bench-peers/venv}"

if ! command -v stress-ng >/dev/null 2>&1; then
    echo "bench-peers: stress-ng is missing; installing the Debian package (apt-get install stress-ng)" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get install -y -qq stress-ng >&2 || { $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq stress-ng >&2; }
fi
echo "stress-ng=$(command -v stress-ng)"

if [ ! -x "$venv/bin/chaos" ]; then
    echo "bench-peers: Chaos Toolkit is missing; installing chaostoolkit from PyPI into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet chaostoolkit >&2
fi
echo "chaos=$venv/bin/chaos"
