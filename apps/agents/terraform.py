"""Running one task with real Terraform in a fresh directory (the agent side of a task).

Guarantees: each task gets its own directory with only the workspace's files and, when there is
one, the newest state; the Terraform child runs in its own process group and dies with the agent
(PR_SET_PDEATHSIG on Linux), so a killed agent leaves no Terraform running behind it; the
execution log gets a fsynced ``start`` line before the first Terraform command and an ``end``
line after the last; a cancel stops Terraform with SIGINT (its graceful stop), then SIGTERM, then
SIGKILL, sent to its process group until the command is over, output included; Terraform starts
with both signals at their defaults, even when the agent inherited them ignored; a cancelled
command ends by SIGKILL_AFTER, plus OUTPUT_DRAIN when a process that left the group holds its
output open (that output is dropped, and that process is not stopped). Terraform's environment is
the allowlist of isolation.py plus the workspace's variables, never the agent's own. Does NOT:
decide whether to run (the runtime runs only accepted tasks), enforce the task timeout (the
server's task_timeout job sends task.cancel), or talk to the server.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from apps.agents.isolation import terraform_environment

logger = logging.getLogger(__name__)

SAFE_FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
# Terraform merges *_override.tf files last: this one's backend replaces any other.
BACKEND_OVERRIDE = "zz_platform_state_backend_override.tf"
# The workspace's own override files could replace that backend: refused.
OVERRIDE_SUFFIXES = ("override.tf", "override.tf.json")
PLAN_RE = re.compile(r"Plan: (\d+) to add, (\d+) to change, (\d+) to destroy")
APPLY_RE = re.compile(r"Resources: (\d+) added, (\d+) changed, (\d+) destroyed")
READ_SIZE = 8192
# Escalation after a cancel: SIGINT lets Terraform stop cleanly and write its state.
SIGTERM_AFTER = 15.0
SIGKILL_AFTER = 30.0
# Once the group is SIGKILLed nothing of it runs: what still holds Terraform's output open left
# the group (a daemon started in a session of its own), and is not waited for beyond this.
OUTPUT_DRAIN = 2.0


@dataclass(frozen=True)
class TaskSpec:
    task_id: int
    attempt: int
    task_type: str
    workspace_id: int
    files: dict[str, str]
    variables: dict[str, str]
    # Where Terraform keeps its state: the platform's http backend, with this attempt's credential.
    state_backend: dict[str, Any] | None
    log_seq_start: int = 0
    # The workspace's plain environment variables (category env), set under their own names.
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dispatch(cls, frame: dict[str, Any]) -> TaskSpec:
        return cls(
            task_id=int(frame["task_id"]),
            attempt=int(frame["attempt"]),
            task_type=str(frame["task_type"]),
            workspace_id=int(frame["workspace_id"]),
            files=dict(frame.get("files") or {}),
            variables={str(k): str(v) for k, v in (frame.get("variables") or {}).items()},
            state_backend=frame.get("state_backend"),
            log_seq_start=int(frame.get("log_seq_start", 0)),
            env={str(k): str(v) for k, v in (frame.get("env") or {}).items()},
        )


@dataclass
class Outcome:
    status: str
    exit_code: int | None = None
    plan_summary: dict[str, int] | None = None
    state: dict[str, Any] | None = None
    drifted: bool | None = None
    error: str = ""

    def result_frame(self, spec: TaskSpec) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "task.result",
            "task_id": spec.task_id,
            "attempt": spec.attempt,
            "status": self.status,
            "exit_code": self.exit_code,
            "plan_summary": self.plan_summary,
            "drifted": self.drifted,
            "error": self.error[:10000],
        }
        if self.state is not None:
            frame["state"] = self.state
        return frame


class ExecutionLog:
    """Append-only JSON lines around each Terraform execution, flushed and fsynced, so an outside
    checker can prove from the agents' own clocks that no apply ran twice and no two executions in
    one workspace overlapped."""

    def __init__(self, path: Path, *, agent_id: str) -> None:
        self.path = path
        self.agent_id = agent_id

    def write(self, event: str, spec: TaskSpec, **extra: Any) -> None:
        record = {
            "event": event,
            "task_id": spec.task_id,
            "workspace_id": spec.workspace_id,
            "type": spec.task_type,
            "attempt": spec.attempt,
            "agent_id": self.agent_id,
            "pid": os.getpid(),
            "t": time.time(),
            **extra,
        }
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    # An ignored signal stays ignored across exec (handlers do not), and a shell cannot even trap
    # a signal that was ignored when it started. An agent launched with SIGINT ignored (a shell's
    # `cmd &` without job control, some service wrappers) would hand that on, and a cancel's SIGINT
    # would stop nothing until SIGTERM_AFTER: Terraform gets the default dispositions back.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class TerraformRun:
    spec: TaskSpec
    terraform_bin: str
    on_output: Callable[[str], None]
    work_root: str | None = None
    execution_log: ExecutionLog | None = None
    # Names of the agent's own variables Terraform may also see (AGENT_TERRAFORM_ENV_PASSTHROUGH).
    passthrough: tuple[str, ...] = ()
    # http(s)://host:port of the replica the agent is connected to, for a relative backend address.
    backend_origin: str = ""
    cancelled: bool = False
    # The command running now: its process, its output pipe, and an event set once it is over
    # (exited, output closed).
    _proc: asyncio.subprocess.Process | None = None
    _output: asyncio.ReadTransport | None = None
    _finished: asyncio.Event | None = None
    _escalation: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        """Stop Terraform: SIGINT now, SIGTERM and SIGKILL if it does not stop."""
        if self.cancelled:
            return
        self.cancelled = True
        # Also when Terraform itself has exited: its group may still run, or hold its output.
        if self._proc is not None and self._finished is not None and not self._finished.is_set():
            self._signal(self._proc.pid, signal.SIGINT)
            self._escalation = asyncio.get_running_loop().create_task(self._escalate(self._proc.pid, self._finished))

    def _signal(self, pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    async def _escalate(self, pgid: int, finished: asyncio.Event) -> None:
        # Waits for the command to be over, output included, not for Terraform's process alone: a
        # wrapper's or Terraform's children are in its group and may hold the output and run on.
        for delay, sig in ((SIGTERM_AFTER, signal.SIGTERM), (SIGKILL_AFTER - SIGTERM_AFTER, signal.SIGKILL)):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), delay)
                return
            self._signal(pgid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), OUTPUT_DRAIN)
            return
        if self._output is not None:
            logger.warning(
                "task %s: Terraform's output still open %.0f s after the SIGKILL of its process group "
                "(held by a process outside it); no longer read",
                self.spec.task_id,
                OUTPUT_DRAIN,
            )
            self._output.close()

    async def run(self) -> Outcome:
        if self.work_root:
            # Created per run, not once at start: a --work-dir that does not exist yet (a fresh
            # volume) or was removed under a long-running agent (a tmp cleaner) must not error
            # every task the agent accepts.
            os.makedirs(self.work_root, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="task-%d-" % self.spec.task_id, dir=self.work_root or None))
        try:
            problem = self._prepare(workdir)
            if problem:
                return Outcome(status="errored", error=problem)
            if self.execution_log is not None:
                self.execution_log.write("start", self.spec)
            exit_code: int | None = None
            try:
                outcome = await self._execute(workdir)
                exit_code = outcome.exit_code
                return outcome
            finally:
                if self.execution_log is not None:
                    self.execution_log.write("end", self.spec, exit_code=exit_code)
        except OSError as exc:
            return Outcome(status="errored", error="agent could not run Terraform: %s" % exc)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _prepare(self, workdir: Path) -> str:
        for name, content in self.spec.files.items():
            if not SAFE_FILE_RE.match(name) or not isinstance(content, str) or name.endswith(OVERRIDE_SUFFIXES):
                return "refusing file name %r" % name[:100]
            (workdir / name).write_text(content, encoding="utf-8")
        if not self.spec.state_backend:
            # Protocol 2 always sends one; without it Terraform would start from no state at all.
            return "the dispatch has no state backend"
        override = workdir / BACKEND_OVERRIDE
        override.write_text(backend_override(self.spec.state_backend, origin=self.backend_origin), encoding="utf-8")
        override.chmod(0o600)  # it holds the attempt's credential
        return ""

    async def _execute(self, workdir: Path) -> Outcome:
        code, _ = await self._terraform(workdir, "init", "-input=false", "-no-color")
        if self.cancelled:
            return Outcome(status="cancelled", exit_code=code, error="cancelled")
        if code != 0:
            return Outcome(status="failed", exit_code=code, error="terraform init failed")
        kind = self.spec.task_type
        if kind == "apply":
            code, output = await self._terraform(workdir, "apply", "-auto-approve", "-input=false", "-no-color")
            # Terraform wrote its state through the backend as it went. errored.tfstate is what it
            # could not write there: reported with the result (same rules on the server) so the
            # state of what it built is not lost with this directory.
            unsaved = _read_state(workdir / "errored.tfstate")
            if self.cancelled:
                return Outcome(status="cancelled", exit_code=code, state=unsaved, error="cancelled")
            if code != 0:
                return Outcome(status="failed", exit_code=code, state=unsaved, error="apply failed")
            return Outcome(status="succeeded", exit_code=0, plan_summary=_summary(APPLY_RE, output), state=unsaved)
        code, output = await self._terraform(workdir, "plan", "-input=false", "-no-color", "-detailed-exitcode")
        if self.cancelled:
            return Outcome(status="cancelled", exit_code=code, error="cancelled")
        if code not in (0, 2):
            return Outcome(status="failed", exit_code=code, error="plan failed")
        summary = _summary(PLAN_RE, output)
        drifted = (code == 2) if kind == "drift_check" else None
        return Outcome(status="succeeded", exit_code=code, plan_summary=summary, drifted=drifted)

    async def _terraform(self, workdir: Path, *args: str) -> tuple[int, str]:
        env = terraform_environment(
            agent_env=os.environ,
            passthrough=self.passthrough,
            terraform_vars=self.spec.variables,
            env_vars=self.spec.env,
        )
        if self.cancelled:
            return 130, ""
        self.on_output("$ terraform %s\n" % " ".join(args))
        # Our own pipe rather than asyncio's: its wait() would also wait for the output to close,
        # and only a transport of our own can be closed on a holder that outlives the SIGKILL.
        read_end, write_end = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.terraform_bin,
                *args,
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup,  # only sigaction and prctl in the child: no locks taken
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)  # the output ends when Terraform and its children close theirs
        self._proc, self._finished = proc, asyncio.Event()
        try:
            if self.cancelled:
                # Cancelled while the process was being started: it missed the first signal.
                self.cancelled = False
                self.cancel()
            reader = asyncio.StreamReader()
            self._output, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0)
            )
            output = await self._read(reader)
            code = await proc.wait()
        finally:
            if self._output is not None:
                self._output.close()
            self._finished.set()
            self._proc = self._output = None
        return code, output

    async def _read(self, reader: asyncio.StreamReader) -> str:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        collected: list[str] = []
        while True:
            data = await reader.read(READ_SIZE)
            text = decoder.decode(data, final=not data)
            if text:
                text = text.replace("\x00", "\ufffd")
                collected.append(text)
                self.on_output(text)
            if not data:
                return "".join(collected)


def _summary(pattern: re.Pattern[str], output: str) -> dict[str, int]:
    match = pattern.search(output)
    if match is None:
        return {"add": 0, "change": 0, "destroy": 0}
    add, change, destroy = (int(group) for group in match.groups())
    return {"add": add, "change": change, "destroy": destroy}


def backend_override(backend: dict[str, Any], *, origin: str) -> str:
    """The ``backend "http"`` override (it replaces any backend the workspace's files declare)."""
    address = str(backend["address"])
    if address.startswith("/"):
        address = origin.rstrip("/") + address
    settings = {
        "address": address,
        "lock_address": address,
        "unlock_address": address,
        "username": str(backend["username"]),
        "password": str(backend["password"]),
    }
    lines = ["    %s = %s" % (name, _hcl_string(value)) for name, value in settings.items()]
    return 'terraform {\n  backend "http" {\n%s\n  }\n}\n' % "\n".join(lines)


def _hcl_string(value: str) -> str:
    # A JSON string is an HCL string once template sequences are escaped.
    return json.dumps(value).replace("${", "$${").replace("%{", "%%{")


def http_origin(ws_url: str) -> str:
    """http(s)://host:port of a ws(s):// C&C URL: where the same replica serves the state backend."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None
