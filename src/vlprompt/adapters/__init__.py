"""Feature-space adapters: heads and caches over frozen, cached CLIP features (DESIGN.md §8).

Each method is one module that registers itself; see :mod:`vlprompt.adapters.base`.
"""

from vlprompt.adapters.base import (
    AdapterData,
    FeatureAdapter,
    create_adapter,
    get_adapter_class,
    is_adapter,
    list_adapters,
    register_adapter,
)
from vlprompt.adapters.clip_adapter import ClipAdapter, ClipAdapterConfig
from vlprompt.adapters.taskres import TaskRes, TaskResConfig

__all__ = ["AdapterData", "ClipAdapter", "ClipAdapterConfig", "FeatureAdapter", "TaskRes", "TaskResConfig",
           "create_adapter", "get_adapter_class", "is_adapter", "list_adapters", "register_adapter"]
