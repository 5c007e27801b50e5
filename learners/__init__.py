"""Torch models and update rules: SAC (``sac``) and the dynamics ensemble (``world_model``). No Ray, no replay.

The names below load their module on first use, so that ``learners.config`` (the settings, no torch) is imported
without the learners themselves.
"""

import importlib

_WHERE = {"PolicyConfig": "learners.config", "WorldModelConfig": "learners.config", "Policy": "learners.sac",
          "SACLearner": "learners.sac", "WorldModel": "learners.world_model",
          "WorldModelLearner": "learners.world_model"}

__all__ = ["PolicyConfig", "SACLearner", "Policy", "WorldModelConfig", "WorldModelLearner", "WorldModel"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'learners' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
