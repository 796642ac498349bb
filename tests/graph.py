"""Running API-format prompts through ComfyUI's own executor, and reading what nodes captured."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

_ids = itertools.count()


class FakeServer:
    """What PromptExecutor needs of ComfyUI's server when nobody listens."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.events: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))


class GraphError(AssertionError):
    def __init__(self, node_id: str, node_type: str, message: str):
        super().__init__(f"node {node_id} ({node_type}) failed: {message}")
        self.node_id, self.node_type, self.message = node_id, node_type, message


def run_prompt(prompt: dict[str, dict]) -> list[tuple[str, Any]]:
    """Validate and execute a prompt; raise GraphError naming the failing node; return the messages."""
    import execution

    prompt_id = f"test-{next(_ids)}"
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        raise AssertionError(f"prompt did not validate: {valid[1]} {valid[3]}")
    executor = execution.PromptExecutor(FakeServer(), cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    executor.execute(prompt, prompt_id, {}, valid[2])
    for event, data in executor.status_messages:
        if event == "execution_error":
            raise GraphError(data["node_id"], data["node_type"], data["exception_message"])
    assert executor.success
    return executor.status_messages


class Graph:
    """Builds an API-format prompt: ``g.add("KSampler", model=loader[0], seed=1, ...)``."""

    def __init__(self):
        self.prompt: dict[str, dict] = {}

    def add(self, class_type: str, **inputs: Any) -> "Node":
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {"class_type": class_type,
                                "inputs": {k: (v.ref() if isinstance(v, Output) else v) for k, v in inputs.items()}}
        return Node(node_id)


class Node:
    def __init__(self, node_id: str):
        self.id = node_id

    def __getitem__(self, index: int) -> "Output":
        return Output(self.id, index)


class Output:
    def __init__(self, node_id: str, index: int):
        self.node_id, self.index = node_id, index

    def ref(self) -> list:
        return [self.node_id, self.index]
