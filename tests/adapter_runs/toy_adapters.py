"""Two tiny feature-space adapters that really fit something on cached features, for the integration tests (the real
methods land in ``vlprompt/adapters/`` on their own; these stand in for them here and are registered only while a
test module uses them, :func:`registered`).

- ``toy-bias`` (``uses_views``, ``uses_val``, no ``new_classes``): zero-shot logits plus a learned per-class bias
  ``b [C]``, fitted by full-batch gradient descent on the cross-entropy of the training features and their views;
  the step count is chosen on val (the best of ``epochs`` and ``epochs // 2``; without val: ``epochs``). Its record carries the shapes it was
  given, so the tests see which tensors the run passed.
- ``toy-shift`` (``new_classes``, neither views nor val): a learned shift ``s [E]`` of the normalised image feature,
  logits ``scale · norm(norm(x) + s) @ text.T``: it classifies any class names through their text features; its
  "official" value for 1 shot is 4 steps instead of 10 (:meth:`~vlprompt.adapters.FeatureAdapter.dataset_config`).

Both keep the zero-shot classifier as a non-persistent buffer: ``state_dict()`` is exactly what they learned.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.adapters import AdapterData, FeatureAdapter, base


@dataclass
class BiasConfig:
    epochs: int = 20
    lr: float = 1.0


@dataclass
class ShiftConfig:
    epochs: int = 10
    lr: float = 0.5


class _ZeroShotHead(FeatureAdapter):
    """The shared part: the zero-shot classifier as a (non-persistent) buffer and full-batch gradient descent."""

    def _set_text(self, text: torch.Tensor, logit_scale: float) -> None:
        self.register_buffer("text", F.normalize(text.float(), dim=-1).clone(), persistent=False)  # [C, E]
        self.logit_scale = float(logit_scale)

    def _descend(self, param: nn.Parameter, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
        opt = torch.optim.SGD([param], lr=self.config.lr)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(self(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses


class ToyBias(_ZeroShotHead):
    method = "toy-bias"
    config_class = BiasConfig
    display_name = "Toy bias"
    uses_views = True
    uses_val = True
    new_classes = False
    recipe = {"num_views": 2, "crop_scale_min": 0.5}

    def prepare(self, num_classes, feature_dim, text, logit_scale, shapes):
        self._set_text(text, logit_scale)
        self.bias = nn.Parameter(torch.zeros(shapes["bias"]))

    def fit(self, data: AdapterData) -> dict:
        self.prepare(data.num_classes, data.train.shape[1], data.text, data.logit_scale, {"bias": [data.num_classes]})
        x = torch.cat([data.train, *data.views])  # [(1 + V) N, E]
        y = data.train_labels.repeat(1 + data.views.shape[0])
        trace = []
        candidates = (self.config.epochs // 2, self.config.epochs) if data.val is not None else (self.config.epochs,)
        for steps in candidates:  # choose the step count on val (without val: all of them)
            with torch.no_grad():
                self.bias.zero_()
            self._descend(self.bias, x, y, steps)
            with torch.no_grad():
                acc = None if data.val is None else float((self(data.val).argmax(-1) == data.val_labels).float().mean())
            trace.append({"steps": steps, "val_accuracy": acc, "bias": self.bias.detach().tolist()})
        best = max(trace, key=lambda t: t["val_accuracy"] or 0.0)  # first of equals: the fewer steps
        with torch.no_grad():
            self.bias.copy_(torch.tensor(best["bias"]))
        self.record = {"steps": best["steps"], "trace": trace, "train_shape": list(data.train.shape),
                       "views_shape": list(data.views.shape),
                       "val_shape": None if data.val is None else list(data.val.shape),
                       "seed": data.seed, "logit_scale": data.logit_scale}
        return self.record

    def forward(self, image_features, text=None):
        img = F.normalize(image_features.float(), dim=-1)
        return self.logit_scale * img @ self.text.t() + self.bias  # [B, C]


class ToyShift(_ZeroShotHead):
    method = "toy-shift"
    config_class = ShiftConfig
    display_name = "Toy shift"
    new_classes = True

    @classmethod
    def dataset_config(cls, dataset, shots):  # an official per-shot value, as TaskRes has (1 shot: fewer steps)
        return {"epochs": 4} if shots == 1 else {}

    def prepare(self, num_classes, feature_dim, text, logit_scale, shapes):
        self._set_text(text, logit_scale)
        self.shift = nn.Parameter(torch.zeros(shapes["shift"]))

    def fit(self, data: AdapterData) -> dict:
        assert data.views is None and data.val is None, "toy-shift asked for neither views nor val"
        self.prepare(data.num_classes, data.train.shape[1], data.text, data.logit_scale, {"shift": [data.train.shape[1]]})
        losses = self._descend(self.shift, data.train, data.train_labels, self.config.epochs)
        self.record = {"losses": losses, "train_shape": list(data.train.shape)}
        return self.record

    def forward(self, image_features, text=None):
        img = F.normalize(F.normalize(image_features.float(), dim=-1) + self.shift, dim=-1)
        return self.logit_scale * img @ (self.text if text is None else text.float()).t()


TOYS = {c.method: c for c in (ToyBias, ToyShift)}


@contextlib.contextmanager
def registered():
    """The toy adapters in the registry for the block (removed afterwards: other tests see the real registry)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, cls in TOYS.items():
            mp.setitem(base._REGISTRY, name, cls)
        yield
