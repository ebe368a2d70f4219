"""The ``switchboard`` command line (Typer + Rich); each command group lives in its own module.

Commands (README.md; docs/recorder.md, "CLI"): ``up``, ``status``, ``demo``, ``call``, ``dial``, ``calls``, ``replay``,
``tail``, ``trace``, ``audit verify``, ``erase``, ``kpis``.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from switchboard.cli import archive as _archive
from switchboard.cli import call as _call
from switchboard.cli import demo as _demo
from switchboard.cli import dial as _dial
from switchboard.cli import erase as _erase
from switchboard.cli import kpis as _kpis
from switchboard.cli import up as _up

app = typer.Typer(name="switchboard", help="Event-sourced voice agents on NATS.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False)



@app.callback()
def _operator_credentials() -> None:
    """CLI commands are operator tools: without ``SWITCHBOARD_NATS_CREDS``/``SWITCHBOARD_NATS_NKEY_SEED`` they
    connect with the operator seed ``switchboard up`` generated in the data dir (``<data dir>/auth/operator.nk``).
    """
    if os.environ.get("SWITCHBOARD_NATS_CREDS") or os.environ.get("SWITCHBOARD_NATS_NKEY_SEED"):
        return
    seed = Path(os.environ.get("SWITCHBOARD_DATA_DIR") or ".switchboard") / "auth" / "operator.nk"
    if seed.is_file():
        os.environ["SWITCHBOARD_NATS_NKEY_SEED"] = str(seed.resolve())


_up.register(app)
_call.register(app)
_dial.register(app)
_archive.register(app)
_demo.register(app)
_erase.register(app)
_kpis.register(app)

__all__ = ["app"]
