"""Moved to :mod:`vlprompt.runs.tracking` (issue 13: the application modules live under ``runs/``).

This path stays for users and scripts that import it: it *is* that module (the same object in ``sys.modules``),
so every name, private ones included, and every patch of one, is shared.
"""

import sys

from vlprompt.runs import tracking

sys.modules[__name__] = tracking
