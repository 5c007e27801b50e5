#!/usr/bin/env bash
# Runs the test suite, inside a loopback-only network namespace where this machine allows one
# (unshare -n as root, unshare -rn otherwise), so that every Ray started by a test stays on 127.0.0.1.
# Two pytest-xdist workers: one runs the tests that start Ray, one after another; the other the rest meanwhile
# (tests/conftest.py). DYNARAY_TEST_WORKERS=0 runs everything in one process, in file order.
# -X faulthandler (and PYTHONFAULTHANDLER in the workers): a crash at any point of a process, not only inside a
# test, prints every thread's stack.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
pytest="PYTHONFAULTHANDLER=1 exec $PY -X faulthandler -m pytest -n ${DYNARAY_TEST_WORKERS:-2} --dist loadgroup"
pytest="$pytest --no-loadscope-reorder ${*:-tests} -q"
inner="ip link set lo up && DYNARAY_NETNS=1 $pytest"
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
    exec unshare -n sh -c "$inner"
elif unshare -rn true 2>/dev/null; then
    exec unshare -rn sh -c "$inner"
else
    echo "tests/run.sh: no network namespace available; tests that start Ray are skipped" >&2
    eval "$pytest"
fi
