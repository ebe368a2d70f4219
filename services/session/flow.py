"""Flow states: which instructions and tools are in force, and transitions on tool results.

An agent spec may declare states (``flow.states``: ``id``, ``instructions``, ``tools``, ``transitions``). After a
successful tool reply the current state's transitions are checked in order; the first whose ``on_tool``
matches (and whose ``when`` is a subset of the reply's ``output`` object) moves the call to its ``to`` state.
The call then sends a ``session.update`` with the new state's instructions and tools (logged like every client
event) and publishes ``call.<id>.session.state_changed`` — so a replay of the log reconstructs the state.
"""

from __future__ import annotations

from typing import Any

from .agent import AgentSpec

__all__ = ["FlowMachine"]


class FlowMachine:
    """The flow state of one call (``state`` is None for agents without a flow)."""

    def __init__(self, spec: AgentSpec, state: str | None = None) -> None:
        self.spec = spec
        self.state: str | None = state or (spec.flow.initial if spec.flow else None)
        self.history: list[dict[str, Any]] = []

    def on_tool_result(self, tool: str, output: Any) -> tuple[str, str] | None:
        """Apply a successful tool reply; returns ``(from_state, to_state)`` when a transition fired."""
        if self.spec.flow is None or self.state is None:
            return None
        for transition in self.spec.flow.state(self.state).transitions:
            if transition.on_tool != tool:
                continue
            if transition.when is not None and not _matches(transition.when, output):
                continue
            if transition.to == self.state:
                return None
            previous, self.state = self.state, transition.to
            self.history.append({"from": previous, "to": self.state, "tool": tool})
            return previous, self.state
        return None


def _matches(expected: dict[str, Any], output: Any) -> bool:
    if not isinstance(output, dict):
        return False
    return all(key in output and output[key] == value for key, value in expected.items())
