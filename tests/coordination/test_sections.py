"""clusterstatus sections: contributed by the apps through a registry, each failing on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

import apps.coordination
from apps.coordination import sections
from apps.coordination.lockkeys import job_key
from apps.coordination.sections import status_section
from apps.coordination.status import cluster_status

pytestmark = pytest.mark.django_db


@pytest.fixture
def extra_sections() -> Iterator[list[str]]:
    added: list[str] = []
    yield added
    for name in added:
        sections._sections.pop(name, None)


def test_the_coordination_core_imports_no_domain_app() -> None:
    domain = ("apps.agents", "apps.workspaces", "apps.hub")
    offenders = []
    for path in Path(apps.coordination.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += ["%s: %s" % (path.name, n) for n in names if n.startswith(domain)]
    assert offenders == []


def test_the_apps_contribute_agents_and_tasks_sections() -> None:
    status = cluster_status()
    assert status["agents"] == {"per_pod": {}, "offline": 0}
    assert status["tasks"] == {"active": {}, "finished_last_24h": {}}


def test_a_failing_section_reports_its_error_and_the_others_still_run(extra_sections: list[str]) -> None:
    @status_section(name="broken", title="Broken", order=1)
    def broken() -> dict[str, Any]:
        raise RuntimeError("no backend")

    @status_section(name="conflicts", title="State conflicts", order=30)
    def conflicts() -> dict[str, Any]:
        return {"open": 2}

    extra_sections.extend(["broken", "conflicts"])
    status = cluster_status()
    assert status["broken"] == {"error": "RuntimeError: no backend"}
    assert status["conflicts"] == {"open": 2}
    assert "tasks" in status
    out = StringIO()
    call_command("clusterstatus", stdout=out)
    text = out.getvalue()
    assert "Broken: error: RuntimeError: no backend" in text
    assert "State conflicts: {'open': 2}" in text
    assert text.index("Broken") < text.index("Agents per pod") < text.index("Tasks active") < text.index("State")


def test_a_section_name_registered_twice_is_refused(extra_sections: list[str]) -> None:
    status_section(name="twice", title="Twice")(lambda: 1)
    extra_sections.append("twice")
    with pytest.raises(ValueError, match="registered twice"):
        status_section(name="twice", title="Twice")(lambda: 2)


def test_naming_an_advisory_lock_does_not_discover_jobs() -> None:
    code = (
        "import django, sys; django.setup();"
        "from apps.coordination.models import AdvisoryLock;"
        "from apps.coordination.lockkeys import job_key;"
        "ns, key = job_key('cmdb_sync');"
        "print(AdvisoryLock(namespace=ns, key=key).name, 'apps.workspaces.jobs' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={
            "DJANGO_SETTINGS_MODULE": "iacplatform.settings",
            "SECRET_KEY": "x",
            "DEBUG": "1",
            "DATABASE_URL": "postgresql://x@localhost/x",
            "PATH": "",
        },
    )
    assert out.stdout.split() == ["job:#%d" % job_key("cmdb_sync")[1], "False"]
