"""Prompt learners: trainable modules that produce prompt embeddings for class names."""

from vlprompt.prompts import cocoop as _cocoop  # noqa: F401  (registers "cocoop")
from vlprompt.prompts import coop as _coop  # noqa: F401  (registers "coop")
from vlprompt.prompts import ivlp as _ivlp  # noqa: F401  (registers "ivlp")
from vlprompt.prompts import kgcoop as _kgcoop  # noqa: F401  (registers "kgcoop")
from vlprompt.prompts import maple as _maple  # noqa: F401  (registers "maple")
from vlprompt.prompts import promptsrc as _promptsrc  # noqa: F401  (registers "promptsrc")
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
from vlprompt.prompts.ivlp import IVLP, IVLPConfig
from vlprompt.prompts.kgcoop import KgCoOp, KgCoOpConfig
from vlprompt.prompts.maple import MaPLe, MaPLeConfig
from vlprompt.prompts.promptsrc import PromptSRC, PromptSRCConfig
from vlprompt.prompts.vpt import VPT, VPTConfig

__all__ = [
    "PromptLearner",
    "TrainingStep",
    "CoOp",
    "CoOpConfig",
    "CoCoOp",
    "CoCoOpConfig",
    "KgCoOp",
    "KgCoOpConfig",
    "IVLP",
    "IVLPConfig",
    "VPT",
    "VPTConfig",
    "MaPLe",
    "MaPLeConfig",
    "PromptSRC",
    "PromptSRCConfig",
    "create_prompt_learner",
    "get_prompt_learner_class",
    "list_prompt_learners",
    "register_prompt_learner",
]
