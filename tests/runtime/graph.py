"""Running API-format prompts through ComfyUI's own executor, and reading what nodes captured."""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count()


class GraphError(AssertionError):
    def __init__(self, node_id: str, node_type: str, message: str):
        super().__init__(f"node {node_id} ({node_type}) failed: {message}")
        self.node_id, self.node_type, self.message = node_id, node_type, message


def run_prompt(prompt: dict[str, dict]) -> list[tuple[str, Any]]:
    """Validate and execute a prompt; raise GraphError naming the failing node; return the messages."""
    from nested_dev.headless import execute

    executor, _ = execute(prompt, f"test-{next(_ids)}")
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
        self.prompt[node_id] = {
            "class_type": class_type,
            "inputs": {k: (v.ref() if isinstance(v, Output) else v) for k, v in inputs.items()},
        }
        return Node(node_id)

    def sample(
        self, model: Any, positive: Any, negative: Any, latent: Any, seed: int, steps: int, cfg: float
    ) -> "Node":
        """A KSampler (euler, normal schedule, full denoise) on the given model and prompts."""
        return self.add(
            "KSampler",
            model=model,
            seed=seed,
            steps=steps,
            cfg=cfg,
            sampler_name="euler",
            scheduler="normal",
            positive=positive,
            negative=negative,
            latent_image=latent,
            denoise=1.0,
        )


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
