"""``python -m services.gateway``: the media gateway service.

Runs on uvloop (:func:`shared.runtime.install_uvloop`): the gateway's work is socket I/O at 50 frames per
second per call, where uvloop's lower per-operation cost matters (bench/gateway.py).
"""

from services.gateway.app import main
from shared.runtime import install_uvloop, run_service

if __name__ == "__main__":
    install_uvloop()
    run_service("gateway", main)
