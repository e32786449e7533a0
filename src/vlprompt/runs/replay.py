"""Re-running a recorded run: check that the data and the backbone are still those of the record.

A run folder's ``config.json`` records the exact few-shot train/val image lists, the class names and the backbone's
weight fingerprint. ``vlprompt train --config RUN/config.json`` re-runs that run; if the dataset on disk or the
weights changed since, the re-run would silently train on other images or another model and not reproduce the
record. :func:`check_recorded` refuses that instead (called by :func:`vlprompt.runs.folder.load_inputs` when
:attr:`vlprompt.engine.spec.RunSpec.expect` is set).
"""

from __future__ import annotations

import logging

from vlprompt.errors import ConfigError

_logger = logging.getLogger(__name__)


def _first_difference(now: list[str], recorded: list[str]) -> str:
    """A short description of how two path lists differ (counts, then the first differing position)."""
    added, removed = sorted(set(now) - set(recorded)), sorted(set(recorded) - set(now))
    parts = [f"{len(now)} images now vs {len(recorded)} recorded"]
    if removed:
        parts.append(f"recorded but not drawn now: {removed[0]!r}" + (f" and {len(removed) - 1} more" if len(removed) > 1 else ""))
    if added:
        parts.append(f"drawn now but not recorded: {added[0]!r}" + (f" and {len(added) - 1} more" if len(added) > 1 else ""))
    if not added and not removed:
        i = next(i for i, (a, b) in enumerate(zip(now, recorded, strict=False)) if a != b)
        parts.append(f"same images in another order (first at position {i}: {now[i]!r} vs {recorded[i]!r})")
    return "; ".join(parts)


def check_recorded(expect: dict, data, backbone) -> None:
    """Refuse a re-run whose few-shot images, class names or backbone weights differ from the record.

    Args:
        expect: ``{"source": the record's path, "fewshot": {"train": [...], "val": [...]}, "classnames": [...],
            "fingerprint": str}``; every entry but ``source`` is optional (absent: not checked). Paths are relative to
            the dataset root, as :func:`vlprompt.engine.pipeline.relative_paths` records them.
        data: the :class:`~vlprompt.engine.pipeline.FewShotData` the re-run drew.
        backbone: the backbone the re-run built (``fingerprint``: a hash of its weights).

    Raises:
        ConfigError: naming what differs, the record, and how to proceed.
    """
    from vlprompt.engine.pipeline import relative_paths

    source = expect.get("source", "the recorded run")
    fix = ("restore the data and weights the run used, or, to train on them as they are now, give the settings as "
           "flags (or in a config file without the recorded \"fewshot\" entry)")
    names = expect.get("classnames")
    if names is not None and list(data.splits.classnames) != list(names):
        raise ConfigError(f"re-running {source}: the dataset's class names are now {list(data.splits.classnames)[:5]}"
                          f"… ({data.splits.num_classes}), the record has {list(names)[:5]}… ({len(names)}) (was "
                          f"--classnames given then?); {fix}.")
    for split in ("train", "val"):
        recorded = (expect.get("fewshot") or {}).get(split)
        if recorded is None:
            continue
        now = relative_paths(getattr(data, split), data.splits.root)
        if now != list(recorded):
            raise ConfigError(f"re-running {source}: the few-shot {split} images differ from the recorded ones "
                              f"({_first_difference(now, list(recorded))}): the data under '{data.splits.root}' "
                              f"changed since that run, so it would not be reproduced; {fix}.")
    fingerprint = expect.get("fingerprint")
    if fingerprint is not None and getattr(backbone, "fingerprint", None) != fingerprint:
        raise ConfigError(f"re-running {source}: backbone '{backbone.name}' (pretrained {backbone.pretrained!r}) now "
                          f"has weight fingerprint {backbone.fingerprint}, the record has {fingerprint}: the weights "
                          f"changed since that run; {fix}.")
    _logger.info("re-running %s: few-shot images, class names and backbone weights are as recorded", source)


__all__ = ["check_recorded"]
