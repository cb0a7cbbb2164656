"""A real runagent's own credential: kept across restarts, replaced after a revocation."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from apps.agents import actions as agent_actions
from apps.agents.models import Agent
from harness.processes import ProcessGroup
from tests.integration.agentkit import FAST_ENV, make_pool, start_agent, wait_connected, wait_credential, wait_for

pytestmark = pytest.mark.slow


def test_a_restart_reuses_the_credential_and_a_revoked_agent_registers_again(
    processes: ProcessGroup, tmp_path: Path
) -> None:
    _, token = make_pool()
    web = processes.daphne("web-1", env=FAST_ENV)
    # At DEBUG too, no log line carries the pool token or the credential (websockets would).
    debug = {"LOG_LEVEL": "DEBUG"}
    first = start_agent(processes, "agent-1", urls=[web.ws_url], token=token, tmp_path=tmp_path, env=debug)
    wait_connected(first, "web-1")
    credential_file = tmp_path / "agent-1.credential"
    issued = wait_credential(first, tmp_path)
    registered_at = Agent.objects.get(agent_id="agent-1").registered_at

    first.signal(signal.SIGKILL)
    first.wait(10)
    Agent.objects.filter(agent_id="agent-1").update(connected_pod=None)
    again = start_agent(processes, "agent-1", urls=[web.ws_url], token=token, tmp_path=tmp_path, env=debug)
    wait_connected(again, "web-1")
    # The same agent, connected with its credential: no new registration.
    assert credential_file.read_text().strip() == issued
    assert Agent.objects.get(agent_id="agent-1").registered_at == registered_at

    agent_actions.revoke_agents([Agent.objects.get(agent_id="agent-1")])
    # Its connection is closed, its credential refused at the handshake: it registers anew with
    # the pool token and keeps the new credential.
    wait_for(
        "a new credential",
        lambda: credential_file.read_text().strip() not in ("", issued),
        30,
        [again],
    )
    wait_for("registered again", lambda: Agent.objects.get(agent_id="agent-1").registered, 30, [again])
    wait_connected(again, "web-1")
    assert "refused its credential; registering again" in again.log()
    renewed = credential_file.read_text().strip()
    # (The restarted agent's log: it connected with the credential, was refused, registered with
    # the pool token and was sent a new credential.)
    log = again.log()
    assert " DEBUG " in log
    for secret in (token, issued, renewed):
        assert secret not in log
