"""A fake Kubernetes API server for tests and benchmarks: a real HTTP server in a thread of the
calling process (the ``fakekube`` fixture is in tests/conftest.py).

The official client talks to it through a ``Configuration`` whose host is ``server.url`` (or a
kubeconfig written by ``write_kubeconfig`` for child processes). It serves what the project uses
and behaves like the real API server there:

- coordination.k8s.io/v1 Leases: GET, list, POST, PUT, PATCH (JSON patch, merge patch), DELETE, and
  watch (``?watch=true``, streamed JSON lines from ``resourceVersion``, 410 Expired when that
  version was compacted away, ``fieldSelector=metadata.name=...``, ``timeoutSeconds``);
- apps/v1 Deployments (GET, list, POST, PUT, PATCH, DELETE) and their ``/scale`` subresource
  (autoscaling/v1 Scale: GET, PUT, PATCH);
- optimistic concurrency: a write naming a ``metadata.resourceVersion`` other than the stored one
  gets 409 Conflict; POST of an existing name 409 AlreadyExists; a missing object 404 NotFound;
  every error is a ``Status`` object as the real server sends it;
- strict MicroTime (Lease acquireTime/renewTime): exactly six fractional digits and a zone,
  otherwise 400 BadRequest, as a real server's JSON decoding answers; invalid values 422 Invalid;
- PUT replaces the object's labels, annotations, ownerReferences and finalizers with the body's
  (absent = removed), as the real server does; PATCH merges into them;
- RBAC: ``forbid(verb)`` denies a verb (get, list, watch, create, update, patch, delete) on Leases
  with the real server's 403 Status ("User ... cannot update resource ...");
- injected faults: ``inject(status, times=, method=, path=)`` answers the next matching requests
  with that status (403 Forbidden, 429, 500, 503, ...), ``drop_response(...)`` applies the next
  matching write and then closes the connection without answering (a proxy that lost the
  response), ``down()`` refuses connections (the listening socket closed, open keep-alive
  connections reset) until the block ends, and ``latency`` delays every request;
- ``recreate_lease(name, transitions=)`` deletes a Lease and creates it again with fewer
  leaseTransitions (a namespace restored from backup, GitOps re-applying a manifest);
- ``log`` records (monotonic time, method, path) of every request, for request-rate checks.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

MICROTIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

LEASES = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")
DEPLOYMENTS = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments(?:/([^/]+))?(/scale)?$")


class ApiError(Exception):
    def __init__(self, code: int, message: str, *, reason: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details or {}

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": str(self),
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


@dataclass
class Fault:
    status: int
    times: int
    method: str | None
    path: str | None
    message: str


@dataclass
class Drop:
    times: int
    method: str | None
    path: str | None


VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
SERVICE_ACCOUNT = "system:serviceaccount:default:iacplatform"


@dataclass
class Kind:
    group: str
    plural: str
    kind: str
    api_version: str
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def _now_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKube:
    def __init__(self) -> None:
        self.leases = Kind("coordination.k8s.io", "leases", "Lease", "coordination.k8s.io/v1")
        self.deployments = Kind("apps", "deployments", "Deployment", "apps/v1")
        self._rv = 100
        self._cond = threading.Condition()
        # (resourceVersion, kind plural, event type, object) for watches; compact() drops old ones.
        self._events: list[tuple[int, str, str, dict[str, Any]]] = []
        self._compacted_before = 0
        self._faults: list[Fault] = []
        self._drops: list[Drop] = []
        self.forbidden: set[str] = set()
        self.latency = 0.0
        self.requests: list[tuple[str, str, Any]] = []
        self.log: list[tuple[float, str, str]] = []
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = self._serve_thread()

    def _serve_thread(self) -> threading.Thread:
        return threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakekube", daemon=True
        )

    # ---- lifecycle and client wiring ------------------------------------------------------------

    def start(self) -> FakeKube:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._reset_connections()

    def _reset_connections(self) -> None:
        with self._cond:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @contextmanager
    def down(self) -> Iterator[None]:
        """Refuse every connection inside the block (the server process is gone), then come back."""
        port = self._server.server_address[1]
        self._server.shutdown()
        self._server.server_close()
        self._reset_connections()
        try:
            yield
        finally:
            self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
            self._server.daemon_threads = True
            self._thread = self._serve_thread()
            self._thread.start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self._server.server_address[1]

    def configuration(self) -> client.Configuration:
        configuration = client.Configuration()
        configuration.host = self.url
        configuration.api_key = {"BearerToken": "fake-token"}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return configuration

    def api_client(self) -> client.ApiClient:
        """A client configured the way the project configures its own (apps.coordination.kube)."""
        from apps.coordination.kube import api_client

        return api_client(self.configuration())

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    # ---- test controls --------------------------------------------------------------------------

    def inject(
        self, status: int, *, times: int = 1, method: str | None = None, path: str | None = None, message: str = ""
    ) -> None:
        """Answer the next ``times`` requests matching method/path substring with ``status``."""
        with self._cond:
            self._faults.append(Fault(status, times, method, path, message or "injected %d" % status))

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()
            self._drops.clear()

    def drop_response(self, *, times: int = 1, method: str | None = None, path: str | None = None) -> None:
        """Apply the next ``times`` matching requests, then close the connection without answering."""
        with self._cond:
            self._drops.append(Drop(times, method, path))

    def forbid(self, *verbs: str) -> None:
        """Deny these verbs on Leases, as a Role without them does (403 with the server's message)."""
        with self._cond:
            self.forbidden.update(verbs)

    def allow(self, *verbs: str) -> None:
        with self._cond:
            self.forbidden.difference_update(verbs)

    def recreate_lease(self, name: str, namespace: str = "default", *, transitions: int = 0) -> dict[str, Any]:
        """Delete the Lease and create it again with ``transitions`` and no holder (a restore)."""
        with self._cond:
            current = self._get(self.leases, namespace, name)
            self._delete(self.leases, namespace, name)
            body = {
                "metadata": {"name": name, "namespace": namespace, "labels": current["metadata"].get("labels", {})},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": transitions},
            }
            return copy.deepcopy(self._create(self.leases, namespace, body))

    def requests_between(self, start: float, end: float, *, path: str = "/leases") -> int:
        """Requests to ``path`` (a substring) received in the monotonic interval [start, end)."""
        with self._cond:
            return sum(1 for at, _, p in self.log if start <= at < end and path in p)

    @contextmanager
    def outage(self, status: int = 503, *, path: str | None = None) -> Iterator[None]:
        """Every matching request fails with ``status`` while inside the block."""
        self.inject(status, times=10**9, path=path)
        try:
            yield
        finally:
            self.clear_faults()

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watches get 410 Expired."""
        with self._cond:
            self._compacted_before = self._rv + 1
            self._events.clear()

    def lease(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self._cond:
            obj = self.leases.objects.get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    def add_deployment(self, name: str, namespace: str = "default", replicas: int = 1) -> dict[str, Any]:
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "agent", "image": "iacplatform:test"}]},
                },
            },
        }
        with self._cond:
            return self._create(self.deployments, namespace, body)

    def deployment(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self._cond:
            obj = self.deployments.objects.get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    # ---- storage --------------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, kind: Kind, type_: str, obj: dict[str, Any]) -> None:
        self._events.append((int(obj["metadata"]["resourceVersion"]), kind.plural, type_, copy.deepcopy(obj)))
        self._cond.notify_all()

    def _not_found(self, kind: Kind, name: str) -> ApiError:
        return ApiError(
            404,
            '%s.%s "%s" not found' % (kind.plural, kind.group, name),
            details={"name": name, "group": kind.group, "kind": kind.plural},
        )

    def _get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        obj = kind.objects.get((namespace, name))
        if obj is None:
            raise self._not_found(kind, name)
        return obj

    def _create(self, kind: Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise ApiError(422, "%s.%s is invalid: metadata.name: Required value" % (kind.plural, kind.group))
        if meta.get("namespace") not in (None, "", namespace):
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        if (namespace, name) in kind.objects:
            raise ApiError(
                409,
                '%s.%s "%s" already exists' % (kind.plural, kind.group, name),
                reason="AlreadyExists",
                details={"name": name, "group": kind.group, "kind": kind.plural},
            )
        if meta.get("resourceVersion"):
            raise ApiError(400, "resourceVersion should not be set on objects to be created")
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        obj["metadata"] = {
            **meta,
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": _now_time(),
            "resourceVersion": str(self._next_rv()),
        }
        kind.objects[(namespace, name)] = obj
        self._emit(kind, "ADDED", obj)
        return obj

    def _replace(self, kind: Kind, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self._get(kind, namespace, name)
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise ApiError(
                400, "the name of the object (%s) does not match the name on the URL (%s)" % (meta.get("name"), name)
            )
        wanted = meta.get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                'Operation cannot be fulfilled on %s.%s "%s": the object has been modified; please apply your '
                "changes to the latest version and try again" % (kind.plural, kind.group, name),
                details={"name": name, "group": kind.group, "kind": kind.plural},
            )
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        # A PUT replaces the user-settable metadata with the body's: what the body leaves out is gone.
        user_set = ("labels", "annotations", "ownerReferences", "finalizers")
        obj["metadata"] = {
            **{k: v for k, v in current["metadata"].items() if k not in user_set},
            **{k: v for k, v in meta.items() if k in user_set},
            "resourceVersion": str(self._next_rv()),
        }
        if kind is self.deployments and "status" not in body:
            obj["status"] = current.get("status", {})
        kind.objects[(namespace, name)] = obj
        self._emit(kind, "MODIFIED", obj)
        return obj

    def _delete(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        obj = self._get(kind, namespace, name)
        del kind.objects[(namespace, name)]
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._emit(kind, "DELETED", obj)
        return obj

    # ---- validation -----------------------------------------------------------------------------

    @staticmethod
    def _check_lease(body: dict[str, Any]) -> None:
        spec = body.get("spec") or {}
        if not isinstance(spec, dict):
            raise ApiError(400, "json: cannot unmarshal into Go struct field Lease.spec")
        for key in ("acquireTime", "renewTime"):
            value = spec.get(key)
            if value is None:
                continue
            if not isinstance(value, str) or not MICROTIME.match(value):
                raise ApiError(
                    400,
                    "json: cannot unmarshal into Go struct field LeaseSpec.spec.%s of type v1.MicroTime: "
                    'parsing time %s as "2006-01-02T15:04:05.000000Z07:00": cannot parse' % (key, json.dumps(value)),
                )
        for key in ("leaseDurationSeconds", "leaseTransitions"):
            value = spec.get(key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(
                    400,
                    "json: cannot unmarshal %s into Go struct field LeaseSpec.spec.%s of type int32"
                    % (type(value).__name__, key),
                )
            if key == "leaseDurationSeconds" and value <= 0:
                raise ApiError(
                    422,
                    "Lease is invalid: spec.leaseDurationSeconds: Invalid value: %d: must be greater than 0" % value,
                )
            if key == "leaseTransitions" and value < 0:
                raise ApiError(
                    422,
                    "Lease is invalid: spec.leaseTransitions: Invalid value: %d: must be greater than or equal to 0"
                    % value,
                )
        holder = spec.get("holderIdentity")
        if holder is not None and not isinstance(holder, str):
            raise ApiError(
                400, "json: cannot unmarshal into Go struct field LeaseSpec.spec.holderIdentity of type string"
            )

    @staticmethod
    def _check_replicas(replicas: Any) -> None:
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise ApiError(400, "json: cannot unmarshal into Go struct field spec.replicas of type int32")
        if replicas < 0:
            raise ApiError(422, "spec.replicas: Invalid value: %d: must be greater than or equal to 0" % replicas)

    # ---- patch ----------------------------------------------------------------------------------

    @staticmethod
    def _patched(current: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
        if content_type.startswith("application/json-patch+json"):
            if not isinstance(patch, list):
                raise ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            return _json_patch(copy.deepcopy(current), patch)
        if content_type.startswith(("application/merge-patch+json", "application/strategic-merge-patch+json")):
            if not isinstance(patch, dict):
                raise ApiError(400, "json: cannot unmarshal array into Go value of type map[string]interface {}")
            return _merge_patch(copy.deepcopy(current), patch)
        raise ApiError(
            415,
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json",
        )

    # ---- HTTP -----------------------------------------------------------------------------------

    def _forbidden(self, method: str, path: str, query: dict[str, str]) -> ApiError | None:
        match = LEASES.match(path)
        if not match:
            return None
        verb = VERBS.get(method, method.lower())
        if method == "GET" and not match.group(2):
            verb = "watch" if query.get("watch") in ("true", "1") else "list"
        with self._cond:
            if verb not in self.forbidden:
                return None
        name = match.group(2) or ""
        return ApiError(
            403,
            'leases.coordination.k8s.io%s is forbidden: User "%s" cannot %s resource "leases" in API group '
            '"coordination.k8s.io" in the namespace "%s"'
            % (' "%s"' % name if name else "", SERVICE_ACCOUNT, verb, match.group(1)),
            details={"name": name, "group": "coordination.k8s.io", "kind": "leases"} if name else None,
        )

    def _take(self, rules: list[Any], method: str, path: str) -> Any:
        """The first rule (a drop or a fault) matching the request that has uses left, one use
        taken; None if there is none."""
        with self._cond:
            for rule in rules:
                if (rule.method in (None, method)) and (rule.path is None or rule.path in path) and rule.times > 0:
                    rule.times -= 1
                    return rule
        return None

    def _drop_for(self, method: str, path: str) -> bool:
        return self._take(self._drops, method, path) is not None

    def _fault_for(self, method: str, path: str) -> Fault | None:
        fault: Fault | None = self._take(self._faults, method, path)
        return fault

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without this, Nagle + delayed ACK
                # add 40 ms to every keep-alive request.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with fake._cond:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake._cond:
                    fake._connections.discard(self.connection)
                with contextlib.suppress(OSError):  # reset by down()
                    super().finish()

            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_PUT(self) -> None:
                self._dispatch("PUT")

            def do_PATCH(self) -> None:
                self._dispatch("PATCH")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

            def _dispatch(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if fake.latency:
                    time.sleep(fake.latency)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError as exc:
                    body = None
                    fake.requests.append((method, url.path, raw.decode(errors="replace")))
                    self._send(400, ApiError(400, "invalid JSON: %s" % exc).status())
                    return
                fake.requests.append((method, url.path, body))
                with fake._cond:
                    fake.log.append((time.monotonic(), method, url.path))
                fault = fake._fault_for(method, url.path)
                if fault is not None:
                    self._send(fault.status, ApiError(fault.status, fault.message).status())
                    return
                denied = fake._forbidden(method, url.path, query)
                if denied is not None:
                    self._send(denied.code, denied.status())
                    return
                try:
                    if method == "GET" and query.get("watch") in ("true", "1"):
                        self._watch(url.path, query)
                        return
                    code, obj = fake._route(method, url.path, query, body, self.headers.get("Content-Type") or "")
                except ApiError as exc:
                    self._send(exc.code, exc.status())
                    return
                if method != "GET" and fake._drop_for(method, url.path):
                    # Applied, but the answer never reaches the client.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(code, obj)

            def _send(self, code: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (its request timeout): nothing to tell it

            def _watch(self, path: str, query: dict[str, str]) -> None:
                match = LEASES.match(path) or DEPLOYMENTS.match(path)
                if not match or match.group(2):
                    raise ApiError(404, "the server could not find the requested resource")
                kind = fake.leases if LEASES.match(path) else fake.deployments
                namespace = match.group(1)
                name = None
                selector = query.get("fieldSelector", "")
                if selector:
                    key, _, value = selector.partition("=")
                    if key != "metadata.name":
                        raise ApiError(400, 'field label "%s" not supported for %s' % (key, kind.plural))
                    name = value.lstrip("=")
                timeout = float(query.get("timeoutSeconds") or 1800)
                deadline = time.monotonic() + timeout
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def matches(obj: dict[str, Any]) -> bool:
                    meta = obj["metadata"]
                    return meta["namespace"] == namespace and (name is None or meta["name"] == name)

                try:
                    with fake._cond:
                        start = query.get("resourceVersion") or "0"
                        if start == "0":
                            pending = [("ADDED", copy.deepcopy(o)) for o in kind.objects.values() if matches(o)]
                            since = fake._rv
                        else:
                            since = int(start)
                            if since + 1 < fake._compacted_before:
                                gone = ApiError(
                                    410, "too old resource version: %d (%d)" % (since, fake._compacted_before)
                                )
                                pending = [("ERROR", gone.status())]
                                since = -1
                            else:
                                pending = []
                    for type_, obj in pending:
                        self._chunk({"type": type_, "object": obj})
                    if since < 0:
                        self._chunk_end()
                        return
                    while not fake.stopping.is_set() and time.monotonic() < deadline:
                        with fake._cond:
                            events = [
                                (rv, t, o)
                                for rv, plural, t, o in fake._events
                                if rv > since and plural == kind.plural and matches(o)
                            ]
                            if not events:
                                fake._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                                continue
                        for rv, type_, obj in events:
                            self._chunk({"type": type_, "object": obj})
                            since = rv
                    self._chunk_end()
                except OSError:
                    return

            def _chunk(self, event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _chunk_end(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler

    def _route(
        self, method: str, path: str, query: dict[str, str], body: Any, content_type: str
    ) -> tuple[int, dict[str, Any]]:
        lease_match = LEASES.match(path)
        deploy_match = DEPLOYMENTS.match(path)
        if lease_match:
            kind, namespace, name, sub = self.leases, lease_match.group(1), lease_match.group(2), None
        elif deploy_match:
            kind, namespace, name, sub = (
                self.deployments,
                deploy_match.group(1),
                deploy_match.group(2),
                deploy_match.group(3),
            )
        else:
            raise ApiError(404, "the server could not find the requested resource")
        with self._cond:
            if name is None:
                if method == "GET":
                    items = [copy.deepcopy(o) for (ns, _), o in sorted(kind.objects.items()) if ns == namespace]
                    return 200, {
                        "kind": kind.kind + "List",
                        "apiVersion": kind.api_version,
                        "metadata": {"resourceVersion": str(self._rv)},
                        "items": items,
                    }
                if method == "POST":
                    if not isinstance(body, dict):
                        raise ApiError(400, "the body of the request must be a JSON object")
                    if kind is self.leases:
                        self._check_lease(body)
                    else:
                        self._check_replicas((body.get("spec") or {}).get("replicas", 1))
                    return 201, copy.deepcopy(self._create(kind, namespace, body))
                raise ApiError(405, "method %s not allowed" % method)
            if sub == "/scale":
                return self._scale(method, namespace, name, body, content_type)
            if method == "GET":
                return 200, copy.deepcopy(self._get(kind, namespace, name))
            if method == "DELETE":
                self._delete(kind, namespace, name)
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": kind.group, "kind": kind.plural},
                }
            if method in ("PUT", "PATCH"):
                if method == "PATCH":
                    current = self._get(kind, namespace, name)
                    body = self._patched(current, body, content_type)
                    # A patch applies to the current version unless it names another one itself.
                elif not isinstance(body, dict):
                    raise ApiError(400, "the body of the request must be a JSON object")
                if kind is self.leases:
                    self._check_lease(body)
                else:
                    self._check_replicas((body.get("spec") or {}).get("replicas", 1))
                return 200, copy.deepcopy(self._replace(kind, namespace, name, body))
            raise ApiError(405, "method %s not allowed" % method)

    def _scale(
        self, method: str, namespace: str, name: str, body: Any, content_type: str
    ) -> tuple[int, dict[str, Any]]:
        deployment = self._get(self.deployments, namespace, name)

        def scale_of(obj: dict[str, Any]) -> dict[str, Any]:
            labels = obj["spec"].get("selector", {}).get("matchLabels", {})
            return {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": obj["metadata"]["uid"],
                    "resourceVersion": obj["metadata"]["resourceVersion"],
                    "creationTimestamp": obj["metadata"]["creationTimestamp"],
                },
                "spec": {"replicas": obj["spec"].get("replicas", 1)},
                "status": {
                    "replicas": obj.get("status", {}).get("replicas", 0),
                    "selector": ",".join("%s=%s" % kv for kv in sorted(labels.items())),
                },
            }

        if method == "GET":
            return 200, scale_of(deployment)
        if method not in ("PUT", "PATCH"):
            raise ApiError(405, "method %s not allowed" % method)
        current = scale_of(deployment)
        if method == "PATCH":
            body = self._patched(current, body, content_type)
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be a JSON object")
        replicas = (body.get("spec") or {}).get("replicas", 0)
        self._check_replicas(replicas)
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        updated = copy.deepcopy(deployment)
        updated["spec"]["replicas"] = replicas
        updated["metadata"] = {"name": name, "resourceVersion": wanted or deployment["metadata"]["resourceVersion"]}
        return 200, scale_of(self._replace(self.deployments, namespace, name, updated))


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge_patch(target.get(key), value)
    return target


def _json_patch(doc: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, "invalid JSON patch operation: %s" % json.dumps(op))
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                raise ApiError(422, "jsonpatch: doc is missing path: %s" % op["path"])
        last = parts[-1]
        kind = op["op"]
        if kind in ("add", "replace"):
            if kind == "replace" and isinstance(parent, dict) and last not in parent:
                raise ApiError(422, "jsonpatch replace operation does not apply: doc is missing key: %s" % op["path"])
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), op.get("value"))
            else:
                parent[last] = op.get("value")
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            elif last in parent:
                del parent[last]
            else:
                raise ApiError(422, "jsonpatch remove operation does not apply: doc is missing key: %s" % op["path"])
        elif kind == "test":
            actual = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if actual != op.get("value"):
                raise ApiError(422, "testing value %s failed" % op["path"])
        else:
            raise ApiError(400, "unsupported JSON patch operation %s" % kind)
    return doc
