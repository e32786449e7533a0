"""Weights tags build the model their weights were trained with (issue 12 §1): a table over full-size models.

For each (architecture, tag), seeded random weights (fp16 values, as OpenAI's releases) are written into an offline
Hugging Face hub cache exactly where open_clip looks for that tag (``timm/...`` repo, ``open_clip_model.safetensors``),
then ``vlprompt.backbones.create_backbone(arch, tag)`` is compared with open_clip's own model built with the tag's
settings (``open_clip.create_model(arch, pretrained=tag, force_quick_gelu=<the tag's quick_gelu>)``) and with the
other activation. Columns:

- ``activation``: what vlprompt built (read from the modules);
- ``ours vs open_clip text/image``: max over prompts/images of ‖ours − open_clip‖ / ‖open_clip‖;
- ``GELU vs QuickGELU text/image``: the same between the two activations (what building the wrong one costs);
- ``transform``: vlprompt's eval transform equals open_clip's (``image_transform_v2`` of the tag's config) on a
  300×200 image.

Usage (a few minutes on 2 CPU threads; about 3 GB of memory and 1.5 GB of temporary disk)::

    PYTHONPATH=src python benchmarks/pretrained_tags.py
    PYTHONPATH=src python benchmarks/pretrained_tags.py --tags RN50:openai     # one row

Run it with another vlprompt on ``PYTHONPATH`` to measure that version (e.g. the code before the fix).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

DEFAULT = ["RN50:openai", "RN101:openai", "ViT-B-32:openai", "ViT-B-16:openai", "ViT-B-32:laion2b_s34b_b79k"]
TEXTS = ["a photo of a dog.", "a photo of a golden retriever on the grass.", "itap of a cat", "a bad photo of a car."]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tags", nargs="*", default=DEFAULT, metavar="ARCH:TAG")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="vlprompt-hub-")
    # huggingface_hub reads these when first imported: set before anything imports it.
    os.environ.update(HF_HUB_CACHE=cache, HF_HUB_OFFLINE="1")
    import numpy as np
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from open_clip.transformer import QuickGELU
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backbones"))
    from hub_cache import put_in_hub_cache, state_dict_bytes

    import vlprompt
    from vlprompt.backbones import create_backbone
    from vlprompt.data.transforms import build_transform

    torch.set_num_threads(a.threads)

    def rel(x, y) -> float:
        return float(((x - y).norm(dim=-1) / y.norm(dim=-1)).max())

    pil = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    print(f"vlprompt from {Path(vlprompt.__file__).parent}; open_clip {open_clip.__version__}; torch {torch.__version__}")
    head = ("arch:tag", "tag quick_gelu", "activation", "ours vs open_clip text", "image",
            "GELU vs QuickGELU text", "image", "transform")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for item in a.tags:
        arch, tag = item.split(":")
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        qg = bool(cfg.get("quick_gelu", False))
        torch.manual_seed(0)
        state = {k: v.half() if v.is_floating_point() else v for k, v in open_clip.create_model(arch).state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            put_in_hub_cache(Path(cache), cfg["hf_hub"].rstrip("/"), "open_clip_model.safetensors",
                             state_dict_bytes(state, "x.safetensors", Path(tmp)))
        del state
        size = open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
        torch.manual_seed(1)
        images = torch.randn(2, 3, size, size)
        ids = open_clip.get_tokenizer(arch)(TEXTS)
        with torch.no_grad():
            bb = create_backbone(arch, tag)
            act = "quick_gelu" if any(isinstance(m, QuickGELU) for m in bb.model.modules()) else "gelu"
            ours = bb.encode_text(TEXTS), bb.encode_image(images)
            ours_tf = build_transform(bb.preprocess, train=False)(pil)
            del bb
            ref = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=qg).eval()
            theirs = ref.encode_text(ids), ref.encode_image(images)
            theirs_tf = image_transform_v2(PreprocessCfg(**ref.visual.preprocess_cfg), is_train=False)(pil)
            del ref
            kw = {"force_quick_gelu": True} if not qg else {"quick_gelu": False}
            other = open_clip.create_model(arch, pretrained=tag, **kw).eval()
            flip = other.encode_text(ids), other.encode_image(images)
            del other
        row = (item, str(qg), act, f"{rel(ours[0], theirs[0]):.2e}", f"{rel(ours[1], theirs[1]):.2e}",
               f"{rel(flip[0], theirs[0]):.2e}", f"{rel(flip[1], theirs[1]):.2e}",
               "equal" if torch.equal(ours_tf, theirs_tf) else f"differs ({(ours_tf - theirs_tf).abs().max():.3f})")
        print("| " + " | ".join(row) + " |", flush=True)
        for blob in Path(cache).rglob("blobs/*"):
            blob.unlink()  # keep disk use to one model at a time
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
