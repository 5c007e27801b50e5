"""What the driver knows about its actors' lives: restarts per role, a role that keeps dying, actors that stall.

Plain classes fed with times, so that they are tested without Ray:

- :class:`RestartLedger` counts restarts per role from the incarnation token each actor reports (a new process of a
  restarted actor answers with a new token; see ``system/wiring.py``) and says when a role keeps dying
  (``run.restart_limit`` restarts within ``run.restart_window_s``);
- :class:`StallWatch` names the actors that had work but made no progress for ``run.stall_timeout_s``.

Usage (the driver)::

    ledger = RestartLedger(limit=5, window_s=600)
    ledger.died("policy-learner", "ActorDiedError: ...", now)
    if ledger.seen("policy-learner", token, now):          # a new incarnation: counted
        if ledger.keeps_dying("policy", now): ...           # stop the run
    watch = StallWatch(timeout_s=120)
    watch.busy("rollout-1", now); watch.progress("rollout-0", now)
    watch.stalled(now)                                      # ["rollout-1"] after 120 s without progress
"""

from __future__ import annotations

import re
from collections import deque

__all__ = ["ROLES", "RestartLedger", "StallWatch", "role_of"]

ROLES = {"replay-shard": "replay", "weights-store": "store", "policy-learner": "policy",
         "world-model-learner": "world_model", "rollout": "rollout", "imagination": "imagination",
         "evaluator": "evaluator", "gateway": "gateway", "control": "control"}
"""Actor name (without its ``-<index>``) -> the role's name in the metrics table (``<role>_restarts``)."""


def role_of(actor_name: str) -> str:
    """``rollout-3`` -> ``rollout``; ``replay-shard-0`` -> ``replay``; ``policy-learner`` -> ``policy``."""
    base = re.sub(r"-\d+$", "", actor_name)
    return ROLES.get(base, base.replace("-", "_"))


class RestartLedger:
    """Restarts of every actor, by the incarnation token each reports; a role that keeps dying.

    Args:
        limit: restarts of one role within ``window_s`` that make it one that keeps dying.
        window_s: the window, in seconds.
        roles: roles counted from the start (0 restarts), so that their columns exist before a first restart.
    """

    def __init__(self, limit: int, window_s: float, roles: tuple[str, ...] = ()):
        self.limit, self.window_s = limit, window_s
        self._tokens: dict[str, str] = {}
        self._restarts: dict[str, int] = {role: 0 for role in roles}
        self._times: dict[str, deque[float]] = {}
        self._errors: dict[str, str] = {}
        self._lost_at: dict[str, float] = {}

    def seen(self, name: str, token: str, now: float) -> bool:
        """Actor ``name`` answered with incarnation ``token``: True when it is a new process of an actor seen before,
        or of one found dead before its first answer (a restart, counted for its role)."""
        died_unknown = name in self._lost_at and name not in self._tokens
        self._lost_at.pop(name, None)
        known = self._tokens.get(name)
        self._tokens[name] = token
        role = role_of(name)
        self._restarts.setdefault(role, 0)
        if known == token or (known is None and not died_unknown):
            return False
        self._restarts[role] += 1
        times = self._times.setdefault(role, deque())
        times.append(now)
        return True

    def died(self, name: str, error: str, now: float) -> None:
        """A call to actor ``name`` failed because its process died (``error``: one line): its role's last error."""
        self._errors[role_of(name)] = error
        self._lost_at.setdefault(name, now)

    def lost_for(self, name: str, now: float) -> float:
        """Seconds since actor ``name`` was found dead and has not answered since (0 when it is not lost)."""
        lost = self._lost_at.get(name)
        return 0.0 if lost is None else now - lost

    def forget(self, name: str) -> None:
        """Actor ``name`` was ended on purpose (a retired worker): its next process is not a restart."""
        self._tokens.pop(name, None)
        self._lost_at.pop(name, None)

    def keeps_dying(self, role: str, now: float) -> bool:
        """Whether ``role`` restarted ``limit`` times or more within the last ``window_s`` seconds."""
        times = self._times.get(role, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return len(times) >= self.limit

    def carry_over(self, restarts: dict[str, int]) -> None:
        """Restarts counted before a resume (the checkpoint's): counting goes on from them."""
        for role, n in restarts.items():
            self._restarts[role] = self._restarts.get(role, 0) + int(n)

    def restarts(self) -> dict[str, int]:
        """Role -> restarts counted so far."""
        return dict(self._restarts)

    def last_error(self, role: str) -> str:
        return self._errors.get(role, "no error seen")


class StallWatch:
    """Actors that have work but made no progress for ``timeout_s`` seconds."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._since: dict[str, float] = {}

    def busy(self, name: str, now: float) -> None:
        """``name`` has work (from ``now`` on, unless it had already)."""
        self._since.setdefault(name, now)

    def progress(self, name: str, now: float) -> None:
        """``name`` did some work: its clock starts again."""
        self._since[name] = now

    def idle(self, name: str) -> None:
        """``name`` has no work (done, retired, or nothing to do by design): never stalled."""
        self._since.pop(name, None)

    def stalled(self, now: float) -> list[str]:
        """Names without progress for more than ``timeout_s``, sorted."""
        return sorted(name for name, since in self._since.items() if now - since > self.timeout_s)


class RoleError(RuntimeError):
    """A role failed; the message names the role and the cause."""


def describe_error(exc: BaseException) -> str:
    """One line for an error raised in a role (Ray wraps it; unwrap to the original where possible)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line or "Exception:" in line:
            return line
    return lines[-1] if lines else type(exc).__name__
