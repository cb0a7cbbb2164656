"""The agent process: keeps a C&C connection to one of several web replicas and runs tasks.

Guarantees: Terraform runs only for a task whose ``task.accept`` the server confirmed
(``task.accepted``); every log chunk and result is kept until the server acknowledges it and is
re-sent after a reconnect to any replica (the server stores them idempotently), so a task that
spans a reconnect is reported completely and once; reconnects rotate through the URLs with
jittered exponential backoff; the agent registers with its pool token once, then connects with
the credential the server issued (kept in ``credential_file``, mode 0600, when one is given) and
registers again only when the server no longer knows that credential (revoked, agent deleted);
after :meth:`AgentRuntime.request_stop` (SIGTERM) the agent takes no
new task, lets running ones finish within the grace period, then cancels them, reports, and exits.
Does NOT: persist anything across its own restarts (a restarted agent's tasks are settled by the
server), or enforce task timeouts (the server sends ``task.cancel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from apps.agents.credentials import save_credential
from apps.agents.protocol import PROTOCOL_VERSION
from apps.agents.stateproxy import StateProxy
from apps.agents.terraform import ExecutionLog, Outcome, TaskSpec, TerraformRun, http_origin

logger = logging.getLogger(__name__)

VERSION = "1.0"
BACKOFF_BASE = 0.2
WELCOME_TIMEOUT = 10.0
DEFAULT_MAX_FRAME_BYTES = 1024 * 1024  # until the server's welcome says otherwise
# After the grace period, cancelled tasks get this long to be reported before the agent gives up.
FINAL_REPORT_WINDOW = 30.0


@dataclass(frozen=True)
class AgentConfig:
    urls: list[str]
    token: str  # the pool token: registers the agent (may be empty once it has a credential)
    agent_id: str
    concurrency: int = 1
    name: str = ""
    terraform_bin: str = "terraform"
    work_dir: str | None = None
    execution_log: Path | None = None
    shutdown_grace: float = 60.0
    reconnect_max_delay: float = 10.0
    heartbeat_interval: float = 10.0
    terraform_env_passthrough: tuple[str, ...] = ()
    credential: str | None = None  # as read from credential_file at start
    credential_file: Path | None = None


class Phase(enum.Enum):
    ACCEPTING = "accepting"  # task.accept sent, answer not heard yet
    RUNNING = "running"
    FINISHED = "finished"  # result known, not yet acknowledged


@dataclass
class HeldTask:
    spec: TaskSpec
    phase: Phase = Phase.ACCEPTING
    next_seq: int = 0
    unacked_chunks: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    run: TerraformRun | None = None
    worker: asyncio.Task[None] | None = None


def backoff_delay(attempt: int, *, cap: float, rng: random.Random) -> float:
    """Equal-jitter exponential backoff: half fixed, half random, so a fleet of agents that lost
    the same replica does not reconnect in lockstep."""
    ceiling = min(cap, BACKOFF_BASE * (2**attempt))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class AgentRuntime:
    def __init__(
        self,
        config: AgentConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.rng = rng or random.Random()  # noqa: S311 - backoff jitter, not a secret
        self.clock = clock
        self.tasks: dict[int, HeldTask] = {}
        self.ws: ClientConnection | None = None
        self.heartbeat_interval = config.heartbeat_interval
        self.max_frame_bytes = DEFAULT_MAX_FRAME_BYTES
        self.stopping = False
        self.stop_deadline: float | None = None
        self.connected_url: str | None = None
        self.credential = config.credential
        self.execution_log = (
            ExecutionLog(config.execution_log, agent_id=config.agent_id) if config.execution_log else None
        )
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self.sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep
        self._replay_scheduled = False
        self._replay_attempt = 0
        # Terraform's state backend address for tasks whose dispatch gives a path: this forwarder,
        # which reaches whichever replica the agent can reach when each request is made.
        self.state_proxy = StateProxy(self.state_origins)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # Lifecycle

    def request_stop(self) -> None:
        """SIGTERM: take no new tasks; running ones get the grace period."""
        if self.stopping:
            return
        logger.info("agent %s stopping: %d tasks held", self.config.agent_id, len(self.tasks))
        self.stopping = True
        self.stop_deadline = self.clock() + self.config.shutdown_grace
        self._wake.set()
        self._spawn(self._announce_drain())

    async def _announce_drain(self) -> None:
        await self.send(self.heartbeat_frame())
        if self.done() and self.ws is not None:
            await self.ws.close()

    def done(self) -> bool:
        if not self.stopping:
            return False
        if not self.tasks:
            return True
        # A server that never comes back must not keep a stopping agent alive forever.
        assert self.stop_deadline is not None
        running = any(t.worker is not None and not t.worker.done() for t in self.tasks.values())
        return not running and self.clock() > self.stop_deadline + FINAL_REPORT_WINDOW

    async def run(self) -> None:
        """Connect, serve, reconnect, until stopped with nothing left to report."""
        attempt = 0
        index = 0
        while not self.done():
            url = self.config.urls[index % len(self.config.urls)]
            index += 1
            try:
                served = await self.connect_and_serve(url)
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                logger.warning("agent %s: connection to %s failed: %s", self.config.agent_id, url, exc)
                served = False
            if self.done():
                break
            if served:
                attempt = 0  # it worked before the drop: come back fast, but to the next URL
            if self._past_deadline():
                self.cancel_all()
            delay = backoff_delay(attempt, cap=self.config.reconnect_max_delay, rng=self.rng)
            attempt += 1
            await self._pause(delay)
        self.state_proxy.stop()
        logger.info("agent %s stopped", self.config.agent_id)

    async def _pause(self, delay: float) -> None:
        """Sleep before reconnecting; a stop or a finished task ends the pause early."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _past_deadline(self) -> bool:
        return self.stop_deadline is not None and self.clock() >= self.stop_deadline

    def cancel_all(self) -> None:
        for held in self.tasks.values():
            if held.run is not None:
                held.run.cancel()

    async def connect_and_serve(self, url: str) -> bool:
        with_credential = self.credential is not None
        headers = {"Authorization": "Bearer %s" % (self.credential if with_credential else self.config.token)}
        try:
            ws_cm = await websockets.connect(
                url, additional_headers=headers, max_size=None, open_timeout=10, ping_interval=20, ping_timeout=20
            )
        except websockets.exceptions.InvalidStatus as exc:
            if with_credential and exc.response.status_code == 403 and self.config.token:
                # Only a refused credential: revoked or its agent deleted; register again.
                logger.warning("agent %s: %s refused its credential; registering again", self.config.agent_id, url)
                self.credential = None
            raise
        async with ws_cm as ws:
            await ws.send(json.dumps(self.hello_frame()))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), WELCOME_TIMEOUT))
            if welcome.get("type") != "welcome":
                logger.error(
                    "agent %s: %s refused the hello: %s %s",
                    self.config.agent_id,
                    url,
                    welcome.get("code"),
                    welcome.get("message"),
                )
                return False
            if isinstance(welcome.get("credential"), str):
                self.store_credential(welcome["credential"])
            self.heartbeat_interval = float(welcome.get("heartbeat_interval", self.heartbeat_interval))
            self.max_frame_bytes = int(welcome.get("max_frame_bytes", self.max_frame_bytes))
            self.ws, self.connected_url = ws, url
            logger.info("agent %s connected to %s (%s)", self.config.agent_id, url, welcome.get("pod"))
            heartbeats = self._spawn(self._heartbeats())
            try:
                await self.replay()
                async for message in ws:
                    if isinstance(message, str):
                        await self.handle(json.loads(message))
                    if self.done():
                        await ws.close()
                        break
            except websockets.exceptions.ConnectionClosed as exc:
                logger.warning("agent %s: connection to %s closed: %s", self.config.agent_id, url, exc)
            finally:
                heartbeats.cancel()
                self.ws = None
            return True

    def store_credential(self, credential: str) -> None:
        self.credential = credential
        path = self.config.credential_file
        logger.info("agent %s registered", self.config.agent_id)
        if path is None:
            logger.warning(
                "agent %s: no --credential-file; a restart under the same agent id will be refused",
                self.config.agent_id,
            )
            return
        try:
            save_credential(path, credential)
        except OSError as exc:
            logger.error("agent %s: cannot keep its credential in %s: %s", self.config.agent_id, path, exc)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if self._past_deadline():
                self.cancel_all()
            await self.send(self.heartbeat_frame())

    def state_origins(self) -> list[str]:
        """The replicas' http origins, the one connected to now first (read from the proxy's thread)."""
        urls = [self.connected_url] if self.connected_url else []
        origins: list[str] = []
        for url in [*urls, *self.config.urls]:
            origin = http_origin(url)
            if origin not in origins:
                origins.append(origin)
        return origins

    # Frames

    def task_refs(self) -> list[dict[str, int]]:
        return [{"task_id": t.spec.task_id, "attempt": t.spec.attempt} for t in self.tasks.values()]

    def hello_frame(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "agent_id": self.config.agent_id,
            "name": self.config.name or self.config.agent_id,
            "version": VERSION,
            "capacity": self.config.concurrency,
            "tasks": self.task_refs(),
            "draining": self.stopping,
        }

    def heartbeat_frame(self) -> dict[str, Any]:
        return {"type": "heartbeat", "tasks": self.task_refs(), "draining": self.stopping}

    async def send(self, frame: dict[str, Any]) -> None:
        """Send if connected; anything unacknowledged is replayed after the next connect."""
        ws = self.ws
        if ws is None:
            return
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await ws.send(json.dumps(frame))

    async def replay(self) -> None:
        for held in list(self.tasks.values()):
            ref = {"task_id": held.spec.task_id, "attempt": held.spec.attempt}
            if held.phase is Phase.ACCEPTING:
                await self.send({"type": "task.accept", **ref})
            for chunk in list(held.unacked_chunks):
                await self.send(chunk)
            if held.result is not None:
                await self.send(held.result)

    def _schedule_replay(self) -> None:
        if self._replay_scheduled:
            return
        self._replay_scheduled = True
        delay = backoff_delay(self._replay_attempt, cap=self.config.reconnect_max_delay, rng=self.rng)
        self._replay_attempt += 1
        self._spawn(self._replay_after(delay))

    async def _replay_after(self, delay: float) -> None:
        await self.sleep(delay)
        self._replay_scheduled = False
        await self.replay()

    async def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        task_id = frame.get("task_id")
        held = self.tasks.get(task_id) if isinstance(task_id, int) else None
        if kind == "task.dispatch":
            await self.on_dispatch(frame)
        elif kind == "task.accepted" and held is not None and held.phase is Phase.ACCEPTING:
            held.phase = Phase.RUNNING
            held.worker = self._spawn(self.execute(held))
        elif kind in ("task.drop", "task.cancel") and held is not None:
            if held.phase is Phase.ACCEPTING:
                del self.tasks[held.spec.task_id]
            elif held.run is not None:
                logger.info("agent %s: cancelling task %d", self.config.agent_id, held.spec.task_id)
                held.run.cancel()
        elif kind == "task.ack" and held is not None and held.phase is Phase.FINISHED:
            del self.tasks[held.spec.task_id]
            self._replay_attempt = 0
        elif kind == "error":
            await self.on_error(frame, held)

    async def on_dispatch(self, frame: dict[str, Any]) -> None:
        spec = TaskSpec.from_dispatch(frame)
        held = self.tasks.get(spec.task_id)
        if held is not None and held.phase is Phase.FINISHED and held.spec.attempt < spec.attempt:
            # The server dispatches a new attempt only once it has settled ours (it lost us for a
            # moment): what we still hold of the old one will never be stored.
            del self.tasks[spec.task_id]
        elif held is not None:
            return  # a re-sent dispatch of a task we already hold
        ref = {"task_id": spec.task_id, "attempt": spec.attempt}
        active = sum(1 for t in self.tasks.values() if t.phase is not Phase.FINISHED)
        if self.stopping or active >= self.config.concurrency:
            await self.send({"type": "task.reject", **ref, "reason": "draining" if self.stopping else "full"})
            return
        self.tasks[spec.task_id] = HeldTask(spec=spec, next_seq=spec.log_seq_start)
        await self.send({"type": "task.accept", **ref})

    async def on_error(self, frame: dict[str, Any], held: HeldTask | None) -> None:
        logger.warning("agent %s: server error %s: %s", self.config.agent_id, frame.get("code"), frame.get("message"))
        if frame.get("code") == "internal":
            # The server could not store a frame (its database was restarting, say) over a
            # connection that is fine: resend what is unacknowledged after a pause rather than
            # wait for a reconnect that may never come, or a result would be lost until timeout.
            self._schedule_replay()
            return
        if frame.get("code") != "not_owned" or held is None:
            return
        attempt = frame.get("attempt")
        if (attempt is not None and attempt != held.spec.attempt) or (
            attempt is None and held.phase is Phase.ACCEPTING
        ):
            # About an earlier attempt of this task (its late log frames, say), not the one we hold
            # now: an accept is answered with task.accepted or task.drop, never not_owned.
            return
        # The server settled the task without us (re-queued, timed out, errored while we were away):
        # nothing we report about it will be stored, so stop and forget it.
        if held.run is not None:
            held.run.cancel()
        if held.phase is not Phase.RUNNING:
            self.tasks.pop(held.spec.task_id, None)
        else:
            held.unacked_chunks.clear()

    # Running a task

    def fit_result(self, spec: TaskSpec, outcome: Outcome) -> dict[str, Any]:
        """The result frame; a state too big for one frame is kept on disk and the task errored,
        since a frame the server refuses would be re-sent forever and the operator never told."""
        frame = outcome.result_frame(spec)
        size = len(json.dumps(frame).encode("utf-8"))
        if size <= self.max_frame_bytes or outcome.state is None:
            return frame
        kept = Path(self.config.work_dir or tempfile.gettempdir()) / ("state-task-%d.json" % spec.task_id)
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(outcome.state), encoding="utf-8")
        logger.error("agent %s: task %d state of %d bytes kept at %s", self.config.agent_id, spec.task_id, size, kept)
        outcome.state = None
        outcome.status = "errored"
        outcome.error = (
            "the new state (%d bytes) exceeds the server's frame limit (%d bytes); it is kept on agent %s at %s"
            % (size, self.max_frame_bytes, self.config.agent_id, kept)
        )
        return outcome.result_frame(spec)

    def output(self, held: HeldTask, text: str) -> None:
        # Chunks stay far below the frame limit: Terraform output arrives in reads of 8 KiB.
        chunk = {
            "type": "task.log",
            "task_id": held.spec.task_id,
            "attempt": held.spec.attempt,
            "seq": held.next_seq,
            "text": text,
        }
        held.next_seq += 1
        held.unacked_chunks.append(chunk)
        self._spawn(self.send(chunk))

    async def execute(self, held: HeldTask) -> None:
        run = TerraformRun(
            spec=held.spec,
            terraform_bin=self.config.terraform_bin,
            on_output=lambda text: self.output(held, text),
            work_root=self.config.work_dir,
            execution_log=self.execution_log,
            passthrough=self.config.terraform_env_passthrough,
            backend_origin=self.state_proxy.start(),
        )
        held.run = run
        if self._past_deadline():
            run.cancel()
        try:
            outcome = await run.run()
        except Exception as exc:
            logger.exception("agent %s: task %d crashed", self.config.agent_id, held.spec.task_id)
            outcome = Outcome(status="errored", error="agent error: %s" % exc)
        logger.info(
            "agent %s: task %d %s (exit %s)", self.config.agent_id, held.spec.task_id, outcome.status, outcome.exit_code
        )
        held.phase = Phase.FINISHED
        held.result = self.fit_result(held.spec, outcome)
        await self.send(held.result)
        self._wake.set()
