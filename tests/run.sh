#!/usr/bin/env bash
# Runs the test suite, inside a loopback-only network namespace where this machine allows one
# (unshare -n as root, unshare -rn otherwise), so that every Ray started by a test stays on 127.0.0.1.
# -X faulthandler: a crash at any point of the process, not only inside a test, prints every thread's stack.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
inner="ip link set lo up && DYNARAY_NETNS=1 exec $PY -X faulthandler -m pytest ${*:-tests} -q"
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
    exec unshare -n sh -c "$inner"
elif unshare -rn true 2>/dev/null; then
    exec unshare -rn sh -c "$inner"
else
    echo "tests/run.sh: no network namespace available; tests that start Ray are skipped" >&2
    exec $PY -X faulthandler -m pytest ${*:-tests} -q
fi
