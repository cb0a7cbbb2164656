"""The edge of the HTTP/WebSocket stack, before Django: who the client is (:class:`ForwardedFor`),
liveness (:class:`Liveness`), and REST clients already refused by the throttles refused again on
the event loop (:class:`ThrottleShortcut`, see its docstring).

Who the client is: ``X-Forwarded-For`` believed only from the proxies in TRUSTED_PROXIES.

daphne's ``--proxy-headers`` takes the header from anyone, so any client could pick the address
its throttling, connection caps and logs are keyed on. This ASGI middleware (the outermost layer
of iacplatform/asgi.py, for HTTP and WebSockets alike) rewrites ``scope["client"]`` only when the
peer is a trusted proxy: it walks the header from the right, past trusted proxies, and takes the
first address that is not one. Guarantees: a peer outside TRUSTED_PROXIES is its own address,
whatever it sends. Does NOT: validate that a trusted proxy tells the truth (that is what trusting
it means), or read ``Forwarded`` (RFC 7239; the ingress sends ``X-Forwarded-For``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from django.conf import settings
from django.db import connection
from prometheus_client import Counter

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr.strip()]


def _trusted(address: str, trusted: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_from(peer: str, forwarded_for: str | None, trusted: list[Network]) -> str:
    """The client's address: the peer itself unless it is a trusted proxy, then the rightmost
    address of X-Forwarded-For that is not a trusted proxy (or the leftmost, if all are)."""
    if not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop.strip("[]")))
            except ValueError:
                return peer  # garbage from behind the proxy: stay with what we know
    return hops[0] if hops else peer


class ForwardedFor:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.trusted: list[Network] | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("client"):
            if self.trusted is None:
                self.trusted = networks(settings.TRUSTED_PROXIES)
            if self.trusted:
                header = None
                for name, value in scope.get("headers", []):
                    if name.lower() == b"x-forwarded-for":
                        header = value.decode("latin-1")
                peer, port = scope["client"][0], scope["client"][1]
                client = client_from(peer, header, self.trusted)
                if client != peer:
                    scope = {**scope, "client": [client, port]}
        await self.app(scope, receive, send)


class Liveness:
    """``GET /healthz`` answered on the event loop, before Django.

    Django runs sync views and the sync-only WhiteNoise middleware on one shared thread, the same
    one every consumer's database call queues on: a socket flood used to hold the liveness probe
    for seconds behind it (and the kubelet would kill a replica that is merely busy). Liveness
    means "the event loop turns", so it is answered here; the Django view of the same path stays
    for runserver and the test client. /readyz, which does I/O, stays in Django.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/healthz" and scope.get("method") in ("GET", "HEAD"):
            body = json.dumps({"status": "ok", "pod": settings.POD_NAME}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
            return
        await self.app(scope, receive, send)


class Refusals:
    """REST throttle refusals this replica already knows about, by a key of the request's
    credentials and client address (:func:`refusal_key`), each until the time DRF said.

    Sound because DRF's throttles count only admitted requests: until a refused history's oldest
    entry expires (the wait DRF answered with), every request of the same identity is refused
    again, on any replica; the key is derived from everything the throttles key on (the
    credential decides the user, the address the anonymous source), so a hit is a request DRF
    would refuse too. Bounded: at most ``max_keys`` kept, the oldest forgotten first (a miss
    only costs the normal path). Written from request threads, read on the event loop: single
    dict operations, atomic under the GIL.
    """

    def __init__(self, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.until: dict[str, float] = {}
        self.max_keys = max_keys
        self.clock = clock

    def refuse(self, key: str, seconds: float) -> None:
        self.until.pop(key, None)
        while len(self.until) >= self.max_keys:
            self.until.pop(next(iter(self.until)), None)
        self.until[key] = self.clock() + max(seconds, 0.0)

    def remaining(self, key: str) -> float:
        until = self.until.get(key)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            self.until.pop(key, None)
            return 0.0
        return left


refusals = Refusals()


def refusal_key(authorization: str, cookie: str, address: str) -> str:
    digest = hashlib.sha256("\0".join((authorization, cookie, address)).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:32]


SCOPE_KEY = "iacplatform.client_key"


def scope_key(scope: Scope) -> str:
    """:func:`refusal_key` of an ASGI request, as Django's request.META will show it; computed
    once per request (kept in the scope, which every layer below and Django's request share)."""
    key = scope.get(SCOPE_KEY)
    if key is None:
        key = scope[SCOPE_KEY] = _scope_key(scope)
    return str(key)


def request_key(request: Any) -> str:
    """The same key for a Django request: its ASGI scope's, or (the test client) from META."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        return scope_key(scope)
    meta = request.META
    return refusal_key(meta.get("HTTP_AUTHORIZATION", ""), meta.get("HTTP_COOKIE", ""), meta.get("REMOTE_ADDR", ""))


def _scope_key(scope: Scope) -> str:
    authorization, cookie = [], []
    for name, value in scope.get("headers", []):
        lowered = name.lower()
        if lowered == b"authorization":
            authorization.append(value.decode("latin-1"))
        elif lowered == b"cookie":
            cookie.append(value.decode("latin-1"))
    client = scope.get("client")
    return refusal_key(",".join(authorization), ",".join(cookie), str(client[0]) if client else "")


class CpuShares:
    """Each client's CPU time in Django on this replica, as a token bucket of CPU-seconds: it
    refills at ``share`` seconds per second up to ``burst``, and every request of the client is
    charged the CPU time its thread used (:class:`ChargeCpu`). A client in debt waits before its
    next request runs (:class:`InFlight`) until the refill has paid the debt back.

    Why: the throttles count requests, and requests differ in cost by orders of magnitude; a
    per-minute rate admits a minute's budget at once (bench_isolation's REST flood never reached
    it in 11 s). Counted in CPU time, one client gets at most ``share`` of a CPU on average,
    whatever it asks for, so the others keep the rest. CPU time, not wall time: waiting for the
    database or for the GIL under someone else's load is not the client's cost.
    It also keeps each client's recent usage (:meth:`usage`: CPU-seconds per second, a moving
    average over ``USAGE_SECONDS``), by which :class:`Lanes` serves a heavy client behind the
    others even while it is within its share. Bounded: at most
    ``max_keys`` clients kept, the least recently charged forgotten first (a forgotten debt is
    forgiven: it costs at most one burst). Written from request threads, read on the event loop,
    without a lock: two charges of one client at the same instant may keep only one (a request's
    cost forgiven, never a client refused more). Does NOT: count across replicas (a client spread over N
    replicas gets N shares), or interrupt a request that is running (its cost is charged after).
    """

    def __init__(
        self,
        *,
        share: float | None = None,
        burst: float | None = None,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._share = share  # None: API_CLIENT_CPU_SHARE, read at each use
        self._burst = burst  # None: API_CLIENT_CPU_BURST_SECONDS
        self.max_keys = max_keys
        self.clock = clock
        # key -> (CPU-seconds left, when, recent usage in CPU-seconds per second, as of when)
        self.buckets: dict[str, tuple[float, float, float]] = {}

    @property
    def share(self) -> float:
        return float(settings.API_CLIENT_CPU_SHARE if self._share is None else self._share)

    @property
    def burst(self) -> float:
        return float(settings.API_CLIENT_CPU_BURST_SECONDS if self._burst is None else self._burst)

    def _now(self, key: str, now: float) -> tuple[float, float]:
        """(CPU-seconds left, recent usage) of ``key`` at ``now``."""
        tokens, when, usage = self.buckets.get(key, (self.burst, now, 0.0))
        elapsed = max(now - when, 0.0)
        return min(self.burst, tokens + elapsed * self.share), usage * math.exp(-elapsed / USAGE_SECONDS)

    def _left(self, key: str, now: float) -> float:
        return self._now(key, now)[0]

    def charge(self, key: str, seconds: float) -> None:
        if self.share <= 0 and settings.API_CLIENT_BACKGROUND_USAGE <= 0:
            return
        now = self.clock()
        left, usage = self._now(key, now)
        seconds = max(seconds, 0.0)
        self.buckets.pop(key, None)
        while len(self.buckets) >= self.max_keys:
            self.buckets.pop(next(iter(self.buckets)), None)
        # An exponential moving average of the CPU-seconds per second: a charge adds seconds/tau,
        # which decays by e^(-t/tau); a client using R of a core steadily reads R.
        self.buckets[key] = (left - seconds, now, usage + seconds / USAGE_SECONDS)

    def usage(self, key: str) -> float:
        """The client's recent CPU usage on this replica, in CPU-seconds per second (0 if unknown)."""
        if key not in self.buckets:
            return 0.0
        return self._now(key, self.clock())[1]

    def delay(self, key: str) -> float:
        """Seconds until ``key`` is out of debt (0 if it is not in debt)."""
        if self.share <= 0 or key not in self.buckets:
            return 0.0
        left = self._left(key, self.clock())
        return 0.0 if left >= 0 else -left / self.share


USAGE_SECONDS = 2.0  # the time constant of CpuShares.usage's moving average
cpu_shares = CpuShares()
SHARE_WAITS = Counter(
    "iacplatform_api_cpu_share_waits_total",
    "API requests held before Django because their client was over its CPU share.",
)
SHARE_WAIT_SECONDS = Counter(
    "iacplatform_api_cpu_share_wait_seconds_total", "Seconds API requests were held for their client's CPU share."
)


class Lanes:
    """Which requests run in Django now on this replica: the heavy clients' behind everyone else's.

    A request under ``/api/`` whose client has more than one request outstanding on this replica
    (in Django or waiting in :class:`InFlight`: it asks again before it has its answers) and
    recently used more than ``API_CLIENT_BACKGROUND_USAGE`` of a core here
    (:meth:`CpuShares.usage`) runs in the background lane: one such request at a time on the
    replica, started only while no other request is in Django, or once it has waited
    ``API_BACKGROUND_MAX_WAIT_SECONDS``. Every other request (foreground) goes straight in; a
    client that waits for each answer is never held, whatever it uses (usage alone caught the
    benchmark's polite client, a sequential one at 0.23 of a core).

    A background request already running yields too: before each of its queries outside a
    transaction, its thread waits while a foreground request is in Django (:meth:`pause`,
    installed by :class:`ChargeCpu`). Nothing can preempt a Python thread, but a query is a
    point where stopping costs nothing: what runs beside a foreground request is then at most
    the background request's work between two queries. Inside a transaction it never waits (it
    may hold row locks the foreground request needs).

    Why: within its CPU share a client still runs beside everyone else's requests, and one
    process's requests share one GIL and the event loop: bench_isolation's REST flood, 0.46 of a
    core at 46 requests per second and never over its share, made another client's REST list 3-5x
    slower at p99 (its /healthz and socket round trips 2-4x). A heavy client alone on the replica
    waits for nothing.
    Guarantees: at most one background request in Django at a time; a background request is held
    (before it starts and at its queries together) at most the maximum wait, then (behind any
    other background one) runs. Does NOT: stop a background request between its queries, or in
    a transaction; count across replicas; apply to the WebSocket consumers (their frames have
    their own rate limits, iacplatform/wsflow.py). The counts change on the event loop only;
    request threads read ``idle`` (a threading.Event, set while no foreground request runs).
    """

    def __init__(self) -> None:
        self.foreground = 0
        self.background_busy = False
        self._waiters: list[asyncio.Future[None]] = []
        self.idle = threading.Event()
        self.idle.set()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def foreground_turn(self) -> AsyncIterator[None]:
        self.foreground += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.foreground -= 1
            if self.foreground == 0:
                self.idle.set()
                self._wake()

    def pause(self, until: float) -> float:
        """On a background request's thread: wait while a foreground request is in Django, at
        most until ``until`` (time.monotonic); returns the seconds waited."""
        left = until - time.monotonic()
        if left <= 0 or self.idle.is_set():
            return 0.0
        started = time.monotonic()
        self.idle.wait(left)
        return time.monotonic() - started

    @contextlib.asynccontextmanager
    async def background_turn(self, max_wait: float) -> AsyncIterator[float]:
        """Waits for the background lane; yields the seconds waited."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + max_wait
        while self.background_busy or (self.foreground and loop.time() < deadline):
            waiter = loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, None if self.background_busy else deadline - loop.time())
        self.background_busy = True
        try:
            yield loop.time() - started
        finally:
            self.background_busy = False
            self._wake()


lanes = Lanes()
BACKGROUND_UNTIL = "iacplatform.background_until"  # in a background request's scope: its deadline
BACKGROUND_REQUESTS = Counter(
    "iacplatform_api_background_requests_total",
    "API requests run in the background lane (their client over API_CLIENT_BACKGROUND_USAGE).",
)
BACKGROUND_WAIT_SECONDS = Counter(
    "iacplatform_api_background_wait_seconds_total",
    "Seconds background-lane API requests were held, before they started and at their queries.",
)


def _api(path: str) -> bool:
    return path.startswith("/api/")


class ChargeCpu:
    """Django middleware (first in MIDDLEWARE): charges each request under ``/api/`` the CPU time
    of its thread to its client (:class:`CpuShares`), keyed as :func:`scope_key` keys the next.
    The CPU time is the thread's: the sync middleware and the view, which Django runs on the
    request's own thread (asgiref's ThreadSensitiveContext); not the event loop's share."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        if not _api(request.path):
            return self.get_response(request)
        started = time.thread_time()
        until = getattr(request, "scope", {}).get(BACKGROUND_UNTIL)
        try:
            if until is None:
                return self.get_response(request)
            with connection.execute_wrapper(_yield_to_foreground(until)):
                return self.get_response(request)
        finally:
            cpu_shares.charge(request_key(request), time.thread_time() - started)


def _yield_to_foreground(until: float) -> Callable[..., Any]:
    """A query wrapper of a background request (:class:`Lanes`): before each query outside a
    transaction, its thread waits while a foreground request is in Django."""

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if not context["connection"].in_atomic_block:
            waited = lanes.pause(until)
            if waited:
                BACKGROUND_WAIT_SECONDS.inc(waited)
        return execute(sql, params, many, context)

    return wrapper


class InFlight:
    """At most ``API_MAX_IN_FLIGHT_PER_CLIENT`` requests under ``/api/`` of one client (its
    credentials and address, :func:`scope_key`) run at once on this replica; the others wait,
    in order, on the event loop, before Django.

    Why: within its rate a client may still send as many requests at once as it opens
    connections, and each runs on a thread of its own, sharing the CPUs and the GIL with
    everyone's: four at once from one client made another client's requests up to 3x slower
    (bench_isolation's REST flood). Waiting costs no thread and no query. Does NOT: bound how many
    clients, or how many credentials of one user, run at once; count across replicas.
    A client over its CPU share (:class:`CpuShares`) waits here too, holding its own turn (so its
    other requests wait behind it), until its debt is paid back; then its request runs in the
    foreground or, for a heavy client, the background lane (:class:`Lanes`). Every other HTTP
    request (outside ``/api/``) runs in the foreground.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.clients: dict[str, list[Any]] = {}  # key -> [its semaphore, requests holding or waiting]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not _api(scope.get("path", "")):
            async with lanes.foreground_turn():
                await self.app(scope, receive, send)
            return
        limit = settings.API_MAX_IN_FLIGHT_PER_CLIENT
        key = scope_key(scope)
        entry = self.clients.get(key)
        if entry is None:
            entry = self.clients[key] = [asyncio.Semaphore(limit) if limit > 0 else None, 0]
        entry[1] += 1
        try:
            async with entry[0] or contextlib.nullcontext():
                await self._run(key, entry, scope, receive, send)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self.clients[key]

    async def _run(self, key: str, entry: list[Any], scope: Scope, receive: Any, send: Any) -> None:
        await self._wait_for_share(key)
        # Heavy: more than one request outstanding here (it does not wait for its answers before
        # it asks again) and a real share of a core lately. A client that waits for each answer
        # is never held behind the others, whatever it uses.
        heavy = settings.API_CLIENT_BACKGROUND_USAGE
        if heavy > 0 and entry[1] > 1 and cpu_shares.usage(key) > heavy:
            BACKGROUND_REQUESTS.inc()
            max_wait = settings.API_BACKGROUND_MAX_WAIT_SECONDS
            async with lanes.background_turn(max_wait) as waited:
                BACKGROUND_WAIT_SECONDS.inc(waited)
                # What is left of its wait, for its queries (ChargeCpu, lanes.pause).
                scope[BACKGROUND_UNTIL] = time.monotonic() + max(max_wait - waited, 0.0)
                await self.app(scope, receive, send)
            return
        async with lanes.foreground_turn():
            await self.app(scope, receive, send)

    @staticmethod
    async def _wait_for_share(key: str) -> None:
        wait = cpu_shares.delay(key)
        if wait > 0:
            SHARE_WAITS.inc()
            SHARE_WAIT_SECONDS.inc(wait)
            await asyncio.sleep(wait)


class ThrottleShortcut:
    """A client the REST throttles already refused is refused again on the event loop.

    Measured (py-spy, bench_isolation's REST flood): each refused request still cost a request
    thread, a new database connection, the token lookup and two throttle-cache queries, and a
    client refused in microseconds would come straight back. Here a request under ``/api/``
    whose key (:func:`refusal_key`) DRF refused within its wait gets the same 429 (code
    ``throttled``, ``Retry-After``) without Django, answered after ``API_THROTTLE_TARPIT_SECONDS``
    (at most the wait): a client that ignores Retry-After then costs a timer, not a core.
    Does NOT: decide any refusal itself (DRF's throttles, counted in the database across
    replicas, do; iacplatform/api/throttling.py tells this one), or slow clients that are not
    refused.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _api(scope.get("path", "")) and refusals.until:
            left = refusals.remaining(scope_key(scope))
            if left > 0:
                await asyncio.sleep(min(left, settings.API_THROTTLE_TARPIT_SECONDS))
                wait = max(1, math.ceil(left))
                body = json.dumps(
                    {"code": "throttled", "detail": "Request was throttled. Expected available in %d seconds." % wait}
                ).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(wait).encode()),
                ]
                await send({"type": "http.response.start", "status": 429, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
