"""The import layering of DESIGN.md §3, enforced: the library never imports the application, and each library layer
imports only the layers below it.

Every ``import``/``from … import`` statement of every module under ``src/vlprompt`` counts, at module level or inside a
function (a function-level import is still a dependency, only a later one), and so do ``TYPE_CHECKING`` imports.
Importing ``a.b.c`` also imports the packages ``a`` and ``a.b`` (their ``__init__`` runs), so those count too. Not
seen: ``importlib.import_module`` with a computed name — the lazy façade in ``vlprompt/__init__.py`` (which imports
nothing at import time) and the command table of ``cli/main.py`` (application).

:data:`LAYERS` is the documentation: which layer each module belongs to, and which layers it may import. A new
module must be classified here (the test fails, naming it, until it is).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

FOUNDATION = "foundation"
LIBRARY_LAYERS = ("foundation", "backbones", "data", "features", "prompts", "adapters", "eval", "engine", "inference")
APPLICATION_LAYERS = ("reports", "runs", "speed", "microclip", "cli")
LIB = frozenset(LIBRARY_LAYERS)

#: layer → (the modules in it — a package name covers its submodules; the longest name that matches wins —, the
#: layers it may import besides its own). Lowest first.
LAYERS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    # The base every module may use: the package root (``__version__`` and a lazy façade), the error classes (one
    # registry, rebuilt on other ranks), atomic writes, and two small value types that both backbones and data
    # need (the preprocessing config of an image tower, the rule for a prompt template), and the shared types of
    # the frozen specs (the Literal types of closed choices, the read-only mapping of their dict fields), and Dassl's
    # learning-rate schedule that both the engine and the adapters train with.
    "foundation": (("vlprompt", "vlprompt.errors", "vlprompt._io", "vlprompt.preprocess", "vlprompt.template",
                    "vlprompt.types", "vlprompt.schedule"), frozenset()),
    # Adapters of third-party CLIPs (open_clip, transformers, the micro-CLIP model and its compact weights) and
    # text features of hand-crafted prompts through the protocol. Independent of data.
    "backbones": (("vlprompt.backbones",), frozenset({"foundation"})),
    # Records, readers, few-shot sampling, the Dataset, transforms, templates. Independent of backbones.
    "data": (("vlprompt.data",), frozenset({"foundation"})),
    # The on-disk cache of frozen image features and their extraction (a backbone over a dataset), and the augmented
    # views seeded per (augmentation seed, view, image) that the cache stores (features/views.py).
    "features": (("vlprompt.features",), frozenset({"foundation", "backbones", "data"})),
    # Prompt methods talk to the backbone protocol only (DESIGN.md §3): not to data, features or evaluation.
    "prompts": (("vlprompt.prompts",), frozenset({"foundation", "backbones"})),
    # Feature-space adapters (CLIP-Adapter, Tip-Adapter, TaskRes, CLAP, LP++): tensors in, logits out; they never see
    # a backbone, a dataset or the test split.
    "adapters": (("vlprompt.adapters",), frozenset({"foundation"})),
    # Metrics, the zero-shot classifier, the linear-probe fit: below the engine, which uses them to evaluate.
    "eval": (("vlprompt.eval",), frozenset({"foundation", "backbones"})),
    # The task (backbone + method + loss), the loop, optimiser and schedule, precision, the recipe resolver,
    # data/feature preparation, the execution strategy (one process or torchrun), checkpoints of the learned part.
    "engine": (("vlprompt.engine",), frozenset({"foundation", "backbones", "data", "features", "prompts", "adapters",
                                                "eval"})),
    # Using a learned prompt: PromptClassifier, ONNX export (and its graph), nearest-word interpretation of the context.
    "inference": (("vlprompt.api", "vlprompt.export", "vlprompt.onnx_graph", "vlprompt.interpret"),
                  frozenset({"foundation", "backbones", "data", "features", "prompts", "adapters", "eval",
                             "engine"})),
    # --- application -------------------------------------------------------------------------------------------
    # Tables and plots from run folders (reads JSON; uses the library's metrics only).
    "reports": (("vlprompt.reports",), LIB),
    # DESIGN.md §3 "runs/": run folders (config, lock, resume state, metrics, TensorBoard), the run functions, the
    # linear-probe run, replaying a recorded config, the accuracy grid. All of it lives in vlprompt.runs (issue 13
    # moved run/baselines/train_state/tracking/replay there); the old engine/ paths stay as re-exports for users,
    # and by what they do they are the application. benchmark.py re-exports the grid.
    "runs": (("vlprompt.runs", "vlprompt.engine.run", "vlprompt.engine.baselines", "vlprompt.engine.train_state",
              "vlprompt.engine.tracking", "vlprompt.engine.replay", "vlprompt.benchmark"), LIB | {"reports"}),
    # The speed suite (`vlprompt bench`): measures library code, and one end-to-end run.
    "speed": (("vlprompt.speed",), LIB | {"runs"}),
    # The synthetic world, micro-CLIP pretraining, tasks, the offline demo (a grid of runs with a report). Its
    # ``model``/``torch_normal`` modules are compatibility imports of ``vlprompt.backbones.microclip``/``.torch_normal``.
    "microclip": (("vlprompt.microclip",), LIB | {"runs", "reports"}),
    # Thin commands over everything.
    "cli": (("vlprompt.cli", "vlprompt.__main__"), LIB | {"reports", "runs", "speed", "microclip"}),
}


def _names() -> dict[str, str]:
    return {name: layer for layer, (names, _) in LAYERS.items() for name in names}


def layer_of(module: str) -> str | None:
    """The layer of ``module`` (longest matching name of :data:`LAYERS`), ``None`` if it is not classified.

    The package root ``vlprompt`` matches only itself: a new top-level module must be classified explicitly."""
    names, parts = _names(), module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in names:
            return names[".".join(parts[:n])]
    return names.get(module) if module == "vlprompt" else None


def discover(src: Path) -> dict[str, Path]:
    """Every module of the ``vlprompt`` package under ``src``: dotted name → file (a package by its ``__init__``)."""
    out = {}
    for path in sorted((src / "vlprompt").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """``(line, imported vlprompt module)`` for every import statement anywhere in the file, with the packages that
    importing it runs. ``from X import Y`` imports module ``X.Y`` when that is a module, else module ``X``."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, one level up per extra dot
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        for t in targets:
            if t != "vlprompt" and not t.startswith("vlprompt."):
                continue
            parts = t.split(".")
            for n in range(1, len(parts) + 1):  # the packages on the way run their __init__
                found.append((node.lineno, ".".join(parts[:n])))
    return found


def violations(src: Path) -> list[str]:
    """Every import that breaks :data:`LAYERS`, and every module it does not classify, as readable lines."""
    modules = discover(src)
    known = set(modules)
    out = []
    for module, path in modules.items():
        layer = layer_of(module)
        if layer is None:
            out.append(f"{module} ({path.relative_to(src)}) is in no layer: add it to LAYERS in {Path(__file__).name}")
            continue
        allowed = LAYERS[layer][1] | {layer}
        for line, target in sorted(set(imports_of(module, path, known))):
            if target not in known:
                continue  # e.g. a name imported from a package's __init__ resolves to the package itself
            target_layer = layer_of(target)
            if target_layer is not None and target_layer not in allowed:
                kind = ("library imports the application" if layer in LIB and target_layer not in LIB
                        else "imports a layer it may not")
                out.append(f"{path.relative_to(src)}:{line}: {module} [{layer}] imports {target} [{target_layer}]: "
                           f"{kind}")
    return out


def test_library_never_imports_the_application_and_layers_import_only_below():
    found = violations(SRC)
    assert not found, "import layering (DESIGN.md §3) broken:\n" + "\n".join(found)


def test_the_layer_table_is_a_partial_order_with_the_library_below_the_application():
    """Allowed imports point from each layer only to layers listed before it (no cycle); library layers list only
    library layers."""
    order = list(LAYERS)
    assert tuple(order) == LIBRARY_LAYERS + APPLICATION_LAYERS
    for layer, (_, allowed) in LAYERS.items():
        assert allowed <= set(order[: order.index(layer)]), layer
        if layer in LIB:
            assert allowed <= LIB, layer
    assert layer_of("vlprompt.engine.run") == "runs" and layer_of("vlprompt.engine.fit") == "engine"
    assert layer_of("vlprompt.backbones.microclip") == "backbones" and layer_of("vlprompt.microclip.demo") == "microclip"
    assert layer_of("vlprompt.newthing") is None  # the root's own entry does not swallow new top-level modules


def test_the_checker_catches_violations_in_a_synthetic_tree(tmp_path):
    """A synthetic package: a library module importing the CLI inside a function, a method importing the data layer
    at module level (relatively), the data layer importing backbones, and an unclassified module."""
    pkg = tmp_path / "vlprompt"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "cli/__init__.py": "",
        "cli/main.py": "from vlprompt.backbones import thing\n",  # allowed: the application imports the library
        "backbones/__init__.py": "",
        "backbones/thing.py": "def f():\n    from vlprompt.cli.main import main\n    return main\n",
        "data/__init__.py": "",
        "data/templates.py": "from vlprompt.errors import X\n",  # allowed
        "data/transforms.py": "import vlprompt.backbones.thing\n",
        "prompts/__init__.py": "",
        "prompts/kg.py": "from ..data import templates\nfrom . import other\n",
        "prompts/other.py": "from vlprompt.backbones.thing import f\n",  # allowed
        "newthing.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    found = violations(tmp_path)
    assert found == [
        "vlprompt/backbones/thing.py:2: vlprompt.backbones.thing [backbones] imports vlprompt.cli [cli]: "
        "library imports the application",
        "vlprompt/backbones/thing.py:2: vlprompt.backbones.thing [backbones] imports vlprompt.cli.main [cli]: "
        "library imports the application",
        "vlprompt/data/transforms.py:1: vlprompt.data.transforms [data] imports vlprompt.backbones [backbones]: "
        "imports a layer it may not",
        "vlprompt/data/transforms.py:1: vlprompt.data.transforms [data] imports vlprompt.backbones.thing "
        "[backbones]: imports a layer it may not",
        "vlprompt.newthing (vlprompt/newthing.py) is in no layer: add it to LAYERS in test_layering.py",
        "vlprompt/prompts/kg.py:1: vlprompt.prompts.kg [prompts] imports vlprompt.data [data]: "
        "imports a layer it may not",
        "vlprompt/prompts/kg.py:1: vlprompt.prompts.kg [prompts] imports vlprompt.data.templates [data]: "
        "imports a layer it may not",
    ]


#: Private helpers still imported across modules (all from engine/run.py, being split into the runs layer by
#: issue 13): may only shrink. A module's ``_name`` is its own; share a helper by making it public in one module.
KNOWN_PRIVATE_IMPORTS = {
    ("vlprompt.cli.config_file", "vlprompt.engine.run", "_versions"),
}


def test_no_two_modules_import_each_other():
    """A mutual import (speed/onetime.py and speed/worker.py used each other's helpers) means the shared part
    belongs in a third module (``vlprompt.speed.common``)."""
    modules = discover(SRC)
    known = set(modules)
    graph = {m: {t for _, t in imports_of(m, p, known) if t in known and t != m} for m, p in modules.items()}
    mutual = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets
                     if a in graph[b] and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert not mutual, f"modules importing each other: {mutual}"


def test_no_new_module_imports_another_modules_private_names():
    found = set()
    for module, path in discover(SRC).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vlprompt") and not node.level:
                found |= {(module, node.module, a.name) for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")}
    assert found <= KNOWN_PRIVATE_IMPORTS, f"private names imported from another module: {found - KNOWN_PRIVATE_IMPORTS}"


def _exception_bases(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if name.endswith(("Error", "Exception")) or name in ("Exception", "BaseException"):
                    out.append((node.lineno, node.name))
    return out


def test_every_error_class_is_defined_in_errors_py():
    """One registry rebuilds rank 0's errors on the other ranks (``vlprompt.errors.ERROR_CLASSES``): an exception
    class defined elsewhere would reach them as a generic ``DistributedError``."""
    from vlprompt import errors

    elsewhere = [f"{path.relative_to(SRC)}:{line}: class {name}"
                 for module, path in discover(SRC).items() if module != "vlprompt.errors"
                 for line, name in _exception_bases(ast.parse(path.read_text(encoding="utf-8")))]
    assert not elsewhere, "define these in vlprompt/errors.py (re-export where needed):\n" + "\n".join(elsewhere)
    defined = {name for _, name in _exception_bases(ast.parse((SRC / "vlprompt" / "errors.py").read_text()))}
    assert defined | {"VLPromptError"} == set(errors.ERROR_CLASSES)


@pytest.mark.parametrize("old, new, names", [
    ("vlprompt.microclip.model", "vlprompt.backbones.microclip", ["build_microclip", "SHIPPED_WEIGHTS"]),
    ("vlprompt.microclip.torch_normal", "vlprompt.backbones.torch_normal", ["torch_normal"]),
    ("vlprompt.backbones.base", "vlprompt.preprocess", ["PreprocessCfg", "OPENAI_MEAN", "OPENAI_STD"]),
    ("vlprompt.data.templates", "vlprompt.template", ["check_template"]),
    ("vlprompt.eval.zeroshot", "vlprompt.backbones.text", ["zero_shot_weights", "TEXT_CHUNK"]),
    ("vlprompt.engine.fit", "vlprompt.errors", ["TrainingDivergedError"]),
    ("vlprompt.engine.distributed", "vlprompt.errors", ["DistributedError"]),
])
def test_moved_names_are_still_importable_from_their_old_modules(old, new, names):
    import importlib

    for name in names:
        assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)
