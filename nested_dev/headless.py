"""Running an API-format prompt through ComfyUI's own executor without a server."""

from __future__ import annotations

import asyncio
from typing import Any, Optional


class EventLog:
    """What PromptExecutor needs of ComfyUI's server: it keeps the events instead of sending them."""

    client_id = None  # set by the executor from extra_data["client_id"]
    last_node_id = None
    last_prompt_id = None

    def __init__(self):
        self.events: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))


def execute(prompt: dict[str, dict], prompt_id: str, client_id: Optional[str] = None):
    """Validate and run a prompt; returns (executor, event log), or raises ValueError if it does not
    validate. A client id makes the executor report each node it runs."""
    import execution

    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        raise ValueError(f"the prompt did not validate: {valid[1]} {valid[3]}")
    log = EventLog()
    executor = execution.PromptExecutor(log, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
    executor.execute(prompt, prompt_id, {"client_id": client_id} if client_id else {}, valid[2])
    return executor, log
