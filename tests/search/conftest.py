from __future__ import annotations

from tests.agents.fixtures import agent_pool  # noqa: F401  (fixture)
