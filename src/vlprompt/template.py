"""The rule for one hand-crafted prompt template, below both :mod:`vlprompt.data` (split files, template files)
and :mod:`vlprompt.prompts` (KgCoOp's ``template`` option), so that a prompt method never imports the data layer.

Re-exported as ``vlprompt.data.templates.check_template``.
"""

from __future__ import annotations

from vlprompt.errors import ConfigError


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


__all__ = ["check_template"]
