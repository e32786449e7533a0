"""The deep-prompt hook against the OFFICIAL IVLP / MaPLe blocks (DESIGN.md §9).

``figures/official_deep_prompts.json`` holds what ``muzairkhattak/multimodal-prompt-learning``'s own
``clip/model.py`` (``ResidualAttentionBlock_IVLP``, ``ResidualAttentionBlock_MaPLe``, ``VisionTransformer``,
``VisionTransformer_MaPLe``) and its ``TextEncoder`` classes compute on a small random CLIP
(``deep_prompt_inputs.py``): text and image features and logits at the given tokens, the gradients of every token
after the cross-entropy backward, and the features after one SGD step (``figures/README.md`` says how it ran).
vlprompt reaches the same numbers through ``OpenClipBackbone.encode_text_embeddings(..., deep_text=)`` /
``encode_text_prefix(..., deep_text=)`` and ``encode_image(..., vision_prompts=)`` on open_clip's own model, in the
OpenAI ``CLIP`` and ``CustomTextCLIP`` layouts, batch-first and sequence-first.

The official code casts the replacing tokens with ``.half()`` after broadcasting them, even in fp32 (every vision
token and the deeper text tokens). Two sets of figures: ``*_as_is`` (the official file unchanged), reproduced with
``prompt_cast=torch.float16``; ``*_no_half`` (those six casts made ``.type(x.dtype)``), reproduced with no cast:
everything within 1e-5, every path and layout. Against the as-is figures the values are within 1e-5 too, but the
gradients only at fp16 resolution (checked at 2e-3): rounding is discontinuous, so a 1e-7 difference in an fp32
gradient row can move its fp16 rounding by one ulp, and the shared-prefix path rounds the deep text gradient once
for all classes instead of per class.
"""

from __future__ import annotations

import json
from pathlib import Path

import deep_prompt_inputs as W
import pytest
import torch
import torch.nn.functional as F
from deep_prompt_inputs import close

from vlprompt.backbones.open_clip import OpenClipBackbone

FIGS = json.loads((Path(__file__).parent / "figures" / "official_deep_prompts.json").read_text())
TOL = 1e-5  # fp32: features are O(1); logits (scale 100) and gradients are compared relative to their size
FP16_TOL = 2e-3  # two fp16 ulps: gradients through the official .half() casts


@pytest.fixture(scope="module")
def weights():
    from open_clip.tokenizer import SimpleTokenizer

    sd, inputs = W.state_dict(), W.fixed_inputs()
    assert W.tensors_sha256(sd) == FIGS["weights_sha256"], (
        "the generated deep-prompt fidelity weights changed (torch/open_clip initialise differently?): regenerate "
        "tests/fidelity/figures/official_deep_prompts.json as tests/fidelity/figures/README.md describes."
    )
    assert W.tensors_sha256(inputs) == FIGS["inputs_sha256"], "the generated deep-prompt inputs changed: regenerate."
    return sd, inputs, SimpleTokenizer()


def backbone_of(weights, layout: str) -> OpenClipBackbone:
    sd, _, tok = weights
    model = W.custom_text_model(sd) if layout.startswith("custom") else W.open_clip_model(sd)
    if layout.endswith("seqfirst"):
        W.sequence_first(model)
    return OpenClipBackbone(model, tok, name=f"fidelity-deep-{layout}")


def forward(bb: OpenClipBackbone, inputs, ctx, deep_text, vision, path: str, cast: torch.dtype | None):
    """Text ``[C, E]``, image ``[B, E]`` features and logits ``[B, C]`` through the hook."""
    n = W.N_CTX
    ids = bb.tokenize([" ".join(["X"] * n) + " " + c.replace("_", " ") + "." for c in W.CLASSNAMES])
    assert ids.tolist() == FIGS["ids"]
    emb = bb.embed_tokens(ids)  # (C, L, D)
    if path == "shared_prefix":
        prefix = torch.cat([emb[0, :1], ctx])  # (1 + n, D): SOS + context, the same for every class
        kv = bb.encode_text_prefix(prefix, deep_text=deep_text, prompt_cast=cast)
        text = bb.encode_text_suffix(kv, emb[:, 1 + n :], ids)
    else:
        embeds = torch.cat([emb[:, :1], ctx.expand(len(ids), -1, -1), emb[:, 1 + n :]], dim=1)
        text = bb.encode_text_embeddings(embeds, ids, truncate=path == "truncated", deep_text=deep_text,
                                         prompt_cast=cast)
    image = bb.encode_image(inputs["images"], vision_prompts=vision, prompt_cast=cast)
    logits = bb.logit_scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    return text, image, logits


@pytest.mark.parametrize("case", ["ivlp_as_is", "maple_as_is", "ivlp_no_half", "maple_no_half"])
@pytest.mark.parametrize(
    "layout,path",
    [("clip", "truncated"), ("clip", "full"), ("clip", "shared_prefix"), ("clip-seqfirst", "truncated"),
     ("custom", "truncated"), ("custom-seqfirst", "shared_prefix")],
)
def test_hook_equals_official_blocks_at_init_and_after_one_sgd_step(weights, case, layout, path):
    """Features, logits, every token's gradient and the post-step features equal the official modules' within
    1e-5 (a token at the wrong position, a missing ln_pre on the first vision tokens, an EOS shift or a wrong
    layer count moves them by O(0.1))."""
    _, inputs, _ = weights
    fig = FIGS["cases"][case]
    cast = torch.float16 if case.endswith("as_is") else None
    # Official fp16 rounding: a 1e-7 fp32 difference can flip a rounding by one fp16 ulp (≈ 5e-4 relative), and the
    # shared prefix rounds the class-summed gradient once (see the module docstring): gradients at fp16 resolution.
    grad_tol = FP16_TOL if cast is not None else TOL
    bb = backbone_of(weights, layout)
    ctx = inputs["ctx"].clone().requires_grad_(True)
    deep_text = inputs["deep_text"].clone().requires_grad_(True)
    vision = inputs["vision"].clone().requires_grad_(True)
    text, image, logits = forward(bb, inputs, ctx, deep_text, vision, path, cast)
    close(text, fig["text"], "text features")
    close(image, fig["image"], "image features")
    close(logits, fig["logits"], "logits")
    loss = F.cross_entropy(logits, inputs["labels"])
    assert abs(loss.item() - fig["loss"]) <= TOL * fig["loss"]
    loss.backward()
    close(ctx.grad, fig["grads"]["ctx"], "ctx gradient", grad_tol)
    for j in range(W.DEPTH - 1):
        close(deep_text.grad[j], fig["grads"][f"deep_text.{j}"], f"deep text gradient, layer {j + 1}", grad_tol)
    for j in range(W.DEPTH):
        close(vision.grad[j], fig["grads"][f"vision.{j}"], f"vision gradient, layer {j}", grad_tol)
    with torch.no_grad():
        for p in (ctx, deep_text, vision):
            p -= FIGS["lr"] * p.grad
        text, image, logits = forward(bb, inputs, ctx, deep_text, vision, path, cast)
    close(text, fig["text_after"], "text features after one step", grad_tol)
    close(image, fig["image_after"], "image features after one step", grad_tol)
    close(logits, fig["logits_after"], "logits after one step", grad_tol)


def test_the_official_figures_are_not_the_plain_model(weights):
    """Guard: the prompted official features differ from the unprompted tower's by far more than the tolerance
    (so the comparison above could fail), and IVLP's and MaPLe's blocks agree (same token semantics)."""
    _, inputs, _ = weights
    bb = backbone_of(weights, "clip")
    cases = FIGS["cases"]
    plain = bb.encode_image(inputs["images"])
    assert (plain - torch.tensor(cases["ivlp_as_is"]["image"])).abs().max() > 0.1
    for v in ("as_is", "no_half"):
        for key in ("text", "image", "logits_after"):
            assert torch.allclose(torch.tensor(cases[f"ivlp_{v}"][key]), torch.tensor(cases[f"maple_{v}"][key]))
    # The official fp16 rounding is visible in fp32 (so the two variants test different things).
    as_is, no_half = (torch.tensor(cases[f"ivlp_{v}"]["grads"]["deep_text.0"]) for v in ("as_is", "no_half"))
    assert (as_is - no_half).abs().max() > 1e-4
