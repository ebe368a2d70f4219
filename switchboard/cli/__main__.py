"""``python -m switchboard.cli`` = the ``switchboard`` command."""

from switchboard.cli import app

app()
