"""X-Forwarded-For is believed only from TRUSTED_PROXIES, for HTTP and WebSockets alike."""

from __future__ import annotations

from typing import Any

import pytest

from iacplatform.edge import ForwardedFor, Liveness, client_from, networks

TRUSTED = networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),  # an untrusted peer picks nothing
        ("10.1.2.3", "198.51.100.7", "198.51.100.7"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.9.9.9", "198.51.100.7"),  # spoofed left part ignored
        ("10.1.2.3", None, "10.1.2.3"),
        ("10.1.2.3", "not-an-ip", "10.1.2.3"),
        ("fd00::1", "2001:db8::5", "2001:db8::5"),
        ("10.1.2.3", "10.0.0.5, 10.0.0.6", "10.0.0.5"),
    ],
)
def test_the_client_is_the_first_untrusted_hop_from_the_right(peer: str, header: str | None, client: str) -> None:
    assert client_from(peer, header, TRUSTED) == client


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_the_middleware_rewrites_the_scope_only_for_trusted_peers(kind: str, settings: Any) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["client"])

    edge = ForwardedFor(app)
    headers = [(b"x-forwarded-for", b"198.51.100.7")]
    await edge({"type": kind, "client": ["10.0.0.2", 5000], "headers": headers}, None, None)
    await edge({"type": kind, "client": ["203.0.113.9", 5000], "headers": headers}, None, None)
    assert seen == [["198.51.100.7", 5000], ["203.0.113.9", 5000]]


async def test_healthz_is_answered_on_the_event_loop_without_django(settings: Any) -> None:
    async def django(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("reached Django")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await Liveness(django)({"type": "http", "path": "/healthz", "method": "GET"}, None, send)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b'{"status": "ok", "pod": "%s"}' % settings.POD_NAME.encode()
    with pytest.raises(AssertionError, match="reached Django"):
        await Liveness(django)({"type": "http", "path": "/readyz", "method": "GET"}, None, send)


def test_refusals_expire_and_are_bounded_in_memory() -> None:
    from iacplatform.edge import Refusals

    now = [100.0]
    refusals = Refusals(max_keys=3, clock=lambda: now[0])
    refusals.refuse("a", 5)
    assert refusals.remaining("a") == 5
    now[0] += 5
    assert refusals.remaining("a") == 0 and "a" not in refusals.until
    for key in "bcde":
        refusals.refuse(key, 10)
    assert list(refusals.until) == ["c", "d", "e"]  # the oldest forgotten first


async def test_one_client_runs_at_most_its_share_of_api_requests_at_once(settings: Any) -> None:
    import asyncio

    from iacplatform.edge import InFlight

    settings.API_MAX_IN_FLIGHT_PER_CLIENT = 2
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    release = asyncio.Event()

    async def django(scope: dict[str, Any], receive: Any, send: Any) -> None:
        who = scope["client"][0]
        running[who] = running.get(who, 0) + 1
        peak[who] = max(peak.get(who, 0), running[who])
        await release.wait()
        running[who] -= 1

    edge = InFlight(django)

    def request(address: str, path: str = "/api/v1/workspaces/") -> Any:
        scope = {"type": "http", "path": path, "client": [address, 1], "headers": [(b"authorization", b"Token t")]}
        return asyncio.create_task(edge(scope, None, None))

    greedy = [request("198.51.100.1") for _ in range(5)]
    polite = request("198.51.100.2")
    outside = [request("198.51.100.1", "/readyz") for _ in range(3)]  # not under /api/: not counted
    await asyncio.sleep(0.01)
    assert running == {"198.51.100.1": 2 + 3, "198.51.100.2": 1}  # two greedy API calls, the rest wait
    release.set()
    await asyncio.gather(*greedy, polite, *outside)
    assert edge.clients == {}  # nothing kept once a client's requests are done


def test_a_clients_cpu_share_refills_at_its_rate_up_to_the_burst_and_is_bounded_in_memory() -> None:
    from iacplatform.edge import CpuShares

    now = [100.0]
    shares = CpuShares(share=0.5, burst=2.0, max_keys=3, clock=lambda: now[0])
    assert shares.delay("a") == 0  # never charged: no debt
    shares.charge("a", 1.5)
    assert shares.delay("a") == 0  # within the burst
    shares.charge("a", 1.5)  # 1 CPU-second in debt
    assert shares.delay("a") == pytest.approx(2.0)  # repaid at 0.5 per second
    now[0] += 1
    assert shares.delay("a") == pytest.approx(1.0)
    now[0] += 100
    shares.charge("a", 2.5)  # the refill stops at the burst: 2 - 2.5
    assert shares.delay("a") == pytest.approx(1.0)
    for key in "bcd":
        shares.charge(key, 0.1)
    assert list(shares.buckets) == ["b", "c", "d"]  # the least recently charged forgotten first
    assert CpuShares(share=0, burst=1).delay("x") == 0


async def test_a_client_over_its_cpu_share_waits_before_django_and_others_do_not(settings: Any) -> None:
    import asyncio
    import time

    from iacplatform import edge

    settings.API_MAX_IN_FLIGHT_PER_CLIENT = 2
    settings.API_CLIENT_CPU_SHARE = 1.0
    settings.API_CLIENT_CPU_BURST_SECONDS = 1.0
    edge.cpu_shares.buckets.clear()
    entered: dict[str, float] = {}

    async def django(scope: dict[str, Any], receive: Any, send: Any) -> None:
        entered[scope["client"][0]] = time.monotonic()

    def scope(address: str) -> dict[str, Any]:
        return {"type": "http", "path": "/api/v1/workspaces/", "client": [address, 1], "headers": []}

    greedy, polite = edge.scope_key(scope("198.51.100.1")), edge.scope_key(scope("198.51.100.2"))
    edge.cpu_shares.charge(greedy, 1.3)  # 0.3 CPU-seconds in debt: 0.3 s at one per second
    edge.cpu_shares.charge(polite, 0.2)
    app = edge.InFlight(django)
    started = time.monotonic()
    await asyncio.gather(app(scope("198.51.100.1"), None, None), app(scope("198.51.100.2"), None, None))
    assert entered["198.51.100.2"] - started < 0.1
    assert entered["198.51.100.1"] - started >= 0.25
    settings.API_MAX_IN_FLIGHT_PER_CLIENT = 0  # the share holds without the in-flight limit too
    edge.cpu_shares.charge(greedy, 1.3)
    started = time.monotonic()
    await app(scope("198.51.100.1"), None, None)
    assert entered["198.51.100.1"] - started >= 0.25
    edge.cpu_shares.buckets.clear()


@pytest.mark.django_db
def test_each_api_request_is_charged_the_cpu_time_of_its_thread_to_its_client(client: Any) -> None:
    from django.contrib.auth import get_user_model

    from apps.access.tokens import do_create_token
    from iacplatform import edge

    edge.cpu_shares.buckets.clear()
    user = get_user_model().objects.create_user("cpu-share", password="x" * 20)
    token = do_create_token(user=user)[1]
    response = client.get("/api/v1/workspaces/", HTTP_AUTHORIZATION="Token " + token)
    assert response.status_code == 200
    key = edge.refusal_key("Token " + token, "", "127.0.0.1")
    assert list(edge.cpu_shares.buckets) == [key]
    left, _ = edge.cpu_shares.buckets[key]
    assert 0 < left < edge.cpu_shares.burst  # charged what it used, more than nothing
    assert client.get("/readyz").status_code in (200, 503)
    assert list(edge.cpu_shares.buckets) == [key]  # outside /api/: not charged
    edge.cpu_shares.buckets.clear()
