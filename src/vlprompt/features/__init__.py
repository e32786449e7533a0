"""Frozen image features: batched extraction and an on-disk cache (safetensors + JSON sidecar)."""

from vlprompt.features.cache import FeatureCache, default_cache_dir
from vlprompt.features.extract import extract_features

__all__ = ["FeatureCache", "default_cache_dir", "extract_features"]
