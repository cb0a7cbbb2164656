"""``manage.py runagent``: an agent that connects to the web replicas and runs Terraform."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.agents.credentials import ExposedCredential, load_credential
from apps.agents.isolation import make_non_dumpable
from apps.agents.protocol import AGENT_ID_RE, agent_group
from apps.agents.runtime import AgentConfig, AgentRuntime


def default_agent_id() -> str:
    # Pod name + pid: unique per process locally, and stable across container restarts in a pod
    # (pid 1), so a restarted agent's forgotten tasks are settled at its first hello.
    base = agent_group(settings.POD_NAME).removeprefix("agent.")[:50].lstrip("-._") or "agent"
    return "%s-%d" % (base, os.getpid())


class Command(BaseCommand):
    help = "Run an agent: connect to the C&C WebSocket of any web replica and run Terraform tasks."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", action="append", default=[], help="C&C URL (repeat; also AGENT_URLS)")
        parser.add_argument("--token-file", type=Path, help="file holding the pool token (else AGENT_TOKEN)")
        parser.add_argument(
            "--credential-file",
            type=Path,
            default=Path(settings.AGENT_CREDENTIAL_FILE) if settings.AGENT_CREDENTIAL_FILE else None,
            help="where the agent keeps the credential it got at registration (mode 0600; also AGENT_CREDENTIAL_FILE)",
        )
        parser.add_argument("--agent-id", default="", help="stable agent id (default: <POD_NAME>-<pid>)")
        parser.add_argument("--name", default="")
        parser.add_argument("--concurrency", type=int, default=1, help="tasks run at once (1-64)")
        parser.add_argument("--execution-log", type=Path, help="append JSON lines around each Terraform run")
        parser.add_argument("--work-dir", default=settings.AGENT_WORK_DIR or None)
        parser.add_argument("--terraform-bin", default=settings.TERRAFORM_BIN)
        parser.add_argument("--shutdown-grace", type=float, default=settings.AGENT_SHUTDOWN_GRACE)

    def handle(self, *args: Any, **options: Any) -> None:
        # First, before any secret is read: a same-user Terraform must not read this process's
        # environment or memory through /proc (isolation.py).
        if not make_non_dumpable() and sys.platform.startswith("linux"):
            raise CommandError("could not make the agent non-dumpable (prctl PR_SET_DUMPABLE)")
        urls = [*settings.AGENT_URLS, *options["url"]]
        if not urls:
            raise CommandError("give at least one --url (or AGENT_URLS)")
        token = settings.AGENT_TOKEN
        if options["token_file"] is not None:
            try:
                token = options["token_file"].read_text().strip()
            except OSError as exc:
                raise CommandError("cannot read the token file: %s" % exc) from exc
        credential_file: Path | None = options["credential_file"]
        credential = None
        if credential_file is not None:
            self.check_outside_work_dir(credential_file, options["work_dir"])
            try:
                credential = load_credential(credential_file)
            except (OSError, ExposedCredential) as exc:
                raise CommandError("cannot read the credential file: %s" % exc) from exc
        if not token and credential is None:
            raise CommandError("no pool token: give --token-file or set AGENT_TOKEN (or a --credential-file)")
        agent_id = options["agent_id"] or default_agent_id()
        if not AGENT_ID_RE.match(agent_id):
            raise CommandError("--agent-id must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
        if not 1 <= options["concurrency"] <= 64:
            raise CommandError("--concurrency must be between 1 and 64")
        config = AgentConfig(
            urls=urls,
            token=token,
            agent_id=agent_id,
            name=options["name"],
            concurrency=options["concurrency"],
            terraform_bin=options["terraform_bin"],
            work_dir=options["work_dir"],
            execution_log=options["execution_log"],
            shutdown_grace=options["shutdown_grace"],
            reconnect_max_delay=settings.AGENT_RECONNECT_MAX_DELAY,
            heartbeat_interval=settings.AGENT_HEARTBEAT_INTERVAL,
            terraform_env_passthrough=tuple(settings.AGENT_TERRAFORM_ENV_PASSTHROUGH),
            credential=credential,
            credential_file=credential_file,
        )
        asyncio.run(self.serve(config))

    @staticmethod
    def check_outside_work_dir(credential_file: Path, work_dir: str | None) -> None:
        # Task directories are made under the work dir and Terraform writes there: keep the
        # credential out of it, so no task directory, kept state file or cleanup ever touches it.
        if work_dir and credential_file.resolve().is_relative_to(Path(work_dir).resolve()):
            raise CommandError("--credential-file must be outside --work-dir (%s)" % work_dir)

    async def serve(self, config: AgentConfig) -> None:
        runtime = AgentRuntime(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.request_stop)
        await runtime.run()
