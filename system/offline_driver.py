"""The driver of offline mode's phases (``system/offline.py``): fit and clone -> refine in imagination -> stop.

Its checkpoints (``driver.json``, key ``offline``) hold what it needs to go on (``dynaray train --resume``): the
phase, whether the model is frozen and the cloning done, the conservatism set from the frozen model's calibration,
the policy updates and eval env steps so far, the next evaluation mark and the dataset's description. A run resumed
after the fit does not fit the model again: the world-model learner restores the frozen model from the checkpoint
and publishes it, and the imagination workers get the conservatism again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Any

from replay.handles import get
from system.checkpoint import FoundCheckpoint
from system.driver import Driver, Summary, _Call, _EvalAsk, _plain
from system.loops import LearnerReport
from system.offline import OfflineData, conservatism_from_calibration
from system.run_dir import CheckpointError


def resumed_offline_data(found: FoundCheckpoint) -> OfflineData:
    """The dataset's description saved in an offline run's checkpoint (its rows are in the run's replay already).

    Raises:
        CheckpointError: the checkpoint is not an offline run's (no ``offline`` part in its ``driver.json``).
    """
    saved = (found.document("driver.json") or {}).get("offline")
    if not isinstance(saved, dict) or not isinstance(saved.get("data"), dict):
        raise CheckpointError(f"checkpoint in {str(found.path)!r} has no offline state (written before offline runs "
                              f"could be resumed?); start the run again, or from its actor with --init")
    return OfflineData(**saved["data"])


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
        self._resumed = kwargs.get("resume") is not None
        if self._resumed:
            self._restore_offline(kwargs["resume"])

    # roles ------------------------------------------------------------------------------------------------------
    def _start_roles(self) -> None:
        self._submit_learner("policy")
        if self.model_frozen:  # resumed after the fit: the restored model stays frozen (published when restored)
            self._send_conservatism(list(self.system.imagination))
            if self.phase == "refine":
                for i in list(self.system.imagination):
                    self._submit_imagination(i)
            return
        # imagination waits for the frozen model and the cloned policy
        done = int(self._latest.get("world_model", {}).get("world_model_total_updates", 0))
        self._submit_learner("world_model", max(1, self.config.offline.model_max_updates - done))

    def _send_conservatism(self, workers: list[int]) -> None:
        """Set the frozen model's conservatism on imagination workers ``workers`` (without waiting: a worker runs
        the driver's calls in the order they were sent, so it applies it before its next ``run``)."""
        for i in workers:
            self.system.imagination[i].set_conservatism.remote(self.conservatism["penalty_scale"],
                                                               self.conservatism["max_disagreement"])

    def _actor_restarted(self, name: str) -> None:
        """A restarted imagination worker has the configured penalty and truncation: set the frozen model's again
        (before the driver sends it its lost call)."""
        super()._actor_restarted(name)
        restarted = [i for i, handle in self.system.imagination.items() if self.system.name_of(handle) == name]
        if restarted and self.model_frozen:
            self._send_conservatism(restarted)

    def _start_worker(self, pool: str, i: int) -> None:
        """A worker added by scaling: an imagination worker gets the frozen model's conservatism first."""
        if pool == "imagination" and self.model_frozen:
            self._send_conservatism([i])
        super()._start_worker(pool, i)

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

    def _kept_key(self, policy: dict[str, Any], meta: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Kept checkpoints of an offline run are keyed by the saved actor's policy updates (no env steps)."""
        updates = int(policy["learner"]["num_updates"])
        return updates, {"kept_by": "policy_updates", "policy_updates": updates, "offline_phase": self.phase}

    def _maybe_refine(self) -> None:
        if self.phase == "fit" and self.model_frozen and self.bc_done:
            self.phase = "refine"
            for i in list(self.system.imagination):
                self._submit_imagination(i)

    # evaluations (real env, never training data) ----------------------------------------------------------------
    def _offline_eval(self, phase: str) -> None:
        self._request_eval(self.policy_updates, final=phase in ("final", "interrupted"), tag=phase)

    def _on_eval(self, call: _Call, result: Any) -> None:
        self.eval_env_steps += int(sum(result.lengths))
        super()._on_eval(call, result)

    def _eval_row(self, ask: _EvalAsk, version: int, result: Any) -> dict[str, Any]:
        row = super()._eval_row(replace(ask, mark=0), version, result)
        row.update(policy_updates=ask.mark, phase=ask.tag,
                   eval_env_steps_total=self.eval_env_steps)
        return row

    # reports ----------------------------------------------------------------------------------------------------
    def _row(self) -> dict[str, Any]:
        row = super()._row()
        scored = [e for e in self.evals if not math.isnan(e["return_mean"])]
        if scored:  # the newest evaluation by policy updates (every one is at env step 0)
            newest = max(scored, key=lambda e: e["policy_updates"])
            row.update(eval_return_mean=newest["return_mean"], eval_policy_updates=newest["policy_updates"])
        row.update(offline_phase=self.phase, offline_policy_updates=self.policy_updates,
                   eval_env_steps_total=self.eval_env_steps)
        return row

    # checkpoints and resume ---------------------------------------------------------------------------------------
    def _counters(self) -> dict[str, Any]:
        """The base driver's counters plus ``offline``: what :meth:`_restore_offline` continues from (evaluations
        asked for but not done are asked for again at their mark)."""
        counters = super()._counters()
        pending = [c.payload.mark if c.kind == "eval_weights" else c.payload[1].mark
                   for c in self._calls() if c.kind in ("eval_weights", "eval")]
        counters["offline"] = _plain({
            "phase": self.phase, "model_frozen": self.model_frozen, "bc_done": self.bc_done,
            "policy_updates": self.policy_updates, "eval_env_steps": self.eval_env_steps,
            "conservatism": self.conservatism, "calibration": self.calibration,
            "next_eval": min([self._next_offline_eval, *pending]),
            "data": asdict(self.data),
        })
        return counters

    def _restore_offline(self, found: FoundCheckpoint) -> None:
        """Continue from an offline run's checkpoint: phase, frozen model, cloning, conservatism, counters."""
        saved = (found.document("driver.json") or {}).get("offline")
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint in {str(found.path)!r} has no offline state; expected one written by "
                                  f"an offline run")
        self.phase, self.model_frozen, self.bc_done = saved["phase"], saved["model_frozen"], saved["bc_done"]
        self.policy_updates, self.eval_env_steps = int(saved["policy_updates"]), int(saved["eval_env_steps"])
        self.conservatism, self.calibration = dict(saved["conservatism"]), dict(saved["calibration"])
        self._next_offline_eval = int(saved["next_eval"])
        self._last_eval_mark = max([e["policy_updates"] for e in self.evals], default=0)

    # the loop -----------------------------------------------------------------------------------------------------
    def run(self) -> Summary:
        self._start_roles()
        if self.bc_done and not self._resumed:  # started from another run's actor (offline.init_from): its return
            self._offline_eval("init")            # before refining
        while True:
            self._turn()
            if not self._stop_reason:
                continue
            if self._last_eval_mark < self.policy_updates:
                self._offline_eval("interrupted" if self._interrupted else "final")
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
