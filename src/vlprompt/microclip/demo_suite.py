"""The task suites the demo can run: ``v2`` (the default: world v2 and the shipped ViT micro-CLIP v2 of issue 14)
and ``v1`` (world v1 and the ResNet micro-CLIP v1, from a source checkout): their tasks, domain-shift sets,
base-to-new tasks, ``--quick`` subsets and the micro-CLIP weights each runs on; and :func:`write_tasks`, which renders
a suite's tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vlprompt.errors import ConfigError


@dataclass(frozen=True)
class Suite:
    """One task suite.

    Attributes:
        name: ``v1`` or ``v2``.
        tasks: task name → spec (``template``, ``character``, ``classnames``).
        fewshot: the few-shot tasks (default demo tasks).
        domain_shift: source task → its shifted test sets.
        base2new: tasks with enough classes (≥ 20) for the base-to-new protocol.
        write_task: ``write_task(name, cache_dir) -> split.json path``.
        quick_tasks: the few-shot tasks of ``--quick`` (v2: ``thermal``, which gains, and ``objects``, which ties and
            is the domain-generalization source: the fewest images to render and encode that cover every protocol).
        quick_base2new: the base-to-new tasks of ``--quick`` (v2: ``objects``, already rendered for the few-shot part).
        short_base2new: the base-to-new tasks of the short protocol (``vlprompt demo``'s default): two of
            ``base2new``, chosen by character (the fine-grained one and the scene one, as FGVC Aircraft and SUN397 in
            CoCoOp's table) and by size (12–14 base classes: the base-to-new grid trains eight methods per task).
        weights: the bundled micro-CLIP its runs use unless ``--weights`` is given (``"v1"`` or ``"v2"``, the
            checkpoint pretrained on that world).
    """

    name: str
    tasks: Mapping
    fewshot: tuple[str, ...]
    domain_shift: Mapping[str, tuple[str, ...]]
    base2new: tuple[str, ...]
    write_task: Callable[[str, str | None], Path]
    quick_tasks: tuple[str, ...]
    quick_base2new: tuple[str, ...]
    weights: str
    short_base2new: tuple[str, ...] = ()


def get_suite(name: str) -> Suite:
    """The suite called ``name`` (``v1`` or ``v2``).

    Raises:
        ConfigError: another name.
    """
    if name == "v1":
        from vlprompt.microclip import tasks

        return Suite("v1", tasks.TASKS, tasks.FEWSHOT_TASKS, tasks.DOMAIN_SHIFT, (), tasks.write_task,
                     ("sizes", "shapes"), (), "v1")  # fmt: skip
    if name == "v2":
        from vlprompt.microclip import tasks2

        return Suite("v2", tasks2.TASKS, tasks2.FEWSHOT_TASKS, tasks2.DOMAIN_SHIFT, tasks2.BASE2NEW_TASKS,
                     tasks2.write_task, ("thermal", "objects"), ("objects",), "v2", ("aircraft", "scenes"))  # fmt: skip
    raise ConfigError(f"unknown demo suite {name!r}; expected 'v1' (world v1) or 'v2' (world v2, micro-CLIP v2)")


def write_tasks(write_task, names: list[str], task_dir: str | None, processes: int) -> dict[str, Path]:
    """``{name: split.json}`` of the suite's tasks ``names`` (``write_task(name, task_dir)``: rendered, or reused
    when complete), in ``processes`` spawned processes when more than one: rendering is numpy drawing and PNG
    encoding without torch (a process starts in well under a second), and each task renders into its own folder,
    swapped in atomically; an image is a pure function of its seed and index, so the files do not depend on it."""
    if processes <= 1 or len(names) <= 1:
        return {name: write_task(name, task_dir) for name in names}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(processes, len(names)), mp_context=mp.get_context("spawn")) as pool:
        futures = {name: pool.submit(write_task, name, task_dir) for name in names}
        return {name: future.result() for name, future in futures.items()}
