"""Two real daphne replicas on one database, as `make run` starts them."""

from __future__ import annotations

import json
import urllib.request

import pytest

from harness.processes import ProcessGroup

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - local test URL
        return response.status, response.read().decode()


def test_two_web_replicas_answer_probes_and_serve_the_admin_login(processes: ProcessGroup) -> None:
    replicas = [processes.daphne("web-a"), processes.daphne("web-b")]
    for replica in replicas:
        status, body = _get(replica.url + "/healthz")
        assert status == 200
        assert json.loads(body) == {"status": "ok", "pod": replica.name}
        status, body = _get(replica.url + "/readyz")
        assert status == 200
        status, body = _get(replica.url + "/admin/login/")
        assert status == 200
        assert 'name="username"' in body
        # Static files are served with DEBUG off too (WhiteNoise): the admin is usable in production.
        status, body = _get(replica.url + "/static/admin/css/base.css")
        assert status == 200
        assert "body" in body
        status, body = _get(replica.url + "/api/v1/schema/")
        assert status == 200
        assert "openapi" in body
