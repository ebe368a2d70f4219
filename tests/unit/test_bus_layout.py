"""``shared/bus`` is composed, not mixed in: its modules import one another without a cycle (TYPE_CHECKING
imports included) and the parts (streams, nats.micro) are objects the Bus holds."""

from __future__ import annotations

import ast
from pathlib import Path

from shared.bus import Bus
from shared.bus.micro import Micro
from shared.bus.streams import Streams

BUS = Path(__file__).resolve().parents[2] / "shared" / "bus"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in BUS.glob("*.py"):
        if path.stem == "__init__":
            continue
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shared.bus."):
                deps.add(node.module.rsplit(".", 1)[1])
            elif isinstance(node, ast.Import):
                deps.update(a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("shared.bus."))
        graph[path.stem] = deps
    return graph


def test_bus_modules_import_without_a_cycle() -> None:
    graph = _graph()
    done: set[str] = set()
    stack: list[str] = []

    def visit(module: str) -> None:
        assert module not in stack, f"import cycle: {' -> '.join([*stack, module])}"
        if module in done:
            return
        stack.append(module)
        for dep in graph.get(module, ()):
            visit(dep)
        stack.pop()
        done.add(module)

    for module in graph:
        visit(module)
    assert "client" not in set().union(*graph.values())  # nothing below the Bus imports it


def test_bus_is_composed_of_its_parts() -> None:
    assert Bus.__bases__ == (object,)  # no mixins
    init = Bus.__init__.__code__
    assert {"streams", "micro"} <= set(init.co_names) and {"Streams", "Micro"} <= set(init.co_names)
    assert not issubclass(Bus, Streams | Micro)
