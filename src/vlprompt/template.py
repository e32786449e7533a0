"""Hand-crafted prompt templates below both :mod:`vlprompt.data` (split files, template files) and
:mod:`vlprompt.prompts` (KgCoOp's templates and ``template`` option), so that a prompt method never imports the data
layer: the rule for one template and the official per-benchmark table.

Re-exported as ``vlprompt.data.templates.check_template`` and ``vlprompt.data.templates.CUSTOM_TEMPLATES``.
"""

from __future__ import annotations

from vlprompt.errors import ConfigError

# One hand-crafted template per benchmark (``CUSTOM_TEMPLATES`` in the official ``ZeroshotCLIP``).
CUSTOM_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}



def check_template(template: object, where: str = "template") -> str:
    """Return ``template`` if it is a string that formats with one class name through one ``{}``.

    Raises:
        ConfigError: no ``{}``, or other replacement fields (``{0} {1}``, ``{name}``, a lone ``{``) that
            ``template.format(name)`` would fail on (literal braces are written ``{{`` and ``}}``).
    """
    if not isinstance(template, str) or "{}" not in template:
        raise ConfigError(f"{where} {template!r} has no '{{}}' placeholder for the class name, e.g. "
                          "'a photo of a {}.'")
    try:
        template.format("class")
    except (IndexError, KeyError, ValueError) as e:
        raise ConfigError(f"{where} {template!r} cannot be filled with one class name ({type(e).__name__}: {e}); use "
                          "exactly one '{}' and write literal braces as '{{' and '}}'") from e
    return template


__all__ = ["CUSTOM_TEMPLATES", "check_template"]
