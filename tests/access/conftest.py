from __future__ import annotations

from tests.agents.fixtures import agent_pool, workspace  # noqa: F401  (fixtures)
