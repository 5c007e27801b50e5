#!/usr/bin/env bash
# Runs the test suite, inside a loopback-only network namespace where this machine allows one
# (unshare -n as root, unshare -rn otherwise), so that every Ray started by a test stays on 127.0.0.1.
#
#   bash tests/run.sh              # the whole suite: two pytest processes, see below
#   bash tests/run.sh PYTEST_ARGS  # one pytest process with these arguments (paths, -k, -s, ...)
#
# The whole suite runs as two pytest processes that share the two cores: one runs the tests that start Ray
# (-m ray), one after another, and prints as it goes, then its 12 slowest; the other runs the rest meanwhile (a Ray
# run leaves about a fifth of the cores idle, which they take), and its report follows. Two Ray runs at once would
# only share the cores. The exit code is the first process's unless that one passed.
# -X faulthandler (PYTHONFAULTHANDLER): a crash at any point of a process, not only inside a test, prints every
# thread's stack.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${DYNARAY_NETNS:-0}" != 1 ]; then
    enter='ip link set lo up && DYNARAY_NETNS=1 exec bash tests/run.sh "$@"'
    if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
        exec unshare -n sh -c "$enter" sh "$@"
    elif unshare -rn true 2>/dev/null; then
        exec unshare -rn sh -c "$enter" sh "$@"
    fi
    echo "tests/run.sh: no network namespace available; tests that start Ray are skipped" >&2
fi
export PYTHONFAULTHANDLER=1
# Each pytest dies with this script (--pdeathsig), even when it is killed with SIGKILL and cannot clean up.
orphan_guard=()
if setpriv --pdeathsig KILL true 2>/dev/null; then orphan_guard=(setpriv --pdeathsig KILL); fi
pytest=("${orphan_guard[@]}" .venv/bin/python -X faulthandler -m pytest -q)
if [ $# -gt 0 ]; then
    exec "${pytest[@]}" "$@"
fi
others=$(mktemp)
trap 'rm -f "$others"' EXIT
"${pytest[@]}" tests -m "not ray" -p no:cacheprovider > "$others" 2>&1 &
others_pid=$!
set +e
"${pytest[@]}" tests -m ray --durations=12
ray_code=$?
wait "$others_pid"
others_code=$?
set -e
echo
echo "tests/run.sh: the tests that do not start Ray (run meanwhile):"
cat "$others"
[ "$ray_code" != 0 ] && exit "$ray_code"
exit "$others_code"
