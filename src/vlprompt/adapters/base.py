"""Feature-space adapters (DESIGN.md §8): a head or a cache over frozen CLIP features — the towers never run.

An adapter is fitted on **cached** features only: the few-shot images' image features (test transform, and
optionally ``V`` augmented views of them), their labels, the optional few-shot validation features, and the zero-shot
classifier (L2-normalised text features of the dataset's hand-crafted prompt). Image features are passed
**unnormalised**, as the image encoder returns them, because the official codes differ in where they normalise
(Tip-Adapter averages raw view features before normalising its keys; CLIP-Adapter's MLP reads the raw feature):
each method normalises where its official code does. Its ``forward`` maps image features ``[B, E]`` to logits
``[B, C]``; what it learned is its persistent state
(``state_dict``: parameters and persistent buffers such as Tip-Adapter's cache keys), saved as safetensors, with
:meth:`FeatureAdapter.record` (chosen hyper-parameters, search traces) saved as JSON.

What differs between methods is declared on the class:

- ``uses_views``: the method wants augmented views of the training images (Tip-Adapter's cache keys are the mean of
  its official 10 augmented views; CLIP-Adapter trains on random-crop features);
- ``uses_val``: the method selects something on the few-shot validation split (Tip-Adapter's α, β); such a method
  never looks at the test split;
- ``new_classes``: the method can classify class names it was not fitted on, given their zero-shot text features
  (CLIP-Adapter adapts the image side only; a cache or a per-class residual cannot), used by base-to-new;
- ``recipe``: the official training settings (cited by file in the method's module); the run reads its
  ``num_views`` (views fitted on unless ``--augment`` says otherwise), ``crop_scale_min`` and ``flip`` (their train
  transform);
- :meth:`FeatureAdapter.dataset_config`: the official per-dataset/per-shot values of config options.

Adding a method is one module: subclass :class:`FeatureAdapter`, decorate it with :func:`register_adapter` and
import it in ``vlprompt/adapters/__init__.py``.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.errors import ConfigError

_REGISTRY: dict[str, type[FeatureAdapter]] = {}


@dataclass(frozen=True)
class AdapterData:
    """Everything an adapter may be fitted on: cached features, never images.

    Attributes:
        train: ``[N, E]`` unnormalised fp32 image features of the few-shot training images (test transform).
        train_labels: ``LongTensor[N]`` in ``[0, C)``.
        text: ``[C, E]`` L2-normalised zero-shot classifier (the class text features of the dataset's template).
        logit_scale: CLIP's ``exp(logit_scale)`` (100 for OpenAI's weights); zero-shot logits are
            ``logit_scale · img @ text.T``.
        views: ``[V, N, E]`` unnormalised fp32 features of ``V`` augmented views of the training images (view ``v`` of
            image ``n`` is ``views[v, n]``), or ``None`` when the method does not use views.
        val: ``[M, E]`` unnormalised fp32 features of the few-shot validation images (test transform), or ``None``.
        val_labels: ``LongTensor[M]`` or ``None``.
        seed: the run's seed (for any randomness the method draws: initialisation, batch order).
        text_unnormalised: ``[C, E]`` the class text features *before* L2 normalisation, averaged over the
            templates (for one template: the text encoder's output), or ``None``. CLAP's official code starts its
            probe from these (``base_text_features`` of ``jusiro/CLAP:trainers/adapters.py``) and constrains it to
            them in that space, so their norms set its effective step size; given ``None`` it starts from ``text``.
            TaskRes's official base classifier is this raw feature too (its residual is added before normalising).
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    text: torch.Tensor
    logit_scale: float
    views: torch.Tensor | None = None
    val: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    seed: int = 1
    text_unnormalised: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        """``C``: the number of classes of the zero-shot classifier."""
        return int(self.text.shape[0])

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` zero-shot logits of image ``features`` ``[B, E]`` (normalised here)."""
        img = torch.nn.functional.normalize(features.float(), dim=-1)
        return self.logit_scale * img @ self.text.float().t()


def register_adapter(cls: type[FeatureAdapter]) -> type[FeatureAdapter]:
    """Class decorator: make ``cls`` available under ``cls.method``."""
    _REGISTRY[cls.method] = cls
    return cls


def list_adapters() -> list[str]:
    """Registered adapter method names."""
    return sorted(_REGISTRY)


def is_adapter(method: str) -> bool:
    """Whether ``method`` names a registered feature-space adapter."""
    return method in _REGISTRY


def get_adapter_class(method: str) -> type[FeatureAdapter]:
    """Look up an adapter class by method name, with a helpful error for unknown names."""
    if method not in _REGISTRY:
        close = difflib.get_close_matches(method, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"--method '{method}' is not a feature-space adapter.{hint} "
                          f"Adapters: {', '.join(list_adapters())}.")
    return _REGISTRY[method]


def create_adapter(method: str, config: dict[str, Any] | None = None) -> FeatureAdapter:
    """Build the adapter ``method`` from a config dict (unknown keys refused, naming the valid ones)."""
    cls = get_adapter_class(method)
    config = dict(config or {})
    fields = set(cls.config_class.__dataclass_fields__)
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method '{method}'; valid: {sorted(fields)}.")
    return cls(cls.config_class(**config))


class FeatureAdapter(nn.Module):
    """Base class of feature-space adapters.

    Subclasses set ``method`` and ``config_class`` and implement :meth:`fit` and :meth:`forward`. The adapter's
    tensors that depend on the data (a cache, a residual, a probe) are created in :meth:`fit` — or in
    :meth:`prepare` when a saved adapter is loaded — and registered as parameters or *persistent* buffers, so that
    ``state_dict()`` is exactly the artifact.
    """

    method: ClassVar[str]
    config_class: ClassVar[type]
    display_name: ClassVar[str] = ""
    uses_views: ClassVar[bool] = False
    uses_val: ClassVar[bool] = False
    new_classes: ClassVar[bool] = False
    #: official settings (epochs, lr, batch size, number of views, …), cited by file in the method's module.
    recipe: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        #: chosen hyper-parameters, search traces, epochs run: written to the artifact's JSON by the run.
        self.record: dict[str, Any] = {}

    def prepare(self, num_classes: int, feature_dim: int, text: torch.Tensor, logit_scale: float,
                shapes: dict[str, list[int]]) -> None:
        """Create empty data-dependent tensors of the saved ``shapes`` (name → shape) so that ``load_state_dict``
        can fill them; ``text`` ``[C, E]`` is the zero-shot classifier of the classes being loaded."""
        raise NotImplementedError

    def fit(self, data: AdapterData) -> dict[str, Any]:
        """Fit on cached features; returns (and stores in :attr:`record`) what was chosen and how.

        Must not read any test data (there is none in ``data``); hyper-parameters searched by the method are chosen
        on ``data.val`` only (``uses_val``)."""
        raise NotImplementedError

    def forward(self, image_features: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]`` logits of unnormalised image features ``[B, E]`` (the encoder's output, test transform).

        ``text`` ``[C', E]``: classify among other classes given their zero-shot text features (only where
        ``new_classes``); ``None``: the classes the adapter was fitted on."""
        raise NotImplementedError

    @classmethod
    def dataset_config(cls, dataset: str | None, shots: int | None) -> dict[str, Any]:
        """Config values the official code sets per dataset or shot count (TaskRes: ImageNet's lr; Tip-Adapter: each
        dataset's search range), applied by the run to the options the user left unset (user > these > the config's
        defaults). ``dataset``: vlprompt's dataset name (``None`` or custom data: no official entry); ``shots``: per
        class (``None``/0: all). Default: the dataset's name for a config with a ``dataset`` field, else nothing."""
        return {"dataset": dataset} if "dataset" in cls.config_class.__dataclass_fields__ else {}

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable config that rebuilds this adapter (with :func:`create_adapter`)."""
        return asdict(self.config)


__all__ = ["AdapterData", "FeatureAdapter", "create_adapter", "get_adapter_class", "is_adapter", "list_adapters",
           "register_adapter"]
