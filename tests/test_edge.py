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
