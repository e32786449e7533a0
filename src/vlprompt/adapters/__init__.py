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
from vlprompt.adapters.tip_adapter import TipAdapter, TipAdapterConfig
from vlprompt.adapters.tip_adapter_f import TipAdapterF

__all__ = ["AdapterData", "ClipAdapter", "ClipAdapterConfig", "FeatureAdapter", "TaskRes", "TaskResConfig",
           "TipAdapter", "TipAdapterConfig", "TipAdapterF", "create_adapter", "get_adapter_class", "is_adapter",
           "list_adapters", "register_adapter"]
