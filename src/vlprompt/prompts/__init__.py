"""Prompt learners: trainable modules that produce prompt embeddings for class names."""

from vlprompt.prompts import coop as _coop  # noqa: F401  (registers "coop")
from vlprompt.prompts.base import (
    PromptLearner,
    create_prompt_learner,
    get_prompt_learner_class,
    list_prompt_learners,
    register_prompt_learner,
)
from vlprompt.prompts.coop import CoOp, CoOpConfig

__all__ = [
    "PromptLearner",
    "CoOp",
    "CoOpConfig",
    "create_prompt_learner",
    "get_prompt_learner_class",
    "list_prompt_learners",
    "register_prompt_learner",
]
