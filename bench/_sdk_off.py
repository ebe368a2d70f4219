"""Run a benchmark's own child mode with the OpenTelemetry SDK switched off, for an A/B in the same run.

``OTEL_SDK_DISABLED=true`` makes the SDK hand out no-op tracers and meters
(https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/#general-sdk-configuration):
the same Switchboard code runs, without spans or metrics, so what the SDK costs in place shows beside what the
code itself costs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

__all__ = ["sdk_off_figures"]


async def sdk_off_figures(script: str, *args: str) -> dict[str, float]:
    """Run ``python script --sdk-off *args`` with ``OTEL_SDK_DISABLED=true``; the JSON object it prints last.

    Raises:
        RuntimeError: the child exited with an error.
        ValueError: its last line is not JSON.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable, script, "--sdk-off", *args, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"})
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the OTEL_SDK_DISABLED child of {script} failed with exit code {child.returncode}")
    figures: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return figures
