"""Small pieces several feature-space adapters share: which cached views they train on, refusing new classes."""

from __future__ import annotations

import logging

import torch

from vlprompt.adapters.base import AdapterData
from vlprompt.errors import ConfigError

log = logging.getLogger(__name__)


def training_views(data: AdapterData, method: str, num_views: int | None = None) -> torch.Tensor:
    """``[V, N, E]`` unnormalised features of the augmented views a method trains on.

    The first ``num_views`` of ``data.views`` (all of them for ``None``). Without views (``data.views is None``, e.g.
    a run without an augmentation cache) the test-transform features ``data.train`` stand in as one view; that is a
    deviation from the official recipes, so it is logged (the method records the number of views it used).
    """
    if data.views is None:
        log.warning("%s: no augmented views given; training on the test-transform features as one view (the "
                    "official recipe trains on augmented views)", method)
        return data.train.float().unsqueeze(0)
    views = data.views
    if views.dim() != 3 or tuple(views.shape[1:]) != tuple(data.train.shape):
        raise ConfigError(f"{method}: views must be [V, N, E] = [V, {data.train.shape[0]}, {data.train.shape[1]}] "
                          f"(one row per training image), got {list(views.shape)}; rebuild the view cache for this "
                          "few-shot subset.")
    if num_views is not None:
        views = views[:num_views]
    return views.float()


def refuse_new_classes(method: str, text: torch.Tensor | None) -> None:
    """Raise if ``forward`` is asked to classify other classes than the fitted ones (``new_classes`` is False)."""
    if text is not None:
        raise ConfigError(f"{method} learns one weight vector per fitted class and cannot classify other classes; "
                          "evaluate it on the classes it was fitted on (base-to-new is not defined for it).")


def require_fitted(method: str, tensor: torch.Tensor | None) -> torch.Tensor:
    """``tensor`` if the adapter was fitted or prepared, else a clear error."""
    if tensor is None:
        raise ConfigError(f"{method}: the adapter has no weights yet; call fit(data) or prepare(...) and "
                          "load_state_dict(...) first.")
    return tensor


__all__ = ["refuse_new_classes", "require_fitted", "training_views"]
