"""Command-line interface: ``vlprompt <command>`` (see :func:`vlprompt.cli.main.main`)."""
