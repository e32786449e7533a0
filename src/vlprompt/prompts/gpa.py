"""Gaussian prompt aggregation (GPA, PromptSRC): the learned prompts of every epoch, weighted by a Gaussian over
the epoch index and summed, replace the last epoch's prompts when training ends.

Official code: ``muzairkhattak/PromptSRC`` (bb95c77) ``trainers/promptsrc.py``: ``PromptSRC.build_model`` (the
weights ``gauss(a)`` for ``a = 1…MAX_EPOCH``, divided by their sum), ``get_gauss`` (the density
``1 / (σ√(2π)) · exp(−½((a − μ)/σ)²)``), ``forward_backward`` (at each epoch's last batch:
``aggregate = aggregate + w_e · state``, the first epoch's ``w_1 · state`` starting it; after the last epoch the
aggregate is loaded into the model), ``state_dict_weighting`` / ``state_dict_add``. The arithmetic here is the
official one, operation for operation (numpy float64 weights, the builtin ``sum``, one tensor-times-scalar product
and one addition per epoch in the tensors' dtype), so the aggregate is bit-identical to the official one.
"""

from __future__ import annotations

import numpy as np
import torch

from vlprompt.errors import ConfigError


def gaussian_epoch_weights(epochs: int, mean: float, std: float) -> list[float]:
    """The official GPA weights ``[w_1 … w_N]`` for ``N = epochs`` (they sum to 1).

    Raises:
        ConfigError: ``std ≤ 0``, or every epoch so far from ``mean`` that the density underflows to 0 (the
            official code would divide 0 by 0).
    """
    if not std > 0:
        raise ConfigError(f"gpa_std must be > 0, got {std}.")

    def gauss(x: int) -> float:  # the official lambda, the same operations in the same order
        return (1 / (std * np.sqrt(2 * np.pi))) * np.exp(-0.5 * ((x - mean) / std) ** 2)

    w = np.array([gauss(a) for a in range(1, epochs + 1)])
    total = sum(w)  # the builtin sum, as officially (np.sum's pairwise order could differ in the last bit)
    if not (np.isfinite(total) and total > 0):
        raise ConfigError(f"gpa_mean={mean}, gpa_std={std}: the Gaussian weights of epochs 1..{epochs} are all 0 "
                          "(every epoch is too many standard deviations from the mean); choose gpa_mean within the "
                          "epochs or a larger gpa_std.")
    return (w / total).tolist()


def accumulate(aggregate: torch.Tensor, value: torch.Tensor, weight: float, first: bool) -> None:
    """``aggregate ← w · value`` (``first``) or ``aggregate ← aggregate + w · value``, in place, in the
    aggregate's dtype (the official ``state_dict_weighting`` then ``state_dict_add``)."""
    weighted = value.detach().to(aggregate.dtype) * weight
    if first:
        aggregate.copy_(weighted)
    else:
        aggregate.copy_(aggregate + weighted)


__all__ = ["accumulate", "gaussian_epoch_weights"]
