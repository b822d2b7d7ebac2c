#!/usr/bin/env bash
# Time the README's set-up: fresh clone (no .venv) -> working .venv.
#   bash bench/setup.sh [base|tests] [cold|warm]
# base = `bash .ci/setup`, tests = `bash .ci/setup tests` (adds the test and nemo
# extras). cold = an empty uv cache (every wheel downloaded; the cache is deleted
# afterwards), warm = the user's uv cache. Prints the first run, a second run in the
# same clone (nothing to do), the .venv size and a check that it works.
set -euo pipefail
extra=${1:-base}; cache=${2:-cold}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/ttspo-setup-XXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
if [ "$cache" = cold ]; then export UV_CACHE_DIR="$work/uv-cache"; fi
arg=(); if [ "$extra" = tests ]; then arg=(tests); fi
cd "$work/clone"
echo "load average before: $(cut -d' ' -f1 /proc/loadavg)"
t0=$(date +%s.%N); bash .ci/setup "${arg[@]}"; t1=$(date +%s.%N)
bash .ci/setup "${arg[@]}" 2>/dev/null; t2=$(date +%s.%N)
.venv/bin/ttspo --help >/dev/null
.venv/bin/python -c "import ttspo.builder.scoring.run, ttspo.trainer.policy.codec" 
if [ "$extra" = tests ]; then .venv/bin/python -c "import pytest, hypothesis, nemo"; fi
printf 'setup %s, %s uv cache: first run %.1f s, second run %.1f s, .venv %s, uv cache %s\n' \
    "$extra" "$cache" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" \
    "$(du -sh .venv | cut -f1)" "$(du -sh "${UV_CACHE_DIR:-$(uv cache dir)}" | cut -f1)"
echo "load average after: $(cut -d' ' -f1 /proc/loadavg)"
