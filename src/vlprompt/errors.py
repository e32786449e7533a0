"""The project's own exception types.

Every error a user can cause (a wrong flag, a missing file, a bad checkpoint) is raised as one of these, with a
message that names the argument, file or value, says what was expected, and how to fix it. The CLI turns them
into one readable line (no traceback unless ``--debug``).
"""

from __future__ import annotations


class VLPromptError(Exception):
    """Base class for every error vlprompt raises on purpose."""


class ConfigError(VLPromptError, ValueError):
    """A configuration value or combination of values is invalid."""


class DataError(VLPromptError, ValueError):
    """A dataset, split file, CSV or image cannot be read as expected."""


class BackboneError(VLPromptError, ValueError):
    """A backbone cannot be built, loaded, or used for prompt learning."""


class WeightsNotFoundError(BackboneError, FileNotFoundError):
    """Pretrained weights are not available locally (offline, not cached)."""


class ArtifactError(VLPromptError, ValueError):
    """A saved artifact (run folder, learned prompt, cache entry) is missing, corrupt or incompatible."""
