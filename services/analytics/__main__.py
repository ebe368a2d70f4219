"""``python -m services.analytics``."""

from services.analytics.service import main
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("analytics", main)
