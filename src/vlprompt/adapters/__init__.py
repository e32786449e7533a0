"""Feature-space adapters: heads and caches over frozen, cached CLIP features (DESIGN.md §8).

Each method is one module that registers itself; see :mod:`vlprompt.adapters.base`. Registered here: ``clap``
(CLAP; ``constraint="none"``: ZS-LP) and ``lpplusplus`` (LP++).
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
from vlprompt.adapters.lp_plus_plus import LPPlusPlus, LPPlusPlusConfig

__all__ = ["AdapterData", "Clap", "ClapConfig", "FeatureAdapter", "LPPlusPlus", "LPPlusPlusConfig", "create_adapter",
           "get_adapter_class", "is_adapter", "list_adapters", "register_adapter"]
