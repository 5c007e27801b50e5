"""Torch models and update rules: SAC (``sac``) and the dynamics ensemble (``world_model``). No Ray, no replay."""

from learners.sac import Policy, PolicyConfig, SACLearner
from learners.world_model import WorldModel, WorldModelConfig, WorldModelLearner

__all__ = ["PolicyConfig", "SACLearner", "Policy", "WorldModelConfig", "WorldModelLearner", "WorldModel"]
