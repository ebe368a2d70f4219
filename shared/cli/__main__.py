"""``python -m shared.cli`` = the ``switchboard`` command."""

from shared.cli import app

app()
