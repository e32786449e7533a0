"""The official per-epoch learning rate (reference §2.1) and epoch counts (§2.2)."""

from __future__ import annotations

import math

import pytest

from vlprompt.engine.schedule import coop_lr, default_epochs


@pytest.mark.parametrize("max_epoch", [50, 200])
def test_every_epoch_matches_the_reference_formula(max_epoch):
    for e in range(1, max_epoch + 1):
        expected = 1e-5 if e == 1 else 0.002 * 0.5 * (1 + math.cos(math.pi * (e - 2) / max_epoch))
        assert coop_lr(e, max_epoch) == pytest.approx(expected, rel=1e-12, abs=0)


def test_values_quoted_in_the_reference():
    # From a real training log (#26): epoch 2/50 lr 2.000e-3, 3/50 1.998027e-3, 4/50 1.992115e-3.
    assert coop_lr(2, 50) == pytest.approx(2.0e-3)
    assert coop_lr(3, 50) == pytest.approx(1.998027e-3, rel=1e-6)
    assert coop_lr(4, 50) == pytest.approx(1.992115e-3, rel=1e-6)
    # Last-epoch lr: 7.9e-6 (T=50), 4.9e-7 (T=200), 1.9e-4 (T=10); it never reaches 0.
    assert coop_lr(50, 50) == pytest.approx(7.9e-6, rel=0.01)
    assert coop_lr(200, 200) == pytest.approx(4.9e-7, rel=0.02)
    assert coop_lr(10, 10) == pytest.approx(1.9e-4, rel=0.02)


def test_default_epochs():
    assert [default_epochs(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert default_epochs(16, "imagenet") == 50
    with pytest.raises(ValueError):
        coop_lr(0, 50)
