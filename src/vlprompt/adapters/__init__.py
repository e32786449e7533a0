"""Feature-space adapters: heads and caches over frozen, cached CLIP features (DESIGN.md §8).

Each method is one module that registers itself; see :mod:`vlprompt.adapters.base`. Registered here:
``clip-adapter``, ``tip-adapter``, ``tip-adapter-f``, ``taskres``, ``clap`` (CLAP; ``constraint="none"``: ZS-LP) and
``lpplusplus`` (LP++).
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
from vlprompt.adapters.clap import Clap, ClapConfig
from vlprompt.adapters.clip_adapter import ClipAdapter, ClipAdapterConfig
from vlprompt.adapters.lp_plus_plus import LPPlusPlus, LPPlusPlusConfig
from vlprompt.adapters.taskres import TaskRes, TaskResConfig
from vlprompt.adapters.tip_adapter import TipAdapter, TipAdapterConfig
from vlprompt.adapters.tip_adapter_f import TipAdapterF

__all__ = ["AdapterData", "Clap", "ClapConfig", "ClipAdapter", "ClipAdapterConfig", "FeatureAdapter", "LPPlusPlus",
           "LPPlusPlusConfig", "TaskRes", "TaskResConfig", "TipAdapter", "TipAdapterConfig", "TipAdapterF",
           "create_adapter", "get_adapter_class", "is_adapter", "list_adapters", "register_adapter"]
