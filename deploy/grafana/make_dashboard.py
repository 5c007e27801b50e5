"""Writes dashboards/dynaray.json, the Grafana dashboard of a dynaray run: one row per role.

    .venv/bin/python deploy/grafana/make_dashboard.py        # after changing a panel below

Every query filters on the ``run`` variable (the runs whose driver reports, from ``ray_dynaray_driver_*``) and
the ``datasource`` variable (any Prometheus that scrapes Ray's nodes, deploy/prometheus/prometheus.yml).
tests/system/test_prometheus.py evaluates every expression against a real Prometheus; tests/system/test_metrics.py
checks that the JSON is what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "dynaray.json"
UID = "dynaray-run"
RATE = "$__rate_interval"
WIDTH = 24
COUNTS = {"Restarts and env errors", "Env errors", "Rate-limiter pressure: time waited", "'Not now' answers / s",
          "Evictions and duplicates / s", "Stopped rows / s", "Requests / s by status", "Rows and episodes stored",
          "Policy downloads", "Stalled actors", "Scale requests and desired workers"}
"""Panels of events that may not have happened yet."""


def m(name: str, *labels: str) -> str:
    """A selector of ``ray_dynaray_<name>`` for the chosen runs (plus extra label matchers)."""
    matchers = ", ".join(('run=~"$run"',) + labels)
    return f"ray_dynaray_{name}{{{matchers}}}"


def panel(title: str, targets: list[tuple[str, str]], unit: str = "short", description: str = "",
          width: int = 8, kind: str = "timeseries", overrides: list | None = None) -> dict[str, Any]:
    """A panel; one whose title is in :data:`COUNTS` shows 0 instead of "No data" (Ray exports a counter only
    once it has been incremented: no restart yet means no series)."""
    defaults: dict[str, Any] = {"unit": unit}
    if title in COUNTS:
        defaults["noValue"] = "0"
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"w": width, "h": 8},
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }


def right_axis(series: str) -> dict[str, Any]:
    """Field override: draw the series named ``series`` against the right axis."""
    return {"matcher": {"id": "byName", "options": series},
            "properties": [{"id": "custom.axisPlacement", "value": "right"}, {"id": "unit", "value": "short"}]}


ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    ("Run (driver)", [
        panel("Returns and env steps", [
            (f"max by (run) ({m('driver_eval_return')})", "eval return {{run}}"),
            (f"max by (run) ({m('driver_train_return')})", "train return {{run}}"),
            (f"max by (run) ({m('driver_env_steps_total')})", "env steps {{run}}"),
        ], description="Mean eval return (newest evaluation) and mean return of the last 20 training episodes; "
                       "env steps on the right axis, so returns read against env steps.",
            width=12, overrides=[{"matcher": {"id": "byRegexp", "options": "env steps.*"},
                                  "properties": [{"id": "custom.axisPlacement", "value": "right"}]}]),
        panel("Env steps toward the budget", [
            (f"max by (run) ({m('driver_env_steps_total')}) / max by (run) ({m('driver_budget_env_steps')})",
             "{{run}}"),
        ], unit="percentunit", width=6),
        panel("Env steps / s (all workers)", [
            (f"max by (run) ({m('driver_env_steps_per_s')})", "{{run}}"),
        ], width=6),
        panel("Workers", [(f"max by (run, pool) ({m('driver_workers')})", "{{pool}} {{run}}")], width=6),
        panel("Restarts and env errors", [
            (f"max by (run, restarted) ({m('driver_restarts_total')})", "{{restarted}} restarts {{run}}"),
            (f"max by (run) ({m('driver_env_errors_total')})", "env errors {{run}}"),
        ], description="Restarts of each role's actors after a dead process (Ray max_restarts), counted by the "
                       "driver, and env failures survived by making the envs afresh, since the run started.", width=6),
        panel("Stalled actors", [
            (f"max by (run, actor) ({m('driver_stalled')}) > 0", "{{actor}} {{run}}"),
        ], description="Actors that had work but made no progress for run.stall_timeout_s (a worker that cannot "
                       "be placed, a learner waiting on data that does not come, ...).", width=6),
        panel("Policy staleness", [
            (f"max by (run) ({m('driver_policy_staleness')})", "{{run}}"),
        ], description="Newest published policy version minus the mean version the rollout workers act with.",
            width=6),
        panel("Policy version", [(f"max by (run) ({m('driver_policy_version')})", "{{run}}")], width=6),
    ]),
    ("Rollout workers", [
        panel("Env steps / s per worker", [
            (f"sum by (run, index) (rate({m('rollout_env_steps_total')}[{RATE}]))", "worker {{index}}"),
        ]),
        panel("Episode return", [
            (f"max by (run, index) ({m('rollout_episode_return')})", "worker {{index}}"),
        ], description="Mean return of the episodes each worker finished in its last call."),
        panel("Episode length", [
            (f"max by (run, index) ({m('rollout_episode_length')})", "worker {{index}}"),
        ]),
        panel("Policy staleness per worker (versions)", [
            (f"max by (run) ({m('policy_published_version')}) - on (run) group_right "
             f"max by (run, index) ({m('rollout_policy_version')})", "worker {{index}}"),
        ], description="Published policy version minus the version each worker acts with."),
        panel("Episodes / s", [
            (f"sum by (run) (rate({m('rollout_episodes_total')}[{RATE}]))", "{{run}}"),
        ]),
        panel("Env errors", [
            (f"sum by (run, index) (increase({m('rollout_env_errors_total')}[{RATE}]))", "worker {{index}}"),
        ]),
    ]),
    ("Replay", [
        panel("Rows stored", [
            (f"sum by (run, table) ({m('replay_size')})", "{{table}}"),
            (f"sum by (run, table) ({m('replay_capacity')})", "{{table}} capacity"),
        ]),
        panel("Rows inserted and sampled / s", [
            (f"sum by (run, table) (rate({m('replay_inserted_rows_total')}[{RATE}]))", "{{table}} inserted"),
            (f"sum by (run, table) (rate({m('replay_sampled_rows_total')}[{RATE}]))", "{{table}} sampled"),
        ]),
        panel("Rate-limiter pressure: time waited", [
            (f"sum by (run, table) (rate({m('replay_insert_wait_seconds_total')}[{RATE}]))", "{{table}} inserts"),
            (f"sum by (run, table) (rate({m('replay_sample_wait_seconds_total')}[{RATE}]))", "{{table}} samples"),
        ], unit="s", description="Seconds per second that inserts and samples spent waiting in the shards' "
                                 "long polls (summed over threads: can exceed 1). Inserts waiting: consumers are "
                                 "behind their ratio; samples waiting: the collectors are."),
        panel("Rate-limiter lag per consumer", [
            (f"sum by (run, table, consumer) ({m('replay_limiter_lag')})", "{{table}} {{consumer}}"),
            (f"sum by (run, table, consumer) ({m('replay_limiter_error_buffer')})", "{{consumer}} error buffer"),
        ], description="Rows a consumer is behind its samples-per-insert target (negative: ahead); inserts wait "
                       "when it passes the error buffer, samples when it falls below minus the buffer."),
        panel("'Not now' answers / s", [
            (f"sum by (run, table) (rate({m('replay_insert_refusals_total')}[{RATE}]))", "{{table}} inserts"),
            (f"sum by (run, table) (rate({m('replay_sample_refusals_total')}[{RATE}]))", "{{table}} samples"),
        ]),
        panel("Evictions and duplicates / s", [
            (f"sum by (run, table) (rate({m('replay_evicted_rows_total')}[{RATE}]))", "{{table}} evicted"),
            (f"sum by (run, table) (rate({m('replay_duplicates_total')}[{RATE}]))", "{{table}} duplicates"),
            (f"sum by (run, table) (rate({m('replay_dropped_non_finite_rows_total')}[{RATE}]))",
             "{{table}} NaN/inf dropped"),
        ]),
    ]),
    ("Policy learner", [
        panel("Updates / s and per env step", [
            (f"sum by (run) (rate({m('policy_updates_total')}[{RATE}]))", "updates/s"),
            (f"sum by (run) (rate({m('policy_updates_total')}[{RATE}])) / on (run) "
             f"sum by (run) (rate({m('rollout_env_steps_total')}[{RATE}]))", "per env step"),
        ], overrides=[right_axis("per env step")]),
        panel("Losses", [
            (f"max by (run) ({m('policy_critic_loss')})", "critic"),
            (f"max by (run) ({m('policy_actor_loss')})", "actor"),
            (f"max by (run) ({m('policy_alpha_loss')})", "alpha"),
        ]),
        panel("Gradient norms", [
            (f"max by (run) ({m('policy_critic_grad_norm')})", "critic"),
            (f"max by (run) ({m('policy_actor_grad_norm')})", "actor"),
        ]),
        panel("Entropy, alpha, Q", [
            (f"max by (run) ({m('policy_entropy')})", "entropy"),
            (f"max by (run) ({m('policy_alpha')})", "alpha"),
            (f"max by (run) ({m('policy_q_mean')})", "mean Q"),
        ], overrides=[right_axis("mean Q")]),
        panel("Waiting for batches", [
            (f"max by (run) ({m('policy_sample_wait_fraction')})", "policy"),
            (f"max by (run) ({m('world_model_sample_wait_fraction')})", "world model"),
        ], unit="percentunit"),
        panel("Published versions", [
            (f"max by (run) ({m('policy_published_version')})", "policy"),
            (f"max by (run) ({m('world_model_published_version')})", "world model"),
        ]),
    ]),
    ("World model", [
        panel("Updates / s", [
            (f"sum by (run) (rate({m('world_model_updates_total')}[{RATE}]))", "updates/s"),
        ]),
        panel("Training losses", [
            (f"max by (run) ({m('world_model_loss')})", "loss"),
            (f"max by (run) ({m('world_model_nll')})", "NLL"),
            (f"max by (run) ({m('world_model_termination_loss')})", "termination"),
        ]),
        panel("Validation (holdout)", [
            (f"max by (run) ({m('world_model_val_nll')})", "val NLL"),
            (f"max by (run) ({m('world_model_val_mse')})", "val MSE"),
            (f"max by (run) ({m('world_model_val_elite_mse')})", "elite-mean MSE"),
            (f"max by (run) ({m('world_model_val_termination_acc')})", "termination accuracy"),
        ], description="Elite-mean NLL and MSE on held-out real rows (normalised targets).",
            overrides=[right_axis("termination accuracy")]),
        panel("Uncertainty calibration", [
            (f"max by (run) ({m('world_model_val_disagreement_spearman')})", "rank corr. disagreement ~ error"),
            (f"max by (run) ({m('world_model_val_disagreement_mean')})", "mean disagreement"),
        ], description="Spearman correlation between a held-out row's elite disagreement and the elite mean's "
                       "error on it: near 0, the model does not know where it is wrong.",
            overrides=[right_axis("mean disagreement")]),
        panel("Calibration table (newest validation)", [
            ('max by (run, __name__) ({__name__=~"ray_dynaray_world_model_val_calib_q[0-9]+_error", '
             'run=~"$run"})', "{{__name__}}"),
            ('max by (run, __name__) ({__name__=~"ray_dynaray_world_model_val_calib_q[0-9]+_disagreement", '
             'run=~"$run"})', "{{__name__}}"),
        ], description="RMS error and disagreement per disagreement-quantile bin (q0 lowest): a calibrated model's "
                       "error rises with its disagreement."),
        panel("Gradient norm", [(f"max by (run) ({m('world_model_grad_norm')})", "grad norm")]),
    ]),
    ("Imagination", [
        panel("Imagined transitions / s", [
            (f"sum by (run, index) (rate({m('imagination_transitions_total')}[{RATE}]))", "worker {{index}}"),
        ]),
        panel("Stopped rows / s", [
            (f"sum by (run, reason) (rate({m('imagination_stopped_rows_total')}[{RATE}]))", "{{reason}}"),
        ], description="Rows whose rollout ended before the horizon: predicted termination, or a non-finite "
                       "model output."),
        panel("Model disagreement and reward penalty", [
            (f"max by (run, index) ({m('imagination_disagreement_mean')})", "disagreement, worker {{index}}"),
            (f"max by (run, index) ({m('imagination_penalty_mean')})", "penalty, worker {{index}}"),
        ], description="Means over the imagined rows written in each worker's last call (conservative rollouts)."),
        panel("Horizon and model staleness", [
            (f"max by (run) ({m('imagination_horizon')})", "horizon"),
            (f"max by (run) ({m('world_model_published_version')}) - on (run) group_right "
             f"max by (run, index) ({m('imagination_model_version')})", "model versions behind, worker {{index}}"),
        ]),
    ]),
    ("Evaluator, weights store, control", [
        panel("Eval return per evaluator", [
            (f"max by (run, index) ({m('evaluator_return_mean')})", "evaluator {{index}}"),
            (f"max by (run, index) ({m('evaluator_seconds')})", "seconds, evaluator {{index}}"),
            (f"max by (run, index) ({m('evaluator_model_return_mean')})", "in the world model, evaluator {{index}}"),
        ], description="Mean return of each evaluator's newest evaluation, its wall time (right axis), and with "
                       "eval.in_model its return estimated in the world model.",
            overrides=[{"matcher": {"id": "byRegexp", "options": "seconds.*"},
                        "properties": [{"id": "custom.axisPlacement", "value": "right"}, {"id": "unit",
                                                                                          "value": "s"}]}]),
        panel("Weights store: publishes and polls / s", [
            (f"sum by (run, name) (rate({m('store_publishes_total')}[{RATE}]))", "{{name}} publishes"),
            (f"sum by (run) (rate({m('store_polls_total')}[{RATE}]))", "polls"),
        ], overrides=[right_axis("polls")]),
        panel("Scale requests and desired workers", [
            (f"sum by (run, outcome) ({m('control_scale_requests_total')})", "{{outcome}} requests"),
            (f"max by (run, pool) ({m('control_desired_workers')})", "{{pool}} desired"),
        ]),
    ]),
    ("Ingest gateway", [
        panel("Requests / s by status", [
            (f"sum by (run, code) (rate({m('gateway_requests_total')}[{RATE}]))", "{{code}}"),
        ]),
        panel("Rows and episodes stored", [
            (f"sum by (run) ({m('gateway_rows_total')})", "rows"),
            (f"sum by (run) ({m('gateway_episodes_total')})", "episodes"),
        ], overrides=[right_axis("episodes")]),
        panel("Policy downloads", [(f"sum by (run) ({m('gateway_policy_downloads_total')})", "downloads")]),
    ]),
]


def dashboard() -> dict[str, Any]:
    panels, y, next_id = [], 0, 1
    for title, row_panels in ROWS:
        panels.append({"type": "row", "title": title, "collapsed": False, "id": next_id,
                       "gridPos": {"x": 0, "y": y, "w": WIDTH, "h": 1}, "panels": []})
        next_id, y, x = next_id + 1, y + 1, 0
        for p in row_panels:
            w = p["gridPos"]["w"]
            if x + w > WIDTH:
                x, y = 0, y + 8
            panels.append({**p, "id": next_id, "gridPos": {"x": x, "y": y, "w": w, "h": 8}})
            next_id, x = next_id + 1, x + w
        y += 8
    return {
        "uid": UID,
        "title": "dynaray run",
        "description": "Every role of a dynaray run (docs/architecture.md, Metrics). Generated by "
                       "deploy/grafana/make_dashboard.py.",
        "tags": ["dynaray", "ray"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            {"name": "run", "label": "Run", "type": "query",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(ray_dynaray_driver_budget_env_steps, run)", "refId": "run"},
             "definition": "label_values(ray_dynaray_driver_budget_env_steps, run)",
             "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "hide": 0,
             "sort": 1},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
