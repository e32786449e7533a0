"""micro-CLIP v2 is the default (issue 14); v1 stays reachable by name from a source checkout, is left out of the
wheel, and artifacts that recorded the old default rebuild v1 — never silently v2."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from vlprompt.backbones import create_backbone, recorded_pretrained
from vlprompt.backbones import microclip as mc
from vlprompt.errors import WeightsNotFoundError

ROOT = Path(__file__).resolve().parents[2]
needs_v2 = pytest.mark.skipif(not mc.SHIPPED_WEIGHTS_V2.is_file(), reason="micro-CLIP v2 weights not shipped yet")
needs_v1 = pytest.mark.skipif(not mc.WEIGHTS_V1.is_file(), reason="micro-CLIP v1 weights not in this checkout")


@needs_v2
def test_default_shipped_and_v2_are_the_vit_micro_clip_recorded_as_v2():
    default = create_backbone("microclip")
    assert type(default.model.visual).__name__ == "VisionTransformer"  # v2's tower; v1's is a ModifiedResNet
    assert default.model.visual.transformer.layers == 4 and len(default.model.transformer.resblocks) == 4
    assert default.identity()["pretrained"] == "v2"  # by name: a later default cannot change what a record means
    shipped, v2 = create_backbone("microclip", "shipped"), create_backbone("microclip", "v2")
    assert default.fingerprint == shipped.fingerprint == v2.fingerprint and shipped.pretrained == "v2"
    assert type(mc.build_microclip().visual).__name__ == "VisionTransformer"
    assert mc.SHIPPED_WEIGHTS == mc.SHIPPED_WEIGHTS_V2


@needs_v1
@needs_v2
def test_v1_is_reachable_by_name_and_is_other_weights():
    v1 = create_backbone("microclip", "v1")
    assert type(v1.model.visual).__name__ == "ModifiedResNet" and len(v1.model.transformer.resblocks) == 2
    assert v1.identity()["pretrained"] == "v1" and v1.fingerprint != create_backbone("microclip").fingerprint


def test_old_default_records_rebuild_v1():
    # learner.json/config.json of runs made while v1 was the default recorded None (or "shipped")
    assert recorded_pretrained({"name": "microclip", "pretrained": None}) == "v1"
    assert recorded_pretrained({"name": "microclip", "pretrained": "shipped"}) == "v1"
    for name in ("v1", "v2", "random", "/some/microclip.safetensors"):
        assert recorded_pretrained({"name": "microclip", "pretrained": name}) == name


def test_v1_absent_from_an_install_says_it_is_not_in_the_wheel_and_where_it_is(monkeypatch, tmp_path):
    gone = tmp_path / "site-packages" / "vlprompt" / "microclip" / "weights" / "microclip.safetensors"
    monkeypatch.setitem(mc.BUNDLED_WEIGHTS, "v1", gone)  # as in an installed wheel: v1 was excluded
    fix = (r"not in this installation: the vlprompt wheel ships only micro-CLIP v2.*"
           r"src/vlprompt/microclip/weights/microclip\.safetensors` from a source checkout.*--pretrained PATH")
    with pytest.raises(WeightsNotFoundError, match=fix):
        mc.build_microclip("v1")
    with pytest.raises(WeightsNotFoundError, match=fix):
        create_backbone("microclip", "v1")
    # an artifact recorded with the old default asks for v1, and gets the same error (not v2)
    with pytest.raises(WeightsNotFoundError, match=fix):
        create_backbone("microclip", recorded_pretrained({"name": "microclip", "pretrained": None}))
    assert str(gone) in _message(lambda: mc.build_microclip("v1"))


def _message(fn) -> str:
    with pytest.raises(WeightsNotFoundError) as e:
        fn()
    return str(e.value)


def _packaged(rel: str, data: dict) -> bool:
    """Would setuptools put ``rel`` (relative to the vlprompt package) into the wheel, per pyproject's tables?"""
    tools = data["tool"]["setuptools"]
    included = any(fnmatch.fnmatch(rel, pat) for pat in tools["package-data"]["vlprompt"])
    excluded = any(fnmatch.fnmatch(rel, pat) for pat in tools.get("exclude-package-data", {}).get("vlprompt", []))
    return included and not excluded


def test_pyproject_ships_v2_and_the_model_cards_but_not_v1():
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert _packaged("microclip/weights/microclip-v2.safetensors", data)
    assert _packaged("microclip/MODEL_CARD_V2.md", data) and _packaged("microclip/MODEL_CARD.md", data)
    assert not _packaged("microclip/weights/microclip.safetensors", data)
    pkg = ROOT / "src" / "vlprompt"
    assert mc.WEIGHTS_V1 == pkg / "microclip" / "weights" / "microclip.safetensors"  # the path the tables name
    assert mc.SHIPPED_WEIGHTS_V2 == pkg / "microclip" / "weights" / "microclip-v2.safetensors"
