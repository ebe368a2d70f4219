"""Agent versions and A/B rollouts: which version of an agent a call gets.

An agent spec carries ``version`` (``services.session.agent.AgentSpec``). ``agents/rollout.yaml`` (beside the
agent specs, i.e. in the directory of ``SWITCHBOARD_AGENT``) splits an agent's traffic between versions::

    agents:
      receptionist:
        - {version: "1", spec: receptionist.yaml, weight: 50}
        - {version: "2", spec: receptionist-v2.yaml, weight: 50}

The choice is sticky per caller: ``bucket = int(sha256(agent + "\\0" + caller)[:8 bytes]) / 2**64 × total
weight`` selects the version whose cumulative weight range holds it, so the same caller number always gets the
same version while the weights stay the same. A call without a caller number is keyed by its call id (a random
draw). An agent without a rollout entry gets the ``version`` of ``<agents dir>/<agent>.yaml`` (default "1").

The gateway chooses (:func:`choose`) when a call starts and publishes the version in ``call.<id>.started`` as
``agent_version``; the session loads that version's spec (:func:`spec_path`). Both read the same file.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ROLLOUT_FILE", "Choice", "Rollout", "RolloutError", "VersionWeight", "bucket", "choose",
           "load_rollout", "spec_path"]

log = logging.getLogger(__name__)

ROLLOUT_FILE = "rollout.yaml"
DEFAULT_VERSION = "1"


class RolloutError(ValueError):
    """The rollout file is not YAML or does not validate; the message says where."""


class VersionWeight(BaseModel):
    """One version of an agent: its spec file (relative to the rollout file) and traffic weight (> 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")
    spec: str
    weight: float = Field(gt=0)


class Rollout(BaseModel):
    """``agents: {<agent name>: [VersionWeight, ...]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agents: dict[str, list[VersionWeight]] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Choice:
    """The version a call gets and the spec file that holds it (None: the agent's default spec)."""

    version: str
    spec: Path | None


_cache: dict[Path, tuple[float, Rollout]] = {}


def load_rollout(agents_dir: Path) -> Rollout:
    """``<agents_dir>/rollout.yaml`` (re-read when its mtime changes); an empty rollout when absent.

    Raises:
        RolloutError: the file is not YAML or does not validate.
    """
    path = agents_dir / ROLLOUT_FILE
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return Rollout()
    cached = _cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        rollout = Rollout.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError) as exc:
        raise RolloutError(f"cannot read {path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RolloutError(f"{path} is invalid: {problems}") from None
    _cache[path] = (mtime, rollout)
    return rollout


def bucket(agent: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by ``agent`` and ``key`` (SHA-256, first 8 bytes)."""
    digest = hashlib.sha256(f"{agent}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _spec_version(path: Path) -> str:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return DEFAULT_VERSION
    value = raw.get("version") if isinstance(raw, dict) else None
    return str(value) if value is not None else DEFAULT_VERSION


def choose(agents_dir: Path, agent: str, key: str) -> Choice:
    """The version of ``agent`` for the caller ``key`` (the caller number, else the call id).

    A broken rollout file is logged and ignored (the call gets the default spec's version): a bad edit must
    not stop calls.
    """
    try:
        versions = load_rollout(agents_dir).agents.get(agent)
    except RolloutError as exc:
        log.error("%s; ignoring the rollout", exc)
        versions = None
    if not versions:
        return Choice(_spec_version(agents_dir / f"{agent}.yaml"), None)
    point = bucket(agent, key) * sum(v.weight for v in versions)
    upto = 0.0
    for v in versions:
        upto += v.weight
        if point < upto:
            return Choice(v.version, agents_dir / v.spec)
    return Choice(versions[-1].version, agents_dir / versions[-1].spec)


def spec_path(agents_dir: Path, agent: str, version: str) -> Path | None:
    """The spec file of ``agent`` at ``version`` per the rollout file; None when the rollout does not list it.

    Raises:
        RolloutError: the file is not YAML or does not validate.
    """
    for v in load_rollout(agents_dir).agents.get(agent, []):
        if v.version == version:
            return agents_dir / v.spec
    return None
