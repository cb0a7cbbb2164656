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


def test_a_clients_recent_usage_is_a_moving_average_of_its_cpu_seconds_per_second(settings: Any) -> None:
    import math

    from iacplatform.edge import USAGE_SECONDS, CpuShares

    now = [100.0]
    shares = CpuShares(share=0.5, burst=2.0, clock=lambda: now[0])
    assert shares.usage("a") == 0
    for _ in range(400):  # 10 ms of CPU every 20 ms for 8 s: half a core
        shares.charge("a", 0.010)
        now[0] += 0.020
    assert shares.usage("a") == pytest.approx(0.5, rel=0.05)
    now[0] += USAGE_SECONDS
    assert shares.usage("a") == pytest.approx(0.5 * math.exp(-1), rel=0.05)  # idle: it decays
    settings.API_CLIENT_BACKGROUND_USAGE = 0.25
    off = CpuShares(share=0, burst=1, clock=lambda: now[0])
    off.charge("b", 1.0)
    assert off.usage("b") > 0  # kept for the lanes even with the share off
    settings.API_CLIENT_BACKGROUND_USAGE = 0
    off.charge("c", 1.0)
    assert off.usage("c") == 0  # both off: nothing kept


def _lane_app(settings: Any) -> tuple[Any, dict[str, Any]]:
    import asyncio

    from iacplatform import edge

    settings.API_MAX_IN_FLIGHT_PER_CLIENT = 2
    settings.API_CLIENT_CPU_SHARE = 0.5
    settings.API_CLIENT_BACKGROUND_USAGE = 0.25
    settings.API_BACKGROUND_MAX_WAIT_SECONDS = 5.0
    edge.cpu_shares.buckets.clear()
    state: dict[str, Any] = {"running": [], "log": [], "release": {}}

    async def django(scope: dict[str, Any], receive: Any, send: Any) -> None:
        who = scope["client"][0]
        state["log"].append(("start", who, sorted(state["running"])))
        state["running"].append(who)
        release = state["release"].setdefault(who, asyncio.Event())
        await release.wait()
        state["running"].remove(who)

    return edge.InFlight(django), state


def _lane_request(app: Any, address: str, token: str, path: str = "/api/v1/workspaces/") -> Any:
    import asyncio

    scope = {"type": "http", "path": path, "client": [address, 1], "headers": [(b"authorization", token.encode())]}
    return asyncio.create_task(app(scope, None, None))


def _lane_key(address: str, token: str) -> str:
    from iacplatform import edge

    return edge.refusal_key(token, "", address)


async def test_a_heavy_client_runs_behind_the_others_one_request_at_a_time(settings: Any) -> None:
    import asyncio

    from iacplatform import edge

    app, state = _lane_app(settings)
    heavy, other = ("198.51.100.1", "Token heavy"), ("198.51.100.2", "Token other")
    heavy_two = ("198.51.100.3", "Token heavy-two")
    for address, token in (heavy, heavy_two):
        edge.cpu_shares.charge(_lane_key(address, token), 0.9)  # 0.45 of a core lately, within its share
    assert edge.cpu_shares.delay(_lane_key(*heavy)) == 0
    polite = _lane_request(app, *other)
    await asyncio.sleep(0.01)
    first = _lane_request(app, *heavy)
    second = _lane_request(app, *heavy_two)
    admin = _lane_request(app, "198.51.100.2", "Token other", "/admin/")  # outside /api/: foreground too
    await asyncio.sleep(0.05)
    assert state["running"] == ["198.51.100.2", "198.51.100.2"]  # the heavy ones wait for the others
    state["release"]["198.51.100.2"].set()
    await asyncio.wait_for(asyncio.gather(polite, admin), 1)
    await asyncio.sleep(0.01)
    assert len(state["running"]) == 1  # then one background request at a time
    started = state["running"][0]
    state["release"]["198.51.100.2"] = asyncio.Event()
    late = _lane_request(app, *other)  # a foreground request goes straight in beside it
    await asyncio.sleep(0.01)
    assert sorted(state["running"]) == sorted([started, "198.51.100.2"])
    state["release"][started].set()
    await asyncio.sleep(0.01)
    assert state["running"] == ["198.51.100.2"]  # the other heavy request waits for the later foreground one
    state["release"]["198.51.100.2"].set()
    await asyncio.wait_for(late, 1)
    for who in ("198.51.100.1", "198.51.100.3"):
        state["release"].setdefault(who, asyncio.Event()).set()
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    starts = [(who, beside) for kind, who, beside in state["log"] if who != "198.51.100.2"]
    assert starts == [(started, []), ({"198.51.100.1", "198.51.100.3"}.difference({started}).pop(), [])]
    assert edge.lanes.foreground == 0 and not edge.lanes.background_busy
    edge.cpu_shares.buckets.clear()


async def test_a_heavy_client_waits_at_most_the_maximum_and_alone_waits_for_nothing(settings: Any) -> None:
    import asyncio
    import time

    from iacplatform import edge

    app, state = _lane_app(settings)
    settings.API_BACKGROUND_MAX_WAIT_SECONDS = 0.2
    heavy = ("198.51.100.1", "Token heavy")
    edge.cpu_shares.charge(_lane_key(*heavy), 0.9)
    state["release"]["198.51.100.1"] = asyncio.Event()
    state["release"]["198.51.100.1"].set()
    started = time.monotonic()
    await asyncio.wait_for(_lane_request(app, *heavy), 1)
    assert time.monotonic() - started < 0.1  # nobody else in Django: straight in
    busy = _lane_request(app, "198.51.100.2", "Token other")  # a foreground request that never ends
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await asyncio.wait_for(_lane_request(app, *heavy), 2)
    assert 0.2 <= time.monotonic() - started < 1.0  # waited the maximum, then ran beside it
    state["release"].setdefault("198.51.100.2", asyncio.Event()).set()
    await busy
    settings.API_CLIENT_BACKGROUND_USAGE = 0  # off: the same client is not held
    busy = _lane_request(app, "198.51.100.2", "Token other")
    state["release"]["198.51.100.2"] = asyncio.Event()
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await asyncio.wait_for(_lane_request(app, *heavy), 1)
    assert time.monotonic() - started < 0.1
    state["release"]["198.51.100.2"].set()
    await busy
    edge.cpu_shares.buckets.clear()


async def test_a_heavy_request_cancelled_while_it_waits_leaves_the_lane_free(settings: Any) -> None:
    import asyncio

    from iacplatform import edge

    app, state = _lane_app(settings)
    heavy = ("198.51.100.1", "Token heavy")
    edge.cpu_shares.charge(_lane_key(*heavy), 0.9)
    busy = _lane_request(app, "198.51.100.2", "Token other")
    await asyncio.sleep(0.01)
    waiting = _lane_request(app, *heavy)  # the client hangs up while it waits
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not edge.lanes.background_busy
    state["release"]["198.51.100.2"].set()
    await busy
    state["release"]["198.51.100.1"] = asyncio.Event()
    state["release"]["198.51.100.1"].set()
    await asyncio.wait_for(_lane_request(app, *heavy), 1)  # the lane is free for its next request
    assert edge.lanes.foreground == 0 and not edge.lanes.background_busy and edge.lanes._waiters == []
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
    left = edge.cpu_shares.buckets[key][0]
    assert 0 < left < edge.cpu_shares.burst  # charged what it used, more than nothing
    assert client.get("/readyz").status_code in (200, 503)
    assert list(edge.cpu_shares.buckets) == [key]  # outside /api/: not charged
    edge.cpu_shares.buckets.clear()
