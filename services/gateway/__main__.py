"""``python -m services.gateway``: the media gateway service.

Runs on uvloop (shipped with ``uvicorn[standard]``) when it is importable: the gateway's work is socket I/O
at 50 frames per second per call, where uvloop's lower per-operation cost matters (bench/gateway.py).
"""

from services.gateway.app import main
from shared.runtime import run_service

if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        pass
    else:
        uvloop.install()
    run_service("gateway", main)
