"""The deep-prompt hook (``vlprompt.backbones.deep_prompts``): tower sizes read from the model, the plain forward at
zero deep layers, the exact text accelerations (EOS truncation, length buckets, shared prefix) with deep text
prompts, a batched image forward, transformers' text tower, and the refusals.

Equality with the official IVLP / MaPLe blocks is in ``tests/fidelity/test_deep_prompt_figures.py``.
"""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones import create_backbone
from vlprompt.backbones.deep_prompts import DeepPrompts, check_prompts, replace_vision, run_transformer
from vlprompt.errors import BackboneError

NAMES = ["dog", "golden retriever", "a sea lion on a rock", "x", "hot air balloon over the hills at dawn"]
N = 2  # tokens per layer


def prompts(bb, names=NAMES, n=N):
    """``ids`` ``[C, L]`` of ``"X X <name>."`` and their embeddings with a random context at positions 1..n."""
    ids = bb.tokenize([" ".join(["X"] * n) + f" {c}." for c in names])
    emb = bb.embed_tokens(ids).clone()
    ctx = 0.02 * torch.randn(n, bb.token_dim, generator=torch.Generator().manual_seed(3))
    emb[:, 1 : 1 + n] = ctx
    return emb, ids


def deep(layers: int, width: int, seed: int = 5, n: int = N) -> torch.Tensor:
    return 0.5 * torch.randn(layers, n, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone("vlp-tiny-vit", "random")


def test_tower_sizes_are_read_from_the_model(vit):
    """vlp-tiny-vit (tests/conftest.py): text 2 blocks of width 64, image 2 blocks of width 64 with 1 head."""
    assert (vit.text_layers, vit.text_width) == (2, 64)
    assert (vit.vision_layers, vit.vision_width, vit.vision_heads) == (2, 64, 1)
    assert vit.vision_prompt_unsupported is None
    p = DeepPrompts(text=deep(1, 64), vision=deep(2, 64))
    assert (p.text_depth, p.vision_depth) == (2, 2)
    assert DeepPrompts().text_depth == DeepPrompts().vision_depth == 0


@pytest.mark.parametrize("seq_first", [False, True])
def test_zero_deep_layers_is_the_plain_forward_bit_for_bit(vit, seq_first):
    """Depth 1 (no deeper text tokens) runs the same blocks as ``transformer(x)``: bit-equal, either layout; the
    image transformer loop without tokens equals the tower's own transformer bit for bit."""
    bb = create_backbone("vlp-tiny-vit", "random")
    if seq_first:
        for mod in bb.model.modules():
            if hasattr(mod, "resblocks"):
                mod.batch_first = False
                for blk in mod.resblocks:
                    blk.attn.batch_first = False
    emb, ids = prompts(bb)
    plain = bb.encode_text_embeddings(emb, ids)
    hooked = bb.encode_text_embeddings(emb, ids, deep_text=torch.zeros(0, N, bb.text_width))
    assert torch.equal(plain, hooked)
    x = torch.randn(3, 5, bb.vision_width)
    visual = bb.model.visual.transformer
    assert torch.equal(run_transformer(visual, x, None, None, replace_vision), visual(x))


def test_deep_text_tokens_change_the_features_and_only_through_positions_1_to_n(vit):
    """The tokens act (features move), and a prompt whose placeholder positions hold other words gives the same
    features: positions 1..n are replaced at every layer from block 1 on, and at layer 0 by the caller's context."""
    emb, ids = prompts(vit)
    d = deep(1, vit.text_width)
    shallow = vit.encode_text_embeddings(emb, ids)
    prompted = vit.encode_text_embeddings(emb, ids, deep_text=d)
    assert (shallow - prompted).abs().max() > 1e-2
    ids2 = vit.tokenize([f"a b {c}." for c in NAMES])  # same lengths as "X X <name>." (single-token words)
    assert torch.equal(ids2.argmax(-1), ids.argmax(-1))
    emb2 = vit.embed_tokens(ids2).clone()
    emb2[:, 1 : 1 + N] = emb[:, 1 : 1 + N]
    torch.testing.assert_close(vit.encode_text_embeddings(emb2, ids2, deep_text=d), prompted, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["vlp-tiny-vit", "vlp-tiny-customtext"])
def test_text_accelerations_stay_exact_with_deep_prompts(arch):
    """EOS truncation, length buckets (each group of classes cut after its own EOS, encoded alone) and the shared
    prefix (SOS + context computed once per layer) give the full 77-token features and the same gradients."""
    torch.manual_seed(0)
    bb = create_backbone(arch, "random")
    emb, ids = prompts(bb)
    d0 = deep(bb.text_layers - 1, bb.text_width)
    w = torch.randn(len(NAMES), bb.embed_dim, generator=torch.Generator().manual_seed(9))

    def run(fn):
        d = d0.clone().requires_grad_(True)
        out = fn(d)
        (out * w).sum().backward()
        return out.detach(), d.grad

    full, g_full = run(lambda d: bb.encode_text_embeddings(emb, ids, truncate=False, deep_text=d))
    cut, g_cut = run(lambda d: bb.encode_text_embeddings(emb, ids, truncate=True, deep_text=d))
    short, long_ = [0, 1, 3], [2, 4]  # a bucket of short prompts and one of long ones, each truncated alone

    def buckets(d):
        out = torch.empty(len(NAMES), bb.embed_dim)
        for idx in (short, long_):
            out[idx] = bb.encode_text_embeddings(emb[idx], ids[idx], truncate=True, deep_text=d)
        return out

    bucketed, g_bucket = run(buckets)
    assert bb.shared_prefix_unsupported is None

    def shared(d):
        kv = bb.encode_text_prefix(emb[0, : 1 + N], deep_text=d)
        return bb.encode_text_suffix(kv, emb[:, 1 + N :], ids)

    pref, g_pref = run(shared)
    for out, g in ((cut, g_cut), (bucketed, g_bucket), (pref, g_pref)):
        torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g, g_full, atol=1e-5, rtol=1e-4)
    assert g_full.abs().max() > 1e-3


def test_image_forward_is_batched_and_prompted(vit):
    """One call per image block for a whole batch (no per-image loop), ``[B, E]`` out, and the features of an
    image do not depend on the other images in the batch."""
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    v = deep(vit.vision_layers, vit.vision_width)
    calls = []
    hooks = [b.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
             for b in vit.model.visual.transformer.resblocks]
    try:
        out = vit.encode_image(images, vision_prompts=v)
    finally:
        for h in hooks:
            h.remove()
    grid = (32 // 16) ** 2
    assert calls == [torch.Size([4, 1 + grid + N, vit.vision_width])] * vit.vision_layers
    assert out.shape == (4, vit.embed_dim)
    assert (out - vit.encode_image(images)).abs().max() > 1e-2
    torch.testing.assert_close(vit.encode_image(images[2:3], vision_prompts=v), out[2:3], atol=1e-5, rtol=1e-5)


def test_resnet_image_tower_is_refused_for_vision_prompts():
    torch.manual_seed(0)
    bb = create_backbone("vlp-tiny-rn", "random")
    assert bb.vision_layers is None and bb.vision_width is None and bb.vision_heads is None
    assert "ModifiedResNet" in bb.vision_prompt_unsupported
    with pytest.raises(BackboneError, match=r"'vlp-tiny-rn' cannot take vision prompts: its image tower is "
                                            r"ModifiedResNet, not a ViT.*no token sequence.*ViT-B-16"):
        bb.encode_image(torch.zeros(1, 3, 64, 64), vision_prompts=torch.zeros(1, 2, 16))
    with pytest.raises(BackboneError, match=r"'vlp-tiny-rn' cannot take vision prompts: .*ModifiedResNet"):
        check_prompts(bb, DeepPrompts(vision=torch.zeros(1, 2, 16)))
    emb, ids = prompts(bb)  # its text tower still takes deep text prompts
    assert bb.encode_text_embeddings(emb, ids, deep_text=deep(1, 64)).shape == (len(NAMES), bb.embed_dim)


def test_refusals(vit):
    emb, ids = prompts(vit)
    img = torch.zeros(1, 3, 32, 32)
    with pytest.raises(BackboneError, match=r"2 text prompt layers given.*2 blocks, so at most 1 fit"):
        vit.encode_text_embeddings(emb, ids, deep_text=deep(2, 64))
    with pytest.raises(BackboneError, match=r"text prompt tokens have width 32.*width 64"):
        vit.encode_text_embeddings(emb, ids, deep_text=deep(1, 32))
    with pytest.raises(BackboneError, match=r"3 vision prompt layers given.*2 blocks, so at most 2 fit"):
        vit.encode_image(img, vision_prompts=deep(3, 64))
    with pytest.raises(BackboneError, match=r"vision prompt tokens have width 128.*width 64"):
        vit.encode_image(img, vision_prompts=deep(1, 128))
    with pytest.raises(BackboneError, match=r"0 vision prompt layers"):
        vit.encode_image(img, vision_prompts=torch.zeros(0, 2, 64))
    with pytest.raises(BackboneError, match=r"expected \[depth, n_tokens, 64\]"):
        vit.encode_image(img, vision_prompts=torch.zeros(2, 64))
    short_ids = vit.tokenize(["dog"])  # EOS at position 2, inside positions 1..4
    with pytest.raises(BackboneError, match=r"prompt 0 has its EOS at position 2, inside the deep text prompt "
                                            r"positions 1..4.*4 placeholder tokens"):
        vit.encode_text_embeddings(vit.embed_tokens(short_ids), short_ids, deep_text=deep(1, 64, n=4))
    with pytest.raises(BackboneError, match=r"positions 1..2, beyond the shared prefix of 2 positions"):
        vit.encode_text_prefix(emb[0, :2], deep_text=deep(1, 64))
    # The same checks before any forward (methods call check_prompts when they build their tokens).
    check_prompts(vit, DeepPrompts(text=deep(1, 64), vision=deep(2, 64)))
    with pytest.raises(BackboneError, match=r"3 vision prompt layers given"):
        check_prompts(vit, DeepPrompts(text=deep(1, 64), vision=deep(3, 64)))
    with pytest.raises(BackboneError, match=r"text prompt tokens have width 65"):
        check_prompts(vit, DeepPrompts(text=deep(1, 65)))


def _hooked(layers, edit):
    """Forward pre-hooks on transformers' own ``layers``: ``edit(j, hidden_states)`` before layer ``j``."""
    def pre_hook(j):
        def hook(module, args, kwargs):
            h = edit(j, args[0] if args else kwargs["hidden_states"])
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})
        return hook

    return [layer.register_forward_pre_hook(pre_hook(j), with_kwargs=True) for j, layer in enumerate(layers)]


def test_transformers_towers_take_deep_prompts_as_their_own_layers_would():
    """transformers' CLIP: deep text and vision prompts through the explicit layers equal transformers' own
    encoders (``get_image_features`` for the image) with the tokens placed by forward pre-hooks on their layers."""
    from test_hf_adapter import tiny_clip

    from vlprompt.backbones.hf import HFClipBackbone

    bb = HFClipBackbone(tiny_clip(), "hf:tiny")
    assert (bb.text_layers, bb.text_width, bb.vision_layers, bb.vision_width, bb.vision_heads) == (2, 64, 2, 32, 2)
    emb, ids = prompts(bb)
    d = deep(bb.text_layers - 1, bb.text_width)
    ours = bb.encode_text_embeddings(emb, ids, deep_text=d)

    def text_edit(j, h):
        if j == 0:
            return h
        h = h.clone()
        h[:, 1 : 1 + N] = d[j - 1]
        return h

    handles = _hooked(bb.model.text_model.encoder.layers, text_edit)
    try:
        theirs = bb.encode_text_embeddings(emb, ids)  # transformers' own encoder forward
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (ours - bb.encode_text_embeddings(emb, ids)).abs().max() > 1e-2
    kv = bb.encode_text_prefix(emb[0, : 1 + N], deep_text=d)
    torch.testing.assert_close(bb.encode_text_suffix(kv, emb[:, 1 + N :], ids), ours, atol=1e-5, rtol=1e-5)

    images = _check_hf_vision_prompts(bb, N)
    with pytest.raises(BackboneError, match=r"3 vision prompt layers given.*2 blocks"):
        bb.encode_image(images, vision_prompts=deep(3, 32))


def _check_hf_vision_prompts(bb, n: int) -> torch.Tensor:
    """``n`` vision tokens per layer through the explicit layers equal transformers' ``get_image_features`` with
    the tokens placed by pre-hooks on its own layers; returns the images ``[3, 3, 32, 32]``."""
    from vlprompt.backbones.hf import features_tensor

    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    v = deep(bb.vision_layers, bb.vision_width, n=n)
    ours = bb.encode_image(images, vision_prompts=v)
    vm = bb.model.vision_model

    def vision_edit(j, h):
        tok = v[j].expand(h.shape[0], -1, -1)
        if j == 0:  # appended after pre_layrnorm ran on the image tokens: normalise the new ones the same way
            return torch.cat([h, vm.pre_layrnorm(tok)], dim=1)
        return torch.cat([h[:, :-n], tok], dim=1)

    handles = _hooked(vm.encoder.layers, vision_edit)
    try:
        theirs = features_tensor(bb.model.get_image_features(pixel_values=images))
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (ours - bb.encode_image(images)).abs().max() > 1e-2
    return images


def test_more_vision_tokens_than_image_tokens():
    """VPT-deep's 8 tokens on a tower of 1 + 4 image tokens (transformers' tiny CLIP here; open_clip's path is
    checked against the official VPT trainer with 20 tokens on 1 + 16, ``tests/fidelity/test_ivlp_vpt_figures.py``
    case ``vpt_many_tokens_as_is``). Catches: the first layer's tokens broadcast to the shape of the first ``n_v``
    image tokens, which do not exist."""
    from test_hf_adapter import tiny_clip

    from vlprompt.backbones.hf import HFClipBackbone

    _check_hf_vision_prompts(HFClipBackbone(tiny_clip(), "hf:tiny"), 8)


#: open_clip ViT variants: micro-CLIP v2's architecture (issue 14: ViT 128 wide, 4 layers, head width 32; text 4
#: layers), and a tower with LayerScale, patch-mean pooling and the final LayerNorm after pooling.
VIT_VARIANTS = {
    "microclip-v2": {"embed_dim": 128, "vision_cfg": {"layers": 4, "width": 128, "head_width": 32, "patch_size": 8,
                                                      "image_size": 64},
                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4}},
    "avgpool-layerscale": {"embed_dim": 32, "vision_cfg": {"layers": 3, "width": 64, "patch_size": 16, "image_size": 32,
                                                           "pool_type": "avg", "final_ln_after_pool": True,
                                                           "ls_init_value": 0.5},
                           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                                        "layers": 3, "ls_init_value": 0.5}},
}


def _hook_open_clip_blocks(blocks, batch_first, edit):
    """Pre-hooks ``edit(j, x)`` on open_clip's own blocks (``x`` batch-first whatever the layout), and a hook on
    the last block that drops the vision tokens again (``edit(-1, x)``)."""
    def wrap(j):
        def fn(x):
            x = x if batch_first else x.transpose(0, 1)
            x = edit(j, x)
            return x if batch_first else x.transpose(0, 1)
        return fn

    handles = [b.register_forward_pre_hook(lambda m, a, f=wrap(j): (f(a[0]), *a[1:])) for j, b in enumerate(blocks)]
    handles.append(blocks[-1].register_forward_hook(lambda m, a, out, f=wrap(-1): f(out)))
    return handles


@pytest.mark.parametrize("variant", sorted(VIT_VARIANTS))
@pytest.mark.parametrize("seq_first", [False, True])
def test_open_clip_towers_with_prompts_equal_their_own_forward_with_hooked_blocks(variant, seq_first):
    """On each variant, the hook equals open_clip's own ``VisionTransformer.forward`` / text ``Transformer.forward``
    with the tokens placed by hooks on its blocks (the pooling, LayerScale and final LayerNorm are the tower's)."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from vlprompt.backbones.open_clip import OpenClipBackbone

    cfg = VIT_VARIANTS[variant]
    torch.manual_seed(1)
    model = CLIP(**cfg).eval()
    bb = OpenClipBackbone(model, SimpleTokenizer(), name=variant)
    if seq_first:
        for mod in model.modules():
            if hasattr(mod, "resblocks"):
                mod.batch_first = False
                for blk in mod.resblocks:
                    blk.attn.batch_first = False
    vc = cfg["vision_cfg"]
    assert (bb.vision_layers, bb.vision_width) == (vc["layers"], vc["width"])
    assert bb.vision_heads == vc["width"] // vc.get("head_width", 64)
    size = vc["image_size"]
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(4))
    v = deep(bb.vision_layers, bb.vision_width)
    ours = bb.encode_image(images, vision_prompts=v)

    def vision_edit(j, x):
        if j == -1:
            return x[:, :-N]
        tok = v[j].expand(x.shape[0], -1, -1)
        return torch.cat([x, model.visual.ln_pre(tok)] if j == 0 else [x[:, :-N], tok], dim=1)

    handles = _hook_open_clip_blocks(model.visual.transformer.resblocks, not seq_first, vision_edit)
    try:
        theirs = model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert (ours - model.encode_image(images)).abs().max() > 1e-2

    emb, ids = prompts(bb)
    d = deep(bb.text_layers - 1, bb.text_width)
    ours = bb.encode_text_embeddings(emb, ids, deep_text=d)

    def text_edit(j, x):
        if j <= 0:
            return x
        return torch.cat([x[:, :1], d[j - 1].expand(x.shape[0], -1, -1), x[:, 1 + N :]], dim=1)

    handles = _hook_open_clip_blocks(model.transformer.resblocks, not seq_first, text_edit)
    try:
        theirs = bb.encode_text_embeddings(emb, ids)  # open_clip's own Transformer.forward
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_fp16_backbone_takes_deep_prompts_in_its_dtype():
    """The official default precision is fp16: fp32 tokens are cast to the tower's dtype, the outputs are fp16 and
    within fp16 resolution of the fp32 backbone's (text plain and shared-prefix paths, image)."""
    torch.manual_seed(0)
    ref = create_backbone("vlp-tiny-vit", "random")
    torch.manual_seed(0)
    bb = create_backbone("vlp-tiny-vit", "random", precision="fp16")
    assert bb.dtype == torch.float16
    emb, ids = prompts(ref)
    d, v = deep(1, 64), deep(2, 64)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    want_t = ref.encode_text_embeddings(emb, ids, deep_text=d)
    want_i = ref.encode_image(images, vision_prompts=v)
    text = bb.encode_text_embeddings(emb, ids, deep_text=d)
    kv = bb.encode_text_prefix(emb[0, : 1 + N], deep_text=d)
    shared = bb.encode_text_suffix(kv, emb[:, 1 + N :], ids)
    image = bb.encode_image(images, vision_prompts=v)
    for got, want in ((text, want_t), (shared, want_t), (image, want_i)):
        assert got.dtype == torch.float16
        torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
