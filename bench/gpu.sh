#!/usr/bin/env bash
# The GPU check of issue 21 (bench/gpu.py says what it measures), for a machine that
# has Python and torch and none of ttspo's other dependencies: ttspo's source is put
# on PYTHONPATH (the repository root IS the package `ttspo`: a temp folder holds a
# link `ttspo -> root`), nothing is installed, nothing is fetched, no store is made.
#
#   bash bench/gpu.sh                  # on one GPU, under 4 minutes; exit 1 on any CPU work
#   bash bench/gpu.sh --allow-cpu      # smoke check without CUDA (figures mean nothing)
#   PYTHON=/path/to/python bash bench/gpu.sh --steps 10   # other options: bench/gpu.py --help
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
link="$(mktemp -d)"
trap 'rm -rf "$link"' EXIT
ln -s "$root" "$link/ttspo"
exec_python="${PYTHON:-python3}"
# 230 s: the whole check stays under 4 minutes even if a part hangs
PYTHONPATH="$link${PYTHONPATH:+:$PYTHONPATH}" timeout 230 "$exec_python" "$root/bench/gpu.py" "$@"
