"""Per-agent credentials: the pool token registers, the agent's own credential reconnects."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.db import connection

from apps.agents import actions as agent_actions
from apps.agents.credentials import ExposedCredential, load_credential, save_credential
from apps.agents.models import Agent
from apps.workspaces import actions
from apps.workspaces.models import Task, Workspace
from harness.processes import ROOT
from tests.agents.fixtures import Pool
from tests.agents.test_consumer import communicator, connect_agent, hello, recv, send

pytestmark = pytest.mark.django_db(transaction=True)


def agent(agent_id: str = "agent-1") -> Agent:
    return Agent.objects.get(agent_id=agent_id)


async def test_registration_issues_a_credential_stored_only_as_a_hash(agent_pool: Pool) -> None:
    comm = await connect_agent(agent_pool)
    credential = agent_pool.credentials["agent-1"]
    assert credential.startswith("iacpa_") and len(credential) > 40
    row = await database_sync_to_async(agent)()
    assert row.registered and row.registered_at is not None
    assert row.credential_hash == hashlib.sha256(credential.encode()).hexdigest()

    def raw_in_table() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM agents_agent WHERE row_to_json(agents_agent)::text LIKE %s",
                ["%" + credential + "%"],
            )
            return bool(cursor.fetchone()[0])

    assert not await database_sync_to_async(raw_in_table)()
    await comm.disconnect()
    # The credential alone reconnects (no pool token), and no new one is issued.
    again = await connect_agent(agent_pool)
    await again.disconnect()


async def test_a_hello_without_the_credential_for_a_registered_id_changes_nothing(
    agent_pool: Pool, workspace: Workspace
) -> None:
    real = await connect_agent(agent_pool)
    task = await database_sync_to_async(actions.enqueue_task)(workspace=workspace, type="apply")
    assert (await recv(real))["type"] == "task.dispatch"
    await send(real, {"type": "task.accept", "task_id": task.pk, "attempt": 1})
    assert (await recv(real))["type"] == "task.accepted"
    before = await database_sync_to_async(agent)()

    impostor = communicator(agent_pool.token)
    assert (await impostor.connect())[0]
    await send(impostor, hello(tasks=[]))  # would settle the real agent's running apply as lost
    error = await recv(impostor)
    assert error["code"] == "credential_required"
    assert agent_pool.token not in error["message"]
    assert await impostor.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}
    await impostor.disconnect()

    after = await database_sync_to_async(agent)()
    assert (after.status, after.connected_pod, after.connected_at) == (
        before.status,
        before.connected_pod,
        before.connected_at,
    )
    assert await database_sync_to_async(lambda: Task.objects.get(pk=task.pk).status)() == "running"
    # The real connection still serves.
    await send(real, {"type": "task.result", "task_id": task.pk, "attempt": 1, "status": "succeeded"})
    assert (await recv(real))["type"] == "task.ack"
    await real.disconnect()


async def test_a_credential_speaks_only_for_its_own_agent_id(agent_pool: Pool) -> None:
    first = await connect_agent(agent_pool, agent_id="agent-1")
    second = await connect_agent(agent_pool, agent_id="agent-2")
    comm = communicator(agent_pool.credentials["agent-1"])
    assert (await comm.connect())[0]
    await send(comm, hello("agent-2"))
    assert (await recv(comm))["code"] == "credential_mismatch"
    assert await comm.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}
    assert await database_sync_to_async(lambda: agent("agent-2").connected_pod)() is not None
    await first.disconnect()
    await second.disconnect()


async def test_rotating_the_pool_token_keeps_registered_agents_unless_asked(agent_pool: Pool) -> None:
    comm = await connect_agent(agent_pool)
    await comm.disconnect()
    await database_sync_to_async(call_command)("createagentpool", "pool-a", "--rotate", stdout=io.StringIO())
    # The old pool token is dead, the agent's credential is not.
    dead = communicator(agent_pool.token)
    assert (await dead.connect()) == (False, 4401)
    live = await connect_agent(agent_pool)
    await database_sync_to_async(call_command)(
        "createagentpool", "pool-a", "--rotate", "--revoke-agents", stdout=io.StringIO()
    )
    # Revoked: the live connection is told and closed, the credential refused from now on.
    assert (await recv(live))["code"] == "revoked"
    assert await live.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}
    refused = communicator(agent_pool.credentials["agent-1"])
    assert (await refused.connect()) == (False, 4401)
    assert not await database_sync_to_async(lambda: agent().registered)()


async def test_a_deleted_agent_is_revoked_and_its_connection_ends(agent_pool: Pool) -> None:
    comm = await connect_agent(agent_pool)
    await database_sync_to_async(lambda: agent_actions.delete_agents([agent()]))()
    assert (await recv(comm))["code"] == "revoked"
    assert await comm.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}
    refused = communicator(agent_pool.credentials["agent-1"])
    assert (await refused.connect()) == (False, 4401)


async def test_a_heartbeat_after_a_revocation_that_sent_no_message_ends_the_connection(agent_pool: Pool) -> None:
    comm = await connect_agent(agent_pool)
    await database_sync_to_async(Agent.objects.filter(agent_id="agent-1").update)(credential_hash="")
    await send(comm, {"type": "heartbeat"})
    assert (await recv(comm))["code"] == "revoked"
    assert await comm.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}


async def test_an_agent_registered_before_credentials_existed_registers_at_its_next_hello(agent_pool: Pool) -> None:
    await database_sync_to_async(Agent.objects.create)(agent_id="agent-1", pool=agent_pool.pool)
    comm = await connect_agent(agent_pool)
    assert "agent-1" in agent_pool.credentials
    await comm.disconnect()


def test_the_credential_file_is_written_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "credential"
    assert load_credential(path) is None
    save_credential(path, "iacpa_one")
    save_credential(path, "iacpa_two")
    assert load_credential(path) == "iacpa_two"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["credential"]


async def test_a_newer_connection_of_the_same_agent_ends_the_older_one(agent_pool: Pool) -> None:
    """One agent id, one live connection: a reconnect (the old socket half-open, say) wins."""
    old = await connect_agent(agent_pool)
    new = await connect_agent(agent_pool)
    assert (await recv(old))["code"] == "superseded"
    assert await old.receive_output(timeout=2) == {"type": "websocket.close", "code": 4409}
    await old.disconnect()
    row = await database_sync_to_async(agent)()
    assert row.connected_pod is not None  # the old socket's end did not mark the agent offline
    await send(new, {"type": "heartbeat"})
    await send(new, {"type": "ping"})
    assert (await recv(new))["code"] == "unknown_type"  # the new one still serves
    await new.disconnect()


def test_a_credential_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "credential"
    save_credential(path, "iacpa_one")
    path.chmod(0o644)
    with pytest.raises(ExposedCredential, match="must be 0600"):
        load_credential(path)
    # In a process of its own: runagent makes its process non-dumpable first.
    argv = [sys.executable, "manage.py", "runagent", "--url", "ws://127.0.0.1:9/ws/agents/", "--credential-file"]
    result = subprocess.run(
        [*argv, str(path)],
        cwd=ROOT,
        env={**os.environ, "PROCESS_ROLE": "agent", "AGENT_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "must be 0600" in result.stderr
