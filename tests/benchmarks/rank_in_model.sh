#!/usr/bin/env bash
# Ranking in the model (issue 13, docs/benchmarks.md "Ranking policies in a world model"): two InvertedPendulum-v5
# runs (seeds 0 and 1) keep a policy every 15 s of their learning (run.keep_checkpoints), then every kept policy of
# both is ranked in seed 0's final world model from its persisted replay's episode starts, with REAL real episodes
# per policy for the rank agreement (Spearman, Kendall, regret@1) and the time each ranking took.
#
#   tests/benchmarks/rank_in_model.sh [OUT_DIR] [REAL]     # default runs/rank-in-model, 10 real episodes per policy
#
# Ray stays on 127.0.0.1 (a loopback-only network namespace, as tests/run.sh). Output: OUT_DIR/ranking.json and
# OUT_DIR/ranking.png, and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
out=${1:-runs/rank-in-model}
real=${2:-10}
mkdir -p "$out"
netns() {
    if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then unshare -n sh -c "ip link set lo up && $1"
    else unshare -rn sh -c "ip link set lo up && $1"; fi
}
for seed in 0 1; do
    [ -f "$out/ip-s$seed/evals.parquet" ] && continue  # a finished run is kept (rerun the ranking alone)
    rm -rf "$out/ip-s$seed"
    netns "$PY -m system.cli train inverted_pendulum seed=$seed name=ip-s$seed run.runs_dir=$out \
        run.total_env_steps=2500 run.target_return=null run.checkpoint_every_s=15 run.keep_checkpoints=100 \
        run.progress=false"
done
exec $PY -m system.cli eval "$out/ip-s0/checkpoints" "$out/ip-s1/checkpoints" --in-model "$out/ip-s0" \
    --real "$real" --json "$out/ranking.json" --plot "$out/ranking.png"
