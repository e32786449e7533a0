"""Every exact speed path (EOS truncation, shared prefix, class chunking ± activation checkpointing) gives the logits
and context gradients of the plain full-length computation, in fp32, for every class-token position and CSC."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones import create_backbone
from vlprompt.engine.model import PromptModel
from vlprompt.prompts import CoOp, CoOpConfig

# Names of different BPE lengths (1 to 6 tokens), so EOS positions differ and padding matters.
NAMES = ["dog", "golden_retriever", "cat", "a very long class name indeed", "sea_lion"]
EXTRA_CONFIGS = {
    # LayerScale in every block (exercises ls_1/ls_2 in the explicit block).
    "vlp-speed-ls": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2,
                     "ls_init_value": 0.5},
    },
    # CustomResidualAttentionBlock (qk-norm): the shared prefix must refuse it and fall back to the plain path.
    "vlp-speed-qknorm": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                     "qk_norm": True},
    },
}
BACKBONES = ["vlp-tiny-rn", "vlp-tiny-vit", "vlp-tiny-customtext", "vlp-speed-ls"]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, tiny_model_configs):
    import open_clip

    d = tmp_path_factory.mktemp("speed_configs")
    for name, cfg in EXTRA_CONFIGS.items():
        (d / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(d))
    return {name: create_backbone(name, "random") for name in [*BACKBONES, "vlp-speed-qknorm"]}


def _run(backbone, config: CoOpConfig, ctx: torch.Tensor | None, **model_kw):
    """Logits and ctx gradient of a CE loss on fixed random image features."""
    torch.manual_seed(0)
    learner = CoOp(backbone, NAMES, config)
    if ctx is not None:
        with torch.no_grad():
            learner.ctx.copy_(ctx)
    model = PromptModel(backbone, learner, **model_kw)
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(6, backbone.embed_dim, generator=g), dim=-1)
    labels = torch.arange(6) % len(NAMES)
    logits = model.logits(img)
    F.cross_entropy(logits, labels).backward()
    return logits.detach(), learner.ctx.grad.clone(), learner.ctx.detach().clone(), model


def _reference(backbone, position: str, csc: bool):
    """The plain full-length computation: 77 tokens, no prefix sharing, no chunking."""
    cfg = CoOpConfig(n_ctx=4, csc=csc, class_token_position=position, truncate=False)
    logits, grad, ctx, model = _run(backbone, cfg, None, shared_prefix=False)
    assert model.learner.fixed_embeds.shape[1] == backbone.context_length
    return logits, grad, ctx


VARIANTS = {
    "truncate-longest": {"shared_prefix": False, "length_buckets": False},
    "truncate": {"shared_prefix": False},
    "prefix-longest": {"length_buckets": False},
    "prefix": {},
    "prefix+chunk": {"text_chunk": 2, "text_checkpoint": False},
    "prefix+chunk+ckpt": {"text_chunk": 2},
    "truncate+chunk+ckpt": {"shared_prefix": False, "text_chunk": 3},
}


@pytest.fixture(autouse=True)
def split_every_length(monkeypatch):
    """Make every distinct prompt length its own bucket (the default merges buckets too small to pay off)."""
    monkeypatch.setattr("vlprompt.engine.model.BUCKET_OVERHEAD_TOKENS", {"cpu": 0})


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("position,csc", [("end", False), ("middle", False), ("front", False), ("end", True),
                                          ("middle", True)])
def test_fast_paths_match_full_length_computation(backbones, name, position, csc):
    backbone = backbones[name]
    ref_logits, ref_grad, ctx = _reference(backbone, position, csc)
    assert ref_grad.abs().max() > 1e-3  # the comparison is not vacuous
    for variant, kw in VARIANTS.items():
        logits, grad, _, model = _run(backbone, CoOpConfig(n_ctx=4, csc=csc, class_token_position=position), ctx, **kw)
        expected_path = "shared-prefix" if kw.get("shared_prefix", True) and position == "end" and not csc else "plain"
        assert model.text_path() == expected_path, variant
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5, msg=lambda m, v=variant: f"{v}: {m}")
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4, msg=lambda m, v=variant: f"{v}: {m}")


def _brute_force_cost(lengths: list[int], overhead: int) -> float:
    distinct = sorted(set(lengths))
    best = float("inf")
    for mask in range(2 ** (len(distinct) - 1)):  # every split of the sorted distinct lengths into runs
        cost, start = 0, 0
        for j in range(len(distinct)):
            if j == len(distinct) - 1 or mask >> j & 1:
                members = [v for v in lengths if distinct[start] <= v <= distinct[j]]
                cost += len(members) * distinct[j] + overhead
                start = j + 1
        best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("overhead", [0, 5, 40])
def test_length_buckets_are_an_optimal_partition(seed, overhead):
    from vlprompt.engine.model import length_buckets

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 10, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g)
    groups = length_buckets(lengths, overhead)
    assert sorted(torch.cat(groups).tolist()) == list(range(len(lengths)))  # a partition of the classes
    cost = sum(len(i) * int(lengths[i].max()) + overhead for i in groups)
    assert cost == _brute_force_cost(lengths.tolist(), overhead)
    maxima = [int(lengths[i].max()) for i in groups]
    assert maxima == sorted(maxima)


def test_truncation_shortens_prompts_and_prefix_covers_sos_and_context(backbones):
    backbone = backbones["vlp-tiny-vit"]
    learner = CoOp(backbone, NAMES, CoOpConfig(n_ctx=4))
    embeds, ids = learner()
    longest = max(len(backbone.bpe_tokens(n.replace("_", " "))) for n in NAMES)
    assert embeds.shape[1] == 1 + 4 + longest + 2  # SOS, context, longest name, ".", EOS
    prefix, suffix, ids2 = learner.shared_prefix()
    assert torch.equal(torch.cat([prefix.expand(len(NAMES), -1, -1), suffix], dim=1), embeds)
    assert torch.equal(ids2, ids)


def test_custom_attention_blocks_fall_back_to_the_plain_path(backbones):
    backbone = backbones["vlp-speed-qknorm"]
    assert "CustomResidualAttentionBlock" in backbone.shared_prefix_unsupported
    ref_logits, ref_grad, ctx = _reference(backbone, "end", False)
    logits, grad, _, model = _run(backbone, CoOpConfig(n_ctx=4), ctx)
    assert model.text_path() == "plain"
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)


def test_non_causal_mask_is_refused_by_the_prefix_path():
    from vlprompt.backbones.shared_prefix import unsupported_reason

    backbone = create_backbone("vlp-tiny-vit", "random")
    transformer = backbone.text.transformer
    assert unsupported_reason(transformer, backbone.text.attn_mask) is None
    assert "not the standard causal mask" in unsupported_reason(transformer, torch.zeros(77, 77))
    assert "not causal" in unsupported_reason(transformer, None)


def _saved_bytes(model: PromptModel) -> int:
    """Bytes of distinct non-weight storages autograd keeps for backward outside checkpointed regions (what the
    activation memory of a training step grows with)."""
    # Weights and the learner's fixed-embedding buffer exist anyway; what matters is what the step adds.
    weights = {t.untyped_storage().data_ptr() for t in [*model.backbone.parameters(), *model.learner.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.text_features().sum().backward()
    return sum(seen.values())


def test_checkpointed_chunks_keep_activation_memory_independent_of_class_count(backbones):
    backbone = backbones["vlp-tiny-vit"]
    names = [f"class number {i}" for i in range(48)]

    def saved(n_cls: int, **kw) -> int:
        return _saved_bytes(PromptModel(backbone, CoOp(backbone, names[:n_cls], CoOpConfig(n_ctx=4)), **kw))

    full_24, full_48 = saved(24), saved(48)
    ck_24, ck_48 = saved(24, text_chunk=8), saved(48, text_chunk=8)
    assert full_48 > 1.8 * full_24  # activations grow with the class count…
    assert ck_48 < 0.25 * full_48  # …checkpointed chunks keep only their inputs and outputs
    # What remains grows only with the inputs/outputs (a few rows per class), far below the activations' growth.
    assert ck_48 - ck_24 < 0.05 * (full_48 - full_24)


def test_no_grad_chunking_matches_and_chunk_option_is_validated(backbones):
    from vlprompt.errors import ConfigError

    backbone = backbones["vlp-tiny-rn"]
    learner = CoOp(backbone, NAMES, CoOpConfig(n_ctx=4))
    with torch.no_grad():
        whole = PromptModel(backbone, learner).text_features()
        chunked = PromptModel(backbone, learner, text_chunk=2).text_features()
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="--text-chunk must be ≥ 1"):
        PromptModel(backbone, learner, text_chunk=0)
