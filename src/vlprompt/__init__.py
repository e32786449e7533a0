"""vlprompt."""
