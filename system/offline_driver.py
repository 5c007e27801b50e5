"""The driver of offline mode's phases (``system/offline.py``): fit and clone -> refine in imagination -> stop."""

from __future__ import annotations

import math
from typing import Any

from replay.handles import get
from system.driver import Driver, Summary, _Call
from system.loops import LearnerReport
from system.offline import OfflineData, conservatism_from_calibration


class OfflineDriver(Driver):
    """Drives an offline run's phases (module docstring) over the roles :func:`system.wiring.build_system` made for
    ``offline.enabled``: the base driver's loop, reports, evaluations and checkpoint, with the phase decisions in
    the learner-report handlers and a stop rule by policy updates."""

    def __init__(self, config: Any, spec: Any, system: Any, run_dir: Any, data: OfflineData, **kwargs: Any):
        super().__init__(config, spec, system, run_dir, **kwargs)
        self.data = data
        self.phase = "fit"
        self.model_frozen = False
        self.bc_done = config.policy.bc_init_updates == 0
        self.policy_updates = 0
        self.eval_env_steps = 0
        self.conservatism: dict[str, float] = {}
        self.calibration: dict[str, float] = {}
        self._next_offline_eval = config.policy.bc_init_updates + config.offline.eval_every_updates
        self._eval_phase: dict[int, str] = {}

    # roles ------------------------------------------------------------------------------------------------------
    def _start_roles(self) -> None:
        self._submit_learner("policy")
        # imagination waits for the frozen model and the cloned policy
        self._submit_learner("world_model", self.config.offline.model_max_updates)

    def _on_world_model(self, call: _Call, report: LearnerReport) -> None:
        self._learner_columns("world_model", report)
        if self._stop_reason:
            return
        paused = report.metrics.get("paused", 0.0) > 0 and "world_model_val_coverage_90" in self._latest["world_model"]
        if paused or report.total_updates >= self.config.offline.model_max_updates:
            self._freeze_model(report)
        else:
            self._submit_learner("world_model", self.config.offline.model_max_updates - report.total_updates)

    def _freeze_model(self, report: LearnerReport) -> None:
        """The fit ended: publish the final model, set the conservatism from its calibration, maybe start refining."""
        get(self.system.world_model.publish_now.remote())
        latest = self._latest["world_model"]
        self.calibration = {k[len("world_model_"):]: v for k, v in latest.items() if k.startswith("world_model_val_")}
        imagination = self.config.imagination
        penalty, threshold = imagination.penalty_scale, imagination.max_disagreement
        if self.config.offline.calibrated_conservatism:
            penalty, threshold = conservatism_from_calibration(
                latest, self.data.reward_std, self.config.world_model.calibration_bins,
                self.config.offline.penalty_factor, self.config.offline.truncation_factor)
        self.conservatism = {"penalty_scale": penalty, "max_disagreement": threshold,
                             "model_updates": report.total_updates}
        for worker in self.system.imagination.values():
            get(worker.set_conservatism.remote(penalty, threshold))
        self.model_frozen = True
        self._maybe_refine()

    def _on_policy(self, call: _Call, report: LearnerReport) -> None:
        self._policy_version = report.version
        self.policy_updates = report.total_updates
        self._learner_columns("policy", report)
        if self._stop_reason:
            return
        if not self.bc_done and report.total_updates >= self.config.policy.bc_init_updates:
            self.bc_done = True
            get(self.system.policy.publish_now.remote())
            self._offline_eval("bc")
            self._maybe_refine()
        if report.total_updates >= self.config.offline.total_updates:  # run() asks for the final evaluation
            self._stop_reason = f"policy-update budget of {self.config.offline.total_updates} reached"
            return
        if self.bc_done and report.total_updates >= self._next_offline_eval:
            self._next_offline_eval += self.config.offline.eval_every_updates
            self._offline_eval(self.phase)
        self._submit_learner("policy")

    def _maybe_refine(self) -> None:
        if self.phase == "fit" and self.model_frozen and self.bc_done:
            self.phase = "refine"
            for i in list(self.system.imagination):
                self._submit_imagination(i)

    # evaluations (real env, never training data) ----------------------------------------------------------------
    def _offline_eval(self, phase: str) -> None:
        self._eval_phase[self.policy_updates] = phase
        self._request_eval(self.policy_updates, final=phase == "final")

    def _on_eval(self, call: _Call, result: Any) -> None:
        self.eval_env_steps += int(sum(result.lengths))
        super()._on_eval(call, result)

    def _eval_row(self, env_steps: int, version: int, result: Any) -> dict[str, Any]:
        row = super()._eval_row(0, version, result)
        row.update(policy_updates=env_steps, phase=self._eval_phase.get(env_steps, self.phase),
                   eval_env_steps_total=self.eval_env_steps)
        return row

    # reports ----------------------------------------------------------------------------------------------------
    def _row(self) -> dict[str, Any]:
        row = super()._row()
        scored = [e for e in self.evals if not math.isnan(e["return_mean"])]
        if scored:  # the newest evaluation by policy updates (every one is at env step 0)
            row["eval_return_mean"] = max(scored, key=lambda e: e["policy_updates"])["return_mean"]
        row.update(offline_phase=self.phase, offline_policy_updates=self.policy_updates,
                   eval_env_steps_total=self.eval_env_steps)
        return row

    # the loop -----------------------------------------------------------------------------------------------------
    def run(self) -> Summary:
        self._start_roles()
        if self.bc_done:  # started from another run's actor (offline.init_from): its return before refining
            self._offline_eval("init")
        while True:
            self._turn()
            if not self._stop_reason:
                continue
            if self._last_eval_mark < self.policy_updates:
                self._offline_eval("final")
            elif self._evals_done():
                break
        summary = self._finish()
        self._write_offline_summary()
        return summary

    def _write_offline_summary(self) -> None:
        """``offline.json`` in the run directory, and the learning curve over policy updates."""
        scored = [e for e in self.evals if not math.isnan(e["return_mean"])]
        by_phase: dict[str, float] = {}
        for e in sorted(scored, key=lambda e: e["policy_updates"]):
            by_phase[e["phase"]] = e["return_mean"]
        self.run_dir.write_json("offline", {
            "dataset": {"source": self.data.source, "rows": self.data.rows, "episodes": self.data.episodes,
                        "behaviour_return": self.data.behaviour_return, "reward_std": self.data.reward_std},
            "policy_updates": self.policy_updates,
            "training_env_steps": self.env_steps,
            "eval_env_steps": self.eval_env_steps,
            "calibration": self.calibration,
            "conservatism": self.conservatism,
            "eval_return": by_phase,
            "evals": [{k: e[k] for k in ("policy_updates", "phase", "return_mean", "return_std")} for e in scored],
        })
        if scored:
            self.run_dir.plot_learning_curve(
                [{**e, "env_steps": e["policy_updates"]} for e in sorted(scored, key=lambda e: e["policy_updates"])],
                f"{self.config.env.id} offline ({self.run_dir.path.name})", xlabel="policy updates")
