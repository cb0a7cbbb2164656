"""A real daphne replica charges each API request the CPU time its thread used to its client
(iacplatform/edge.ChargeCpu), and holds a client in debt before Django while another client's
requests go straight through (edge.InFlight, edge.CpuShares)."""

from __future__ import annotations

import http.client
import time

import pytest
from django.contrib.auth import get_user_model

from harness.processes import ProcessGroup
from tests.access.fixtures import api_token

pytestmark = pytest.mark.slow
METRICS_TOKEN = "cpu-share-metrics"


def timed_get(port: int, token: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.monotonic()
    conn.request("GET", "/api/v1/workspaces/", headers={"Authorization": "Token " + token})
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    return time.monotonic() - started


def test_a_client_in_debt_waits_before_django_and_another_client_does_not(processes: ProcessGroup) -> None:
    users = get_user_model().objects
    greedy = api_token(users.create_superuser("cpu-greedy", password="x" * 20))
    polite = api_token(users.create_superuser("cpu-polite", password="x" * 20))
    # A share of 1 ms of CPU per second and a burst of 1 us: the first request puts its client in
    # debt by what it used (a few ms of CPU: seconds to repay); nobody else's is affected.
    env = {
        "API_THROTTLE_USER_RATE": "",
        "API_CLIENT_CPU_SHARE": "0.001",
        "API_CLIENT_CPU_BURST_SECONDS": "0.000001",
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    web = processes.daphne("web-cpu-share", env=env)
    port = web.port or 0
    first = timed_get(port, greedy)
    held = timed_get(port, greedy)
    other = timed_get(port, polite)
    assert held > 1.0, (first, held, other)  # waited for its debt: it was charged CPU time
    assert other < held / 2, (first, held, other)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics", headers={"Authorization": "Bearer " + METRICS_TOKEN})
    metrics = conn.getresponse().read().decode()
    # Operators see it: one request held (the greedy one's second), for about as long as it waited.
    assert "iacplatform_api_cpu_share_waits_total 1.0" in metrics, metrics
    [waited] = [
        line for line in metrics.splitlines() if line.startswith("iacplatform_api_cpu_share_wait_seconds_total ")
    ]
    assert 0.5 * held < float(waited.split()[1]) <= held, (waited, held)
