"""Micro-CLIP: a tiny CLIP pretrained on a procedural image–caption world, shipped with vlprompt (DESIGN.md §6).

Submodules (import them directly; this package import stays light so world-rendering worker processes start fast):

- ``world``: the deterministic image–caption generator and its vocabulary.
- ``model``: a compatibility import of :mod:`vlprompt.backbones.microclip` (``MICROCLIP_CONFIG``,
  ``build_microclip()`` and the compact checkpoint format): the model is library code, this package is the
  application around it (world, pretraining, tasks, demo).
- ``pretrain``: ``python -m vlprompt.microclip.pretrain``, the pretraining recipe.
- ``acceptance``: ``python -m vlprompt.microclip.acceptance``, zero-shot checks with thresholds.
- ``tasks``: micro benchmark tasks written as image folders + split files.
- ``world2`` / ``render2`` / ``tasks2`` / ``acceptance2``: world v2, its 11-task suite mirroring CoOp's datasets
  and micro-CLIP v2's zero-shot table (issue 14; ``MODEL_CARD_V2.md``).
- ``demo`` / ``demo_suite`` / ``demo_report`` / ``demo_claims`` / ``demo_base2new``: ``vlprompt demo`` (``--suite v1|v2``).
"""
