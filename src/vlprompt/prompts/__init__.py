"""Prompt learners: trainable modules that produce prompt embeddings for class names."""

from vlprompt.prompts import cocoop as _cocoop  # noqa: F401  (registers "cocoop")
from vlprompt.prompts import coop as _coop  # noqa: F401  (registers "coop")
from vlprompt.prompts import ivlp as _ivlp  # noqa: F401  (registers "ivlp")
from vlprompt.prompts import kgcoop as _kgcoop  # noqa: F401  (registers "kgcoop")
from vlprompt.prompts import vpt as _vpt  # noqa: F401  (registers "vpt")
from vlprompt.prompts.base import (
    PromptLearner,
    TrainingStep,
    create_prompt_learner,
    get_prompt_learner_class,
    list_prompt_learners,
    register_prompt_learner,
)
from vlprompt.prompts.cocoop import CoCoOp, CoCoOpConfig
from vlprompt.prompts.coop import CoOp, CoOpConfig
from vlprompt.prompts.kgcoop import KgCoOp, KgCoOpConfig

__all__ = [
    "PromptLearner",
    "TrainingStep",
    "CoOp",
    "CoOpConfig",
    "CoCoOp",
    "CoCoOpConfig",
    "KgCoOp",
    "KgCoOpConfig",
    "create_prompt_learner",
    "get_prompt_learner_class",
    "list_prompt_learners",
    "register_prompt_learner",
]
