"""The ``switchboard`` command line (Typer + Rich); each command group lives in its own module.

Commands (design.md, "The switchboard CLI"): ``up``, ``status``, ``demo``, ``call``, ``calls``, ``replay``,
``tail``, ``trace``, ``audit verify``, ``kpis``.
"""

from __future__ import annotations

import typer

from shared.cli import archive as _archive
from shared.cli import call as _call
from shared.cli import demo as _demo
from shared.cli import kpis as _kpis
from shared.cli import up as _up

app = typer.Typer(name="switchboard", help="Event-sourced voice agents on NATS.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False)

_up.register(app)
_call.register(app)
_archive.register(app)
_demo.register(app)
_kpis.register(app)

__all__ = ["app"]
