"""``python -m services.recorder`` — the recorder service."""

from services.recorder.service import main
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("recorder", main)
