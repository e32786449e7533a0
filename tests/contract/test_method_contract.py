"""The contract every registered prompt-learning method — and every registered feature-space adapter — keeps, parametrised over the registry (a newly registered
method is held to it without touching this file): it trains (one optimiser step moves every parameter it declares
trainable, with a gradient, and nothing of the frozen backbone), saves and loads (identical tensors, identical
logits, its config through ``learner.json``), predicts from a ``vlprompt train`` run folder (probabilities that sum
to 1, the run's own accuracy), re-evaluates (``vlprompt eval --run`` gives ``metrics.json``'s accuracy) and runs in
the grid (``vlprompt benchmark --methods M``) with its own official recipe recorded in ``config.json``.

Runs share module-scoped folders: one ``vlprompt train`` and one one-method grid per method, on tiny random-weights
CLIPs, one thread.

Every feature-space adapter (:func:`vlprompt.adapters.list_adapters`, and the two toys of ``tests/adapter_runs`` that
stand in for them) is held to its own contract (issue 16): it declares a buildable config and a JSON recipe (with
``num_views`` where it uses views); it fits on tiny cached features without changing them; its record is JSON; saved
(``adapter.safetensors`` + ``adapter.json``) and loaded through ``prepare`` + ``load_state_dict`` it gives the
identical tensors and logits; it classifies other classes only where it declares ``new_classes`` (else a subset of
its classes, as columns, and a refusal); and it runs through ``vlprompt train``, ``PromptClassifier``, ``vlprompt
eval`` and the grid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_CONFIGS, make_image
from vlprompt.backbones import create_backbone
from vlprompt.cli.main import main
from vlprompt.engine.checkpoint import load_learner, read_learner_json, save_learner
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.fit import FeatureBankBatches, fit
from vlprompt.engine.model import PromptModel
from vlprompt.engine.recipe import RECIPE_FIELDS, method_recipe
from vlprompt.prompts import create_prompt_learner, get_prompt_learner_class, list_prompt_learners

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "baselines"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "adapter_runs"))
from baseline_layouts import single_thread, write_split_benchmark  # noqa: E402
from toy_adapters import TOYS, registered  # noqa: E402

from vlprompt.adapters import AdapterData, create_adapter, get_adapter_class, list_adapters  # noqa: E402
from vlprompt.engine.adapter_artifact import AdapterHead, load_adapter, read_adapter_json, save_adapter  # noqa: E402
from vlprompt.errors import ConfigError  # noqa: E402

#: Every registered method: the contract covers a new one as soon as it is registered.
METHODS = list_prompt_learners()
#: One run folder / backbone per method for every test that takes ``method`` (module-scoped parameter).
per_method = pytest.mark.parametrize("method", METHODS, scope="module")

BACKBONE = ["--backbone", "vlp-tiny-vit", "--pretrained", "random", "--device", "cpu"]
#: The official recipes of the methods the project ships, for 1 and 2 shots on a non-ImageNet dataset (epochs,
#: batch size): CoOp:configs/trainers/CoOp/rn50_ep50.yaml / rn50_ep100.yaml (BATCH_SIZE 32; COOP.md: 1 shot → ep50,
#: 2–4 → ep100), CoCoOp:vit_b16_c4_ep10_batch1_ctxv1.yaml (10, 1), KgCoOp:vit_b16_ep100_ctxv1.yaml (100, 128). A
#: method registered later is held to its own ``method_recipe``.
OFFICIAL = {"coop": {1: (50, 32), 2: (100, 32)}, "cocoop": {1: (10, 1), 2: (10, 1)},
            "kgcoop": {1: (100, 128), 2: (100, 128)}}
CLASSES = {"blue_jay": (40, 60, 200), "green_frog": (40, 180, 60), "red_fox": (200, 40, 40)}  # sorted: label order
#: ``vlp-tiny-vit``'s text and vision layers: a deep method's official depths (9, 12) exceed them, so its depth
#: options are set to every layer (:func:`vlprompt.microclip.demo_base2new.fitting_options`, as the v2 demo does).
TINY_LAYERS = (TINY_CONFIGS["vlp-tiny-vit"]["text_cfg"]["layers"], TINY_CONFIGS["vlp-tiny-vit"]["vision_cfg"]["layers"])


def _options(method: str) -> dict:
    """Learner options that make ``method`` fit ``vlp-tiny-vit`` (``{}`` for CoOp, CoCoOp, KgCoOp)."""
    from vlprompt.microclip.demo_base2new import fitting_options

    return fitting_options(method, *TINY_LAYERS)


def _option_flags(method: str) -> list[str]:
    return [x for k, v in _options(method).items() for x in ("--learner-opt", f"{k}={v}")]


#: Every registered adapter, and the toys (registered for this module only by ``_toy_adapters``).
ADAPTERS = sorted({*list_adapters(), *TOYS})
per_adapter = pytest.mark.parametrize("adapter", ADAPTERS, scope="module")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module", autouse=True)
def _toy_adapters():
    with registered():
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """conftest's ``image_folder`` layout (3 colour classes, train/ and test/), smaller: 2 train, 2 test each."""
    root = tmp_path_factory.mktemp("contract") / "data"
    for split, n in (("train", 2), ("test", 2)):
        for cls, col in CLASSES.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                make_image(d / f"{i}.png", tuple(c + 9 * i for c in col), marker=(4 * i, 8))
    return root


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("vlp-tiny-vit", "random")


@pytest.fixture(scope="module")
def images(backbone):
    """Fixed random preprocessed images ``[6, 3, S, S]`` (a method that prompts the image tower trains on these)."""
    gen = torch.Generator().manual_seed(0)
    size = backbone.preprocess.image_size
    return torch.randn(6, 3, size, size, generator=gen)


@pytest.fixture(scope="module")
def features(backbone, images):
    """L2-normalised image features ``[6, E]`` of :func:`images` and their labels ``[6]`` (two per class)."""
    with torch.no_grad():
        feats = torch.nn.functional.normalize(backbone.encode_image(images).float(), dim=-1)
    return feats, torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.fixture(scope="module")
def trained(method, folder, tmp_path_factory):
    """``vlprompt train --method M`` (1 epoch, no augmentation) on the image folder: the run folder."""
    out = tmp_path_factory.mktemp(f"train-{method}") / "run"
    assert main(["train", "--dataset", f"folder:{folder}", "--method", method, "--shots", "2", "--epochs", "1",
                 "--augment", "none", "--out", str(out), "--cache-dir", "", *BACKBONE, *_option_flags(method)]) == 0
    return out


@pytest.fixture(scope="module")
def grid(method, tmp_path_factory):
    """``vlprompt benchmark --protocol fewshot --methods M --shots 1 --seeds 1`` on a 3-class DTD in its official
    layout, with nothing of the recipe given (epochs and batch size are the method's own): the run folder."""
    base = tmp_path_factory.mktemp(f"grid-{method}")
    write_split_benchmark(base / "data", "dtd", sizes=(1, 1, 2))
    runs = base / "runs"
    assert main(["benchmark", "--protocol", "fewshot", "--datasets", "dtd", "--methods", method, "--shots", "1",
                 "--seeds", "1", "--root", str(base / "data"), "--out", str(runs), "--augment", "none",
                 "--cache-dir", "", "--no-report", *BACKBONE, *_option_flags(method)]) == 0
    return runs / "dtd" / method / "1shots" / "seed1"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _recipe(method: str, shots: int, dataset: str) -> dict[str, int]:
    """The recipe a run must record: the official numbers where pinned above, else the resolver's."""
    if method in OFFICIAL:
        epochs, batch = OFFICIAL[method][shots]
        return {"epochs": epochs, "batch_size": batch, "lr": 0.002}
    return method_recipe(method, shots, dataset)


def _learner(method, backbone):
    """The method's default learner on the 3 classes, its random initialisation seeded: with the tiny backbone's
    32-d embedding CoCoOp's meta-net has 2 hidden ReLU units, and about one initialisation in six leaves both dead
    for all six test features (then no gradient reaches ``meta_net.linear1``/``linear2.weight``); seed 0 does not."""
    torch.manual_seed(0)
    return create_prompt_learner(method, backbone, list(CLASSES), _options(method), template="a photo of a {}.")


def _logits(model: PromptModel, feats: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``[6, C]`` logits of the fixed images: through the prompted tower for a method that prompts it, else from
    their frozen-tower features."""
    with torch.no_grad():
        if model.learner.prompts_image:
            return model.predict_logits(model.image_features(images))
        return model.predict_logits(feats)


def test_the_registry_holds_the_official_methods():
    assert METHODS and {"coop", "cocoop", "kgcoop"} <= set(METHODS)


@per_method
def test_recipe_sets_only_recipe_fields(method):
    cls = get_prompt_learner_class(method)
    assert set(cls.recipe) <= set(RECIPE_FIELDS)
    for shots, dataset in ((1, "dtd"), (16, "imagenet"), (None, None)):
        recipe = method_recipe(method, shots, dataset)
        assert set(recipe) == set(RECIPE_FIELDS) and 0 < recipe["lr"] < 1
        assert all(isinstance(recipe[k], int) and recipe[k] >= 1 for k in ("epochs", "batch_size"))
    for shots in (1, 2):
        assert method_recipe(method, shots, "dtd") == _recipe(method, shots, "dtd")


@per_method
def test_one_step_moves_every_trainable_parameter_and_nothing_frozen(method, backbone, features, images):
    learner = _learner(method, backbone)
    model = PromptModel(backbone, learner)
    trainable = {n: p.detach().clone() for n, p in learner.named_parameters() if p.requires_grad}
    assert trainable, f"{method} declares no trainable parameter"
    # what is saved is exactly what is learned (fixed token embeddings are non-persistent buffers)
    assert set(learner.trainable_state_dict()) == set(trainable)
    assert not any(p.requires_grad for p in backbone.parameters())
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}

    feats, labels = features
    steps = []
    # warmup_epochs=0: the step runs at the base lr 0.002, not the warm-up 1e-5 (a change float32 could lose)
    cfg = TrainConfig(epochs=1, batch_size=len(labels), warmup_epochs=0)
    if learner.prompts_image:  # its image tower runs with the learned tokens: it trains on the images (1 batch)
        batches, are_feats = [(images, labels)], False
    else:
        batches, are_feats = FeatureBankBatches(feats[None], labels, len(labels), torch.Generator().manual_seed(0)), True
    history = fit(model, batches, cfg, 1, images_are_features=are_feats, on_step=steps.append, scaler=None)
    assert len(steps) == 1 and len(history) == 1 and history[0]["lr"] == pytest.approx(0.002)

    params = dict(learner.named_parameters())
    for name, before in trainable.items():
        p = params[name]
        # a gradient (not only weight decay) reached it, and the step moved it
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{method}: no gradient reached '{name}'"
        assert not torch.equal(p.detach(), before), f"{method}: the step did not change '{name}'"
    assert not any(p.grad is not None for p in backbone.parameters())
    after = backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items()), f"{method} changed the frozen backbone"


@per_method
def test_save_load_round_trip(method, backbone, features, images, tmp_path):
    learner = _learner(method, backbone)
    with torch.no_grad():  # move every learned tensor off its initial value, so that loading must restore it
        for p in learner.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    save_learner(tmp_path, learner, backbone)

    meta = read_learner_json(tmp_path)
    assert meta["method"] == method and meta["classnames"] == list(CLASSES)
    assert meta["config"] == learner.config_dict()  # config_dict through learner.json, as JSON
    assert json.loads(json.dumps(learner.config_dict())) == learner.config_dict()

    loaded = load_learner(tmp_path, backbone)
    assert type(loaded) is type(learner) and loaded.config_dict() == learner.config_dict()
    a, b = learner.trainable_state_dict(), loaded.trainable_state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    rebuilt = create_prompt_learner(method, backbone, meta["classnames"], meta["config"])
    assert rebuilt.config_dict() == learner.config_dict()

    feats, _ = features
    want = _logits(PromptModel(backbone, learner.eval()), feats, images)
    got = _logits(PromptModel(backbone, loaded), feats, images)
    assert got.shape == (len(feats), len(CLASSES)) and torch.equal(got, want)


@per_method
def test_train_run_predicts_and_reevaluates(method, trained, folder):
    from vlprompt.api import PromptClassifier

    cfg, metrics, learner = (_json(trained / f) for f in ("config.json", "metrics.json", "learner.json"))
    assert cfg["method"] == method and learner["method"] == method and cfg["train"]["epochs"] == 1
    assert cfg["learner"] == learner["config"]
    assert cfg["train"]["batch_size"] == _recipe(method, 2, cfg["dataset"]["name"])["batch_size"]  # epochs: ours
    assert learner["classnames"] == list(CLASSES)

    clf = PromptClassifier.load(trained)
    files = sorted((folder / "test").glob("*/*.png"))
    pred = clf.predict(files)
    assert pred.probs.shape == (len(files), len(CLASSES))
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(len(files)), rtol=0, atol=1e-5)
    assert all(label in CLASSES for label in pred.labels)
    # the run's own test accuracy, from the image files through the public API
    truth = [f.parent.name for f in files]
    assert 100.0 * sum(p == t for p, t in zip(pred.labels, truth, strict=True)) / len(files) == pytest.approx(
        metrics["accuracy"])

    assert main(["eval", "--run", str(trained), "--dataset", f"folder:{folder}", "--device", "cpu",
                 "--cache-dir", ""]) == 0
    assert _json(trained / "eval_data" / "metrics.json")["accuracy"] == pytest.approx(metrics["accuracy"])


@per_method
def test_grid_run_records_the_methods_resolved_recipe(method, grid):
    cfg, metrics, learner = (_json(grid / f) for f in ("config.json", "metrics.json", "learner.json"))
    assert cfg["method"] == method and cfg["shots"] == 1 and cfg["seed"] == 1
    recorded = {k: cfg["train"][k] for k in RECIPE_FIELDS}
    assert recorded == method_recipe(method, 1, "dtd") == _recipe(method, 1, "dtd")
    assert learner["method"] == method and learner["config"] == cfg["learner"]
    assert metrics["num_test"] == 6 and 0 <= metrics["accuracy"] <= 100


# ------------------------------------------------------------------------------------------ feature-space adapters


def _adapter_data(cls, with_val: bool = True) -> AdapterData:
    """Tiny cached features: ``C = 3`` classes, two training images each (``[6, 32]``, unnormalised, norm ≈ 4),
    their ``V`` views (``V``: the recipe's ``num_views``) where the method uses views, a val set of the same size, and
    a zero-shot classifier near the class means."""
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(3, 32, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])

    def draw(n: int) -> torch.Tensor:
        return 4.0 * torch.nn.functional.normalize(means[labels[:n]] + 0.8 * torch.randn(n, 32, generator=gen), dim=-1)

    train = draw(6)
    views = None
    if cls.uses_views:
        v = int(cls.recipe["num_views"])
        views = train[None] + 0.3 * torch.randn(v, 6, 32, generator=gen)  # [V, N, E]
    text = torch.nn.functional.normalize(means + 0.5 * torch.randn(3, 32, generator=gen), dim=-1)
    return AdapterData(train=train, train_labels=labels, text=text, logit_scale=100.0, views=views,
                       val=draw(6) if with_val and cls.uses_val else None,
                       val_labels=labels.clone() if with_val and cls.uses_val else None, seed=1)


@pytest.fixture(scope="module")
def fitted(adapter, tmp_path_factory):
    """``(adapter fitted on _adapter_data, the data, a copy of the data's tensors before the fit, its run folder with
    the saved artifact)``."""
    cls = get_adapter_class(adapter)
    data = _adapter_data(cls)
    before = {k: v.clone() for k, v in vars(data).items() if isinstance(v, torch.Tensor)}
    torch.manual_seed(0)
    model = create_adapter(adapter)
    model.record = model.fit(data)
    folder = tmp_path_factory.mktemp(f"adapter-{adapter}")
    save_adapter(folder, model.eval(), ["c0", "c1", "c2"], {"name": "tiny", "fingerprint": "w2:test"},
                 feature_dim=32, logit_scale=data.logit_scale, template="a photo of a {}.")
    return model, data, before, folder


@per_adapter
def test_adapter_declares_a_buildable_config_and_a_json_recipe(adapter):
    cls = get_adapter_class(adapter)
    assert cls.method == adapter and cls.display_name
    model = create_adapter(adapter)  # every option has a default
    assert json.loads(json.dumps(model.config_dict())) == model.config_dict()
    assert create_adapter(adapter, model.config_dict()).config_dict() == model.config_dict()
    assert json.loads(json.dumps(cls.recipe)) == cls.recipe
    if cls.uses_views:
        assert isinstance(cls.recipe.get("num_views"), int) and cls.recipe["num_views"] >= 1
    with pytest.raises(ConfigError, match="unknown option"):
        create_adapter(adapter, {"no_such_option": 1})


@per_adapter
def test_adapter_fits_on_features_without_changing_them_and_records_json(adapter, fitted):
    model, data, before, _ = fitted
    for k, v in before.items():
        assert torch.equal(getattr(data, k), v), f"{adapter}.fit changed data.{k}"
    assert json.loads(json.dumps(model.record)) == model.record  # the record goes to adapter.json
    with torch.no_grad():
        logits = model(data.train)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    assert model.state_dict(), f"{adapter} saves nothing"


@per_adapter
def test_adapter_save_load_gives_identical_tensors_and_logits(adapter, fitted):
    model, data, _, folder = fitted
    meta = read_adapter_json(folder)
    assert meta["method"] == adapter and meta["config"] == model.config_dict() and meta["record"] == model.record
    loaded = load_adapter(folder, data.text.clone())  # a fresh adapter: prepare(shapes) + load_state_dict
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    x = torch.cat([data.train, 3.0 * torch.randn(4, 32, generator=torch.Generator().manual_seed(1))])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@per_adapter
def test_adapter_new_classes_honoured(adapter, fitted):
    model, data, _, _ = fitted
    names = ["c0", "c1", "c2"]
    x = data.train
    with torch.no_grad():
        full = model(x)
    if model.new_classes:
        with torch.no_grad():
            torch.testing.assert_close(model(x, data.text), full, rtol=1e-5, atol=1e-5)  # its own classes as text
            assert model(x, data.text[[2, 0]]).shape == (6, 2)
        head = AdapterHead(model, names, ["c2", "new"], text_of=lambda n: data.text[[2, 0]])
        assert head.logits(x).shape == (6, 2)
    else:
        head = AdapterHead(model, names, ["c2", "c0"])  # a subset of its classes: those columns
        assert torch.equal(head.logits(x), full[:, [2, 0]])
        with pytest.raises(ConfigError, match="cannot classify classes it was not fitted on"):
            AdapterHead(model, names, ["c0", "new"], text_of=lambda n: data.text[:2])


@per_adapter
def test_adapter_without_val_fits_or_refuses_clearly(adapter):
    """A dataset without a few-shot val split (a folder of train/ and test/) gives ``val=None``: a method that
    selects on val either falls back (its defaults) or refuses with a ConfigError, never a crash from inside; a
    method that does not select on val fits as usual."""
    cls = get_adapter_class(adapter)
    try:
        create_adapter(adapter).fit(_adapter_data(cls, with_val=False))
    except ConfigError:
        if not cls.uses_val:
            raise


@pytest.fixture(scope="module")
def adapter_run(adapter, tmp_path_factory):
    """``vlprompt train --method ADAPTER`` on a 3-class DTD in its official layout (2 train, 2 val, 2 test images
    per class): the run folder."""
    base = tmp_path_factory.mktemp(f"adapter-run-{adapter}")
    write_split_benchmark(base / "data", "dtd", sizes=(2, 2, 2))
    out = base / "run"
    assert main(["train", "--dataset", "dtd", "--root", str(base / "data"), "--method", adapter, "--shots", "2",
                 "--out", str(out), "--cache-dir", "", *BACKBONE]) == 0
    return out


@per_adapter
def test_adapter_run_predicts_and_reevaluates(adapter, adapter_run):
    from vlprompt.api import PromptClassifier
    from vlprompt.data import load_dataset

    cfg, metrics, meta = (_json(adapter_run / f) for f in ("config.json", "metrics.json", "adapter.json"))
    cls = get_adapter_class(adapter)
    assert cfg["method"] == meta["method"] == adapter and cfg["learner"] == meta["config"]
    assert cfg["adapter"]["views"] == (cls.recipe["num_views"] if cls.uses_views else 0)
    clf = PromptClassifier.load(adapter_run)
    root = str(adapter_run.parent / "data")
    test = load_dataset("dtd", root).test
    pred = clf.predict([r.path for r in test])
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(len(test)), rtol=0, atol=1e-5)
    truth = [clf.classnames[r.label] for r in test]
    assert 100.0 * sum(p == t for p, t in zip(pred.labels, truth, strict=True)) / len(test) == pytest.approx(
        metrics["accuracy"])
    assert main(["eval", "--run", str(adapter_run), "--dataset", "dtd", "--root", root, "--device", "cpu",
                 "--cache-dir", ""]) == 0
    assert _json(adapter_run / "eval_dtd" / "metrics.json")["accuracy"] == pytest.approx(metrics["accuracy"])


@per_adapter
def test_adapter_runs_in_the_grid(adapter, tmp_path):
    write_split_benchmark(tmp_path / "data", "dtd", sizes=(1, 1, 2))
    runs = tmp_path / "runs"
    assert main(["benchmark", "--protocol", "fewshot", "--datasets", "dtd", "--methods", adapter, "--shots", "1",
                 "--seeds", "1", "--root", str(tmp_path / "data"), "--out", str(runs), "--cache-dir", "",
                 "--no-report", *BACKBONE]) == 0
    run = runs / "dtd" / adapter / "1shots" / "seed1"
    cfg, meta = _json(run / "config.json"), _json(run / "adapter.json")
    official = get_adapter_class(adapter).dataset_config("dtd", 1)  # the per-dataset/shot values, over the defaults
    assert cfg["method"] == meta["method"] == adapter
    assert cfg["learner"] == create_adapter(adapter, official).config_dict()
    assert _json(run / "metrics.json")["num_test"] == 6
