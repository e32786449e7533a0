"""``python -m vlprompt`` runs the CLI."""

import sys

from vlprompt.cli.main import main

sys.exit(main())
