"""X-Forwarded-For is believed only from TRUSTED_PROXIES, for HTTP and WebSockets alike."""

from __future__ import annotations

import time
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
    """InFlight over a fake Django whose request NAME (its path) runs until released."""
    import asyncio

    from iacplatform import edge

    settings.API_MAX_IN_FLIGHT_PER_CLIENT = 2
    settings.API_CLIENT_CPU_SHARE = 0.5
    settings.API_CLIENT_BACKGROUND_USAGE = 0.1
    settings.API_BACKGROUND_MAX_WAIT_SECONDS = 5.0
    edge.cpu_shares.buckets.clear()
    state: dict[str, Any] = {"running": set(), "started": {}, "release": {}}

    async def django(scope: dict[str, Any], receive: Any, send: Any) -> None:
        name = scope["path"].rstrip("/").rsplit("/", 1)[-1]
        state["started"][name] = (time.monotonic(), set(state["running"]))
        state["running"].add(name)
        await state["release"].setdefault(name, asyncio.Event()).wait()
        state["running"].discard(name)

    return edge.InFlight(django), state


def _lane_request(app: Any, state: dict[str, Any], client: str, name: str, *, api: bool = True) -> Any:
    import asyncio

    path = ("/api/v1/x/%s/" if api else "/admin/%s/") % name
    scope = {"type": "http", "path": path, "client": [client, 1], "headers": [(b"authorization", b"Token t")]}
    state["release"].setdefault(name, asyncio.Event())
    return asyncio.create_task(app(scope, None, None))


def _heavy(client: str) -> None:
    from iacplatform import edge

    edge.cpu_shares.charge(edge.refusal_key("Token t", "", client), 0.9)  # 0.45 of a core lately


async def _settle() -> None:
    import asyncio

    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_a_heavy_client_runs_behind_the_others_one_request_at_a_time(settings: Any) -> None:
    import asyncio

    from iacplatform import edge

    app, state = _lane_app(settings)
    for heavy in ("198.51.100.1", "198.51.100.3"):
        _heavy(heavy)
        assert edge.cpu_shares.delay(edge.refusal_key("Token t", "", heavy)) == 0  # within its share
    tasks = [_lane_request(app, state, "198.51.100.2", "polite")]
    await _settle()
    # Each heavy client's first request is its only one outstanding: straight in. Its second is
    # asked before the first is answered: behind the others.
    for heavy, name in (("198.51.100.1", "h"), ("198.51.100.3", "k")):
        tasks += [_lane_request(app, state, heavy, name + "1"), _lane_request(app, state, heavy, name + "2")]
        await _settle()
    tasks.append(_lane_request(app, state, "198.51.100.2", "admin", api=False))  # outside /api/: foreground
    await _settle()
    assert state["running"] == {"polite", "h1", "k1", "admin"}
    for name in ("polite", "h1", "k1", "admin"):
        state["release"][name].set()
    await _settle()
    [first] = state["running"]  # the others are done: one background request, not two
    assert first in ("h2", "k2") and state["started"][first][1] == set()
    tasks.append(_lane_request(app, state, "198.51.100.2", "late"))  # foreground: straight in beside it
    await _settle()
    assert state["running"] == {first, "late"}
    state["release"][first].set()
    await _settle()
    assert state["running"] == {"late"}  # the other background request waits for the later foreground one
    state["release"]["late"].set()
    await _settle()
    [second] = state["running"]
    assert {first, second} == {"h2", "k2"} and state["started"][second][1] == set()
    state["release"][second].set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert edge.lanes.foreground == 0 and not edge.lanes.background_busy and edge.lanes.idle.is_set()
    edge.cpu_shares.buckets.clear()


async def test_a_heavy_client_waits_at_most_the_maximum_and_alone_waits_for_nothing(settings: Any) -> None:
    import asyncio

    from iacplatform import edge

    app, state = _lane_app(settings)
    heavy = "198.51.100.1"
    _heavy(heavy)
    settings.API_BACKGROUND_MAX_WAIT_SECONDS = 0.3
    busy = _lane_request(app, state, "198.51.100.2", "busy")  # a foreground request that does not end
    await _settle()
    one, two = _lane_request(app, state, heavy, "one"), _lane_request(app, state, heavy, "two")
    asked = time.monotonic()
    await _settle()
    assert state["running"] == {"busy", "one"}
    state["release"]["one"].set()
    await asyncio.sleep(0.6)
    assert 0.3 <= state["started"]["two"][0] - asked < 1.0  # waited the maximum, then ran beside it
    state["release"]["two"].set()
    state["release"]["busy"].set()
    await asyncio.gather(busy, one, two)
    # Alone on the replica: its background request waits for nothing but its own foreground one.
    three, four = _lane_request(app, state, heavy, "three"), _lane_request(app, state, heavy, "four")
    await _settle()
    assert state["running"] == {"three"}
    released = time.monotonic()
    state["release"]["three"].set()
    await _settle()
    assert state["running"] == {"four"} and state["started"]["four"][0] - released < 0.1
    state["release"]["four"].set()
    await asyncio.gather(three, four)
    # A client that waits for each answer is never held, whatever it uses; nor anyone with the lane off.
    busy = _lane_request(app, state, "198.51.100.2", "busy2")
    await _settle()
    state["release"]["alone"] = asyncio.Event()
    state["release"]["alone"].set()
    started = time.monotonic()
    await asyncio.wait_for(_lane_request(app, state, heavy, "alone"), 1)
    assert time.monotonic() - started < 0.1
    settings.API_CLIENT_BACKGROUND_USAGE = 0
    five, six = _lane_request(app, state, heavy, "five"), _lane_request(app, state, heavy, "six")
    await _settle()
    assert state["running"] == {"busy2", "five", "six"}
    for name in ("busy2", "five", "six"):
        state["release"][name].set()
    await asyncio.gather(busy, five, six)
    edge.cpu_shares.buckets.clear()


async def test_a_heavy_request_cancelled_while_it_waits_leaves_the_lane_free(settings: Any) -> None:
    import asyncio

    from iacplatform import edge

    app, state = _lane_app(settings)
    heavy = "198.51.100.1"
    _heavy(heavy)
    busy = _lane_request(app, state, "198.51.100.2", "busy")
    await _settle()
    first, waiting = _lane_request(app, state, heavy, "first"), _lane_request(app, state, heavy, "waiting")
    await _settle()
    assert "waiting" not in state["running"]
    waiting.cancel()  # the client hangs up while it waits
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not edge.lanes.background_busy
    state["release"]["first"].set()
    state["release"]["busy"].set()
    await asyncio.gather(first, busy)
    again, next_ = _lane_request(app, state, heavy, "again"), _lane_request(app, state, heavy, "next")
    await _settle()
    state["release"]["again"].set()
    state["release"]["next"].set()
    await asyncio.wait_for(asyncio.gather(again, next_), 1)  # the lane is free for its next request
    assert "next" in state["started"]
    assert edge.lanes.foreground == 0 and not edge.lanes.background_busy and edge.lanes._waiters == []
    edge.cpu_shares.buckets.clear()


async def test_a_running_background_request_yields_at_its_queries_while_a_foreground_one_runs() -> None:
    import asyncio
    import types

    from iacplatform import edge

    lanes = edge.Lanes()
    assert lanes.pause(time.monotonic() + 5) == 0  # no foreground request: no wait
    async with lanes.foreground_turn():
        thread = asyncio.ensure_future(asyncio.to_thread(lanes.pause, time.monotonic() + 5))
        await asyncio.sleep(0.2)
        assert not thread.done()  # held while the foreground request runs
    assert 0.15 < await asyncio.wait_for(thread, 1) < 1.0  # and let go as soon as it ends
    async with lanes.foreground_turn():
        assert await asyncio.to_thread(lanes.pause, time.monotonic() + 0.1) == pytest.approx(0.1, abs=0.08)
        assert await asyncio.to_thread(lanes.pause, time.monotonic() - 1) == 0  # its wait is spent
    # The query wrapper: waits outside a transaction, never inside one (it may hold locks).
    calls = []

    def execute(*args: Any) -> str:
        calls.append(args)
        return "done"

    wrapper = edge._yield_to_foreground(time.monotonic() + 5)
    async with edge.lanes.foreground_turn():
        atomic = {"connection": types.SimpleNamespace(in_atomic_block=True)}
        started = time.monotonic()
        assert await asyncio.to_thread(wrapper, execute, "SELECT 1", None, False, atomic) == "done"
        assert time.monotonic() - started < 0.1
        plain = {"connection": types.SimpleNamespace(in_atomic_block=False)}
        query = asyncio.ensure_future(asyncio.to_thread(wrapper, execute, "SELECT 2", None, False, plain))
        await asyncio.sleep(0.2)
        assert not query.done() and len(calls) == 1
    assert await asyncio.wait_for(query, 1) == "done" and len(calls) == 2


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
