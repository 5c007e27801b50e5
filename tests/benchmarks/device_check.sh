#!/usr/bin/env bash
# Device check (issue 16): on a machine with a GPU, in under 8 minutes, prints SAC and world-model updates/s at the
# hopper preset's sizes, imagined transitions/s, and a `hopper` run's env steps/s and eval return after the env
# steps that fit in 5 minutes (`dynaray bench device`, system/bench/device.py says what each number is). Without a
# GPU, or with --small, it runs the CPU fallback: small sizes, 2 s per rate and a 10 s run (what `make test` runs,
# tests/system/bench/test_device.py).
#
#   tests/benchmarks/device_check.sh [--small] [OUT_DIR]     # OUT_DIR (default runs/device-check): run dir, JSON
#
# Ray stays on 127.0.0.1: the check enters a loopback-only network namespace where it can (as tests/run.sh) unless
# it is already in one (DYNARAY_NETNS=1). Exit code: that of `dynaray bench device` (1 when the run failed).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
small=0
if [ "${1:-}" = "--small" ]; then small=1; shift; fi
out=${1:-runs/device-check}
mkdir -p "$out"
if [ "$small" = 0 ] && "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    args="--seconds 15 --run-seconds 300"              # ~1 min of rates, 5 min of run, Ray start and drain
    echo "device_check: GPU found: full sizes, 300 s hopper run" >&2
else
    args="--small --seconds 2 --run-seconds 10"
    echo "device_check: CPU fallback (--small): small sizes, 10 s hopper run" >&2
fi
bench="PYTHONPATH=\"\${PYTHONPATH:-$PWD}\" exec $PY -m system.cli bench device $args --runs-dir $out --json $out/device_check.json"
if [ "${DYNARAY_NETNS:-0}" = 1 ]; then
    eval "$bench"
elif ! command -v ip >/dev/null; then   # no iproute2 to bring lo up in a namespace (a bare GPU image)
    eval "$bench"
elif [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
    exec unshare -n sh -c "ip link set lo up && DYNARAY_NETNS=1 $bench"
elif unshare -rn true 2>/dev/null; then
    exec unshare -rn sh -c "ip link set lo up && DYNARAY_NETNS=1 $bench"
else
    eval "$bench"
fi
