#!/usr/bin/env bash
# Locomotion against SAC on a GPU machine (issue 16): `dynaray bench locomotion` with dynaray's learners and
# imagination on the GPU (the device check's shares), every run at once, stopped by SIGTERM after BUDGET_S seconds.
# The bench then stops its runs once each (a dynaray run checkpoints and writes its evaluations) and writes its
# report of what they evaluated (docs/benchmarks.md, "Locomotion against SAC"). What comes back fits the device
# tool's few files: the report (OUT_DIR/locomotion.json), its log and plots, and one tarball of the runs' configs,
# evaluations and metrics.
#
#   [BUDGET_S=480] [ENVS=Hopper-v5] [SYSTEMS="dynaray sb3"] [SEEDS="0 1 2"] [ENV_STEPS=10000] [EVAL_EVERY=2000] \
#   [JOBS=6] [SET="key=value ..."] tests/benchmarks/device_locomotion.sh OUT_DIR
#
# dynaray runs its env's preset at the preset's update-to-data ratio (hopper: MBPO's 20 policy updates per env step)
# with a 2,000-step warm-up, then SET. On the device machine, with the bundle of tests/benchmarks/device_bundle.sh
# (and Stable-Baselines3's wheel) on PYTHONPATH: PYTHON=python3 PYTHONPATH=/tmp/site:$PWD ... (Ray stays on the
# machine's own addresses: that machine reaches nothing outside it). Exit code: the bench's (143 when the budget
# stopped it).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
out=${1:?usage: tests/benchmarks/device_locomotion.sh OUT_DIR}
mkdir -p "$out"
runs=$(mktemp -d)
gpu=""
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    gpu="placement.policy.num_gpus=0.5 placement.world_model.num_gpus=0.25 imagination.num_gpus=0.25"
    gpu="$gpu imagination.device=auto"
else
    echo "device_locomotion: no GPU: every role on the CPU" >&2
fi
warmup="rollout.warmup_steps=2000 policy.learning_starts=2000 world_model.learning_starts=2000"
# shellcheck disable=SC2086  # the lists are word-split on purpose
timeout --preserve-status -s TERM -k 120 "${BUDGET_S:-480}" "$PY" -m system.cli bench locomotion \
    --envs "${ENVS:-Hopper-v5}" --systems ${SYSTEMS:-dynaray sb3} --seeds ${SEEDS:-0 1 2} \
    --env-steps "${ENV_STEPS:-10000}" \
    --eval-every "${EVAL_EVERY:-2000}" --from-steps "${EVAL_EVERY:-2000}" --episodes 3 --jobs "${JOBS:-6}" \
    --runs-dir "$runs" --json "$out/locomotion.json" --set $warmup $gpu ${SET:-} \
    > "$out/locomotion.md" 2> "$out/bench.log"
code=$?
cp "$runs"/*.png "$out/" 2>/dev/null
tar czf "$out/runs.tgz" -C "$runs" --exclude='checkpoint*' --exclude=replay --exclude='.metrics-rows' .
echo "device_locomotion: bench exit code $code; report in $out/locomotion.md" >&2
exit $code
