"""vlprompt: prompt learning (CoOp and friends) for CLIP-like vision-language models.

The public API is imported lazily so that ``import vlprompt`` stays cheap (torch and open_clip load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PromptClassifier": "vlprompt.api",
    "Prediction": "vlprompt.api",
    "create_backbone": "vlprompt.backbones",
    "list_backbones": "vlprompt.backbones",
    "CoOp": "vlprompt.prompts",
    "CoOpConfig": "vlprompt.prompts",
    "create_prompt_learner": "vlprompt.prompts",
    "list_prompt_learners": "vlprompt.prompts",
    "PromptModel": "vlprompt.engine.model",
    "TrainConfig": "vlprompt.engine.config",
    "resolve_train_config": "vlprompt.engine.recipe",
    "fit": "vlprompt.engine.fit",
    "RunSpec": "vlprompt.engine.spec",
    "train_run": "vlprompt.runs.train",
    "load_dataset": "vlprompt.data",
    "list_datasets": "vlprompt.data",
    "VLPromptError": "vlprompt.errors",
    # feature-space adapters (issue 16)
    "AdapterClassifier": "vlprompt.api",
    "list_adapters": "vlprompt.adapters",
    "adapter_run": "vlprompt.runs.adapter_run",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlprompt' has no attribute {name!r}")
