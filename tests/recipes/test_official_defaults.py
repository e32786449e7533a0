"""Defaults pinned to absolute expectations taken from the official code (each test cites its file): optimiser,
what it optimises, SGD arithmetic, CSC initialisation, the class token's middle position, CoCoOp's meta-net
input, the train transform, macro-F1, and KgCoOp's templates.

Each test names the one-line bug it catches (see ``docs/recipes.md`` for the mutation table).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from vlprompt.backbones import create_backbone
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.fit import FeatureBankBatches, fit, make_optimizer
from vlprompt.engine.model import PromptModel
from vlprompt.engine.recipe import method_template, resolve_train_config
from vlprompt.eval.metrics import classification_metrics
from vlprompt.prompts import CoOp, CoOpConfig, create_prompt_learner

NAMES = ["dog", "golden_retriever", "cat"]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone("vlp-tiny-vit", "random")


# --- optimiser ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["coop", "cocoop", "kgcoop"])
def test_sgd_hyperparameters_are_dassls(vit, method):
    """``Dassl:dassl/optim/optimizer.py`` l.105–113 builds ``torch.optim.SGD(lr=OPTIM.LR, momentum=0.9,
    weight_decay=5e-4, dampening=0, nesterov=False)`` (``dassl/config/defaults.py`` l.153–156; LR 0.002 in every
    official yaml). Catches: SGD without weight decay, momentum or lr changed."""
    learner = create_prompt_learner(method, vit, NAMES)
    opt = make_optimizer(learner, resolve_train_config(TrainConfig(), method, 16, "dtd"))
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["dampening"], g["nesterov"]) == (0.002, 0.9, 5e-4, 0, False)


def _optimised_names(learner, opt) -> set[str]:
    ids = {id(p) for group in opt.param_groups for p in group["params"]}
    return {n for n, p in learner.named_parameters() if id(p) in ids}


def test_cocoop_optimises_ctx_and_the_meta_net(vit):
    """``CoOp:trainers/cocoop.py`` l.217–235: gradients on for every ``prompt_learner`` parameter and
    ``build_optimizer(self.model.prompt_learner)``: the context and all four meta-net tensors. Catches: the
    optimiser given only ``ctx`` (the meta-net would silently stop learning)."""
    learner = create_prompt_learner("cocoop", vit, NAMES)
    opt = make_optimizer(learner, TrainConfig())
    assert _optimised_names(learner, opt) == {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                                              "meta_net.linear2.weight", "meta_net.linear2.bias"}
    # and training really moves the meta-net
    before = {n: p.detach().clone() for n, p in learner.meta_net.named_parameters()}
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(1, 6, vit.embed_dim, generator=g), dim=-1)  # (1, N, E)
    fit(PromptModel(vit, learner), FeatureBankBatches(bank, torch.arange(6) % 3, 3, g), TrainConfig(), 2,
        images_are_features=True)
    for n, p in learner.meta_net.named_parameters():
        assert not torch.equal(p.detach(), before[n]), n


def test_coop_and_kgcoop_optimise_only_the_context(vit):
    """CoOp (``trainers/coop.py`` l.237–246) and KgCoOp (``KgCoOp/trainers/kgcoop.py`` l.268–280: gradients only
    where the name contains "ctx") learn exactly ``ctx``."""
    for method in ("coop", "kgcoop"):
        learner = create_prompt_learner(method, vit, NAMES)
        assert _optimised_names(learner, make_optimizer(learner, TrainConfig())) == {"ctx"}


def test_two_sgd_steps_follow_the_official_arithmetic(vit):
    """Two epochs of one full batch: epoch 1 at the constant warm-up lr 1e-5, epoch 2 at 0.002·½(1 + cos 0) =
    0.002 (Dassl ConstantWarmupScheduler + CosineAnnealingLR(T_max=MAX_EPOCH)). torch SGD with Dassl's settings:
    ``d = g + 5e-4·p; buf = 0.9·buf + d (buf = d at the first step); p -= lr·buf``. Written out by hand here, so a
    change of weight decay, momentum, dampening, nesterov or the schedule fails."""
    torch.manual_seed(1)
    learner = CoOp(vit, NAMES, CoOpConfig(n_ctx=2))
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(1, 6, vit.embed_dim, generator=g), dim=-1)  # (1, N, E)
    labels = torch.arange(6) % 3
    model = PromptModel(vit, learner)

    def grad_at(p: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            learner.ctx.copy_(p)
        learner.zero_grad()
        loss, _ = model.training_loss(bank[0], labels)
        loss.backward()
        return learner.ctx.grad.detach().clone()

    def two_steps(wd: float) -> torch.Tensor:
        p0 = start.clone()
        buf = grad_at(p0) + wd * p0
        p1 = p0 - 1e-5 * buf
        buf = 0.9 * buf + grad_at(p1) + wd * p1
        return p1 - 0.002 * buf

    start = 50 * learner.ctx.detach()  # |p| ~ 1: the decay term 5e-4·p is far above float rounding
    expected, without_wd = two_steps(5e-4), two_steps(0.0)
    with torch.no_grad():
        learner.ctx.copy_(start)
    learner.zero_grad()
    history = fit(model, FeatureBankBatches(bank, labels, 6, torch.Generator().manual_seed(2)),
                  resolve_train_config(TrainConfig(), "coop", 16, "dtd"), 2, images_are_features=True)
    assert [h["lr"] for h in history] == [1e-5, 0.002]
    got = learner.ctx.detach()
    err, gap = (got - expected).abs().max().item(), (got - without_wd).abs().max().item()
    assert err < 2e-7 and gap > 1e-6  # matches the formula; without weight decay it would be visibly off


# --- prompt learner -------------------------------------------------------------------------------------------


def test_csc_random_init_is_one_independent_draw_per_class(vit):
    """``CoOp:trainers/coop.py`` l.84–90: ``ctx_vectors = torch.empty(n_cls, n_ctx, ctx_dim); nn.init.normal_(
    ctx_vectors, std=0.02)``: under the same seed vlprompt's CSC context is exactly that draw. Catches: every class
    starting from one shared draw."""
    torch.manual_seed(123)
    learner = CoOp(vit, NAMES, CoOpConfig(n_ctx=4, csc=True))
    torch.manual_seed(123)
    official = torch.empty(len(NAMES), 4, vit.token_dim)
    torch.nn.init.normal_(official, std=0.02)
    assert torch.equal(learner.ctx.detach(), official)
    assert not torch.equal(learner.ctx[0], learner.ctx[1])
    torch.manual_seed(123)
    unified = CoOp(vit, NAMES, CoOpConfig(n_ctx=4)).ctx.detach()
    assert torch.equal(unified, official.view(-1)[: 4 * vit.token_dim].view(4, -1))  # (M, D): the same stream


def test_csc_with_word_init_starts_every_class_from_the_words(vit):
    """Deliberate deviation (docs/recipes.md): the official code ignores CSC when CTX_INIT is set (l.72–80);
    vlprompt gives each class its own copy of the word embeddings."""
    learner = CoOp(vit, NAMES, CoOpConfig(ctx_init="a photo of a", csc=True))
    words = vit.embed_tokens(vit.tokenize(["a photo of a"]))[0, 1:5]
    assert learner.ctx.shape == (3, 4, vit.token_dim)
    for c in range(3):
        assert torch.equal(learner.ctx[c].detach(), words)


@pytest.mark.parametrize("n_ctx", [5, 3])
def test_middle_position_for_odd_m_is_the_official_split(vit, n_ctx):
    """``CoOp:trainers/coop.py`` l.136–157, ported: ``half_n_ctx = n_ctx // 2``; prompt = prefix, ctx[:half],
    class tokens, ctx[half:], the rest (``.``, EOS, padding). Catches: the class token at ⌈M/2⌉ for odd M."""
    torch.manual_seed(0)
    learner = CoOp(vit, NAMES, CoOpConfig(n_ctx=n_ctx, class_token_position="middle", truncate=False))
    embeds, ids = learner()
    ctx = learner.ctx.detach()
    placeholder = " ".join(["X"] * n_ctx)
    for i, name in enumerate(NAMES):
        name = name.replace("_", " ")
        tok = vit.tokenize([f"{placeholder} {name}."])  # (1, 77) class-at-end placeholder prompt
        emb = vit.embed_tokens(tok)[0]  # (77, D)
        prefix, suffix = emb[:1], emb[1 + n_ctx :]
        name_len = len(vit.bpe_tokens(name))
        half = n_ctx // 2
        official = torch.cat([prefix, ctx[:half], suffix[:name_len], ctx[half:], suffix[name_len:]])
        assert torch.equal(embeds[i].detach(), official), name
        # the EOS stays where the placeholder prompt has it (EOT pooling reads the placeholder ids, l.57)
        assert int(ids[i].argmax()) == int(tok[0].argmax())


def test_cocoop_meta_net_reads_normalised_image_features(vit):
    """``CoOp:trainers/cocoop.py`` l.178–181: ``image_features = image_encoder(image); image_features /=
    image_features.norm(...); prompts = prompt_learner(image_features)``. The meta-net's input is the L2-normalised
    image feature, in training (from images) and in evaluation (from cached, unnormalised features)."""
    from vlprompt.engine.pipeline import evaluate_model

    torch.manual_seed(0)
    learner = create_prompt_learner("cocoop", vit, NAMES)
    seen: list[torch.Tensor] = []
    learner.meta_net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float().clone()))
    model = PromptModel(vit, learner)
    images = torch.rand(3, 3, vit.preprocess.image_size, vit.preprocess.image_size)
    with torch.no_grad():
        raw = vit.encode_image(images).float()  # (B, E) unnormalised, as the image tower returns it
    expected = raw / raw.norm(dim=-1, keepdim=True)
    fit(model, [(images, torch.tensor([0, 1, 2]))], TrainConfig(), 1, images_are_features=False)
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-6)
    seen.clear()
    with torch.no_grad():
        evaluate_model(model, raw, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-6)


# --- data -----------------------------------------------------------------------------------------------------


def test_train_transform_is_dassls_bicubic_random_resized_crop(vit):
    """The official train pipeline (``CoOp:configs/trainers/*/*.yaml`` INTERPOLATION "bicubic", TRANSFORMS
    random_resized_crop, random_flip, normalize; ``Dassl:dassl/data/transforms/transforms.py`` l.206–234, scale
    INPUT.RRCROP_SCALE (0.08, 1.0) from ``defaults.py`` l.40), built here with torchvision from those settings,
    gives the identical tensor under the same seed. Catches: the crop losing its bicubic interpolation."""
    from vlprompt.data.transforms import build_transform

    pre = vit.preprocess
    assert pre.interpolation == "bicubic"
    size = pre.image_size
    official = T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5), T.ToTensor(),
        T.Normalize([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
    ])
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8))  # high-frequency: kernels differ
    ours = build_transform(pre, train=True)
    crop = ours.transforms[0]
    assert isinstance(crop, T.RandomResizedCrop) and crop.interpolation == T.InterpolationMode.BICUBIC
    assert crop.scale == (0.08, 1.0) and crop.ratio == (3 / 4, 4 / 3)
    for seed in range(5):
        torch.manual_seed(seed)
        a = ours(img)
        torch.manual_seed(seed)
        assert torch.equal(a, official(img)), seed


def test_test_transform_is_dassls_resize_shorter_side_then_center_crop(vit):
    """``Dassl:dassl/data/transforms/transforms.py`` l.326–337: ``Resize(max(INPUT.SIZE), bicubic)`` (shorter
    side, aspect kept) → ``CenterCrop`` → ``ToTensor`` → ``Normalize``."""
    from vlprompt.data.transforms import build_transform

    size = vit.preprocess.image_size
    official = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                          T.Normalize([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])])
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (97, 131, 3), dtype=np.uint8))
    assert torch.equal(build_transform(vit.preprocess, train=False)(img), official(img))


# --- metrics --------------------------------------------------------------------------------------------------


def test_macro_f1_is_over_the_classes_present_in_the_labels():
    """``Dassl:dassl/evaluation/evaluator.py`` l.71–76: ``f1_score(y_true, y_pred, average="macro",
    labels=np.unique(y_true))``. Class 3 is predicted once but absent from the labels: Dassl averages over classes
    0–2 only, (1/2 + 1 + 2/3) / 3 = 72.222…% (computed with sklearn 1.9.1 and that exact call); averaging over the
    present or predicted classes would give 54.166…%. Catches: macro-F1 over absent, predicted classes."""
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 3, 1, 1, 2, 0]
    m = classification_metrics(torch.tensor(y_pred), torch.tensor(y_true), num_classes=4)
    assert m["macro_f1"] == pytest.approx(100 * 13 / 18)
    assert m["accuracy"] == pytest.approx(100 * 4 / 6)
    metrics = pytest.importorskip("sklearn.metrics")
    assert m["macro_f1"] == pytest.approx(100.0 * metrics.f1_score(y_true, y_pred, average="macro",
                                                                   labels=np.unique(y_true)))
    assert 100.0 * metrics.f1_score(y_true, y_pred, average="macro") == pytest.approx(100 * 13 / 24)


def test_macro_f1_of_a_class_never_predicted_is_zero():
    """Class 0: precision 1/3, recall 1 → F1 1/2; class 1 never predicted → F1 0 (sklearn's zero_division)."""
    m = classification_metrics(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 1]), num_classes=2)
    assert m["macro_f1"] == pytest.approx(25.0)


# --- KgCoOp templates -----------------------------------------------------------------------------------------


def test_kgcoop_uses_its_own_templates():
    """``KgCoOp:KgCoOp/trainers/kgcoop.py`` l.37–54 CUSTOM_TEMPLATES (not CoOp's zsclip.py ones): DTD "a photo of a
    {}, a type of texture."; the rest equal CoOp's (e.g. EuroSAT "a centered satellite photo of {}.")."""
    from vlprompt.data.templates import CUSTOM_TEMPLATES
    from vlprompt.prompts.kgcoop import KGCOOP_TEMPLATES

    official = {
        "oxford_pets": "a photo of a {}, a type of pet.", "oxford_flowers": "a photo of a {}, a type of flower.",
        "fgvc_aircraft": "a photo of a {}, a type of aircraft.", "dtd": "a photo of a {}, a type of texture.",
        "eurosat": "a centered satellite photo of {}.", "stanford_cars": "a photo of a {}.",
        "food101": "a photo of {}, a type of food.", "sun397": "a photo of a {}.", "caltech101": "a photo of a {}.",
        "ucf101": "a photo of a person doing {}.", "imagenet": "a photo of a {}.",
        "imagenet_sketch": "a photo of a {}.", "imagenetv2": "a photo of a {}.", "imagenet_a": "a photo of a {}.",
        "imagenet_r": "a photo of a {}.",
    }
    assert KGCOOP_TEMPLATES == official
    assert method_template("kgcoop", "dtd", CUSTOM_TEMPLATES["dtd"]) == "a photo of a {}, a type of texture."
    assert method_template("kgcoop", "eurosat", CUSTOM_TEMPLATES["eurosat"]) == "a centered satellite photo of {}."
    assert method_template("coop", "dtd", CUSTOM_TEMPLATES["dtd"]) == "{} texture."
    assert method_template("cocoop", "dtd", CUSTOM_TEMPLATES["dtd"]) == "{} texture."
    # not an official benchmark (or a split file with its own template): the dataset's own template
    assert method_template("kgcoop", "my_data", "a photo of a {}.") == "a photo of a {}."
    assert method_template("kgcoop", "dtd", "an image of {}.") == "an image of {}."



def test_kgcoop_hand_crafted_features_are_the_official_prompts(vit):
    """``KgCoOp/trainers/kgcoop.py`` l.136–144: ``prompts_ = [temp.format(c.replace("_", " ")) for c in classnames]``
    with ``temp = CUSTOM_TEMPLATES["DescribableTextures"]``, encoded by CLIP and L2-normalised."""
    from vlprompt.data.templates import CUSTOM_TEMPLATES

    names = ["banded", "zig_zagged"]
    learner = create_prompt_learner("kgcoop", vit, names, template=method_template("kgcoop", "dtd",
                                                                                    CUSTOM_TEMPLATES["dtd"]))
    with torch.no_grad():
        official = vit.encode_text([f"a photo of a {n.replace('_', ' ')}, a type of texture." for n in names]).float()
    torch.testing.assert_close(learner.hand_features.float(), F.normalize(official, dim=-1), rtol=1e-5, atol=1e-6)

def _write_dtd(root) -> None:
    """A tiny DTD in the official layout: ``dtd/images/<class>/*.jpg`` + ``split_zhou_DescribableTextures.json``."""
    import json

    split, n = {}, 0
    for part, count in (("train", 4), ("val", 2), ("test", 2)):
        rows = []
        for label, name in enumerate(("banded", "blotchy", "zigzagged")):
            for _ in range(count):
                n += 1
                rel = f"{name}/{name}_{n:04d}.jpg"
                (root / "dtd" / "images" / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (label * 80, n % 255, 0)).save(root / "dtd" / "images" / rel)
                rows.append([rel, label, name])
        split[part] = rows
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))


def test_kgcoop_trains_on_dtd_with_its_own_template(tmp_path):
    """Through ``train_run`` on the DTD benchmark layout: KgCoOp's guidance prompt is KgCoOp's DTD template, its
    batch 128; CoOp's zero-shot template stays the dataset's template for the other methods."""
    import json

    from vlprompt.engine.run import RunSpec, train_run

    _write_dtd(tmp_path / "data")
    common = {"dataset": "dtd", "root": str(tmp_path / "data"), "shots": 2, "backbone": "vlp-tiny-vit",
              "pretrained": "random", "device": "cpu", "cache_dir": "", "train": TrainConfig(epochs=1, augment="none")}
    train_run(RunSpec(out=str(tmp_path / "kg"), method="kgcoop", **common))
    cfg = json.loads((tmp_path / "kg" / "config.json").read_text())
    assert cfg["learner"]["template"] == "a photo of a {}, a type of texture."
    assert cfg["dataset"]["template"] == "{} texture."
    assert (cfg["train"]["batch_size"], cfg["train"]["epochs"]) == (128, 1)
