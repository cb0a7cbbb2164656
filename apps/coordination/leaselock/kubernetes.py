"""The Kubernetes lease backend: a coordination.k8s.io/v1 Lease through the official client.

Writes are PUTs carrying the resourceVersion that was read; the API server answers 409 Conflict
to all but the first writer from that version. MicroTime fields (acquireTime, renewTime) are sent
as strings formatted here with exactly six fractional digits: the client would serialize a
datetime with ``isoformat()``, which drops the fraction when the microsecond is 0, and a real API
server rejects that with 400. Every get/create/update carries ``_request_timeout`` (the elector's,
below RenewDeadline); the watch is a long poll off the renew path, with its own read timeout.
``watch`` streams the Lease (``fieldSelector=metadata.name=<name>``) in a thread
and wakes the elector on every event; when the stream breaks it restarts, and the elector's
polling at RetryPeriod covers the gap.

A PUT replaces the whole object, metadata included, so ``update`` sends back the labels,
annotations, ownerReferences and finalizers of the Lease as last read: renewals keep what
``kubectl label``, GitOps tools or owners put there. The term's fencing epoch travels in the
annotation ``coordination.iacplatform.io/epoch`` (leaseTransitions is an int32 that counts holder
changes; the epoch is a 64-bit fencing token, see fencing.py).

Guarantees: one winner per resourceVersion; bounded requests; errors become ``LockError``
(``Conflict`` for 409, and for a 404 on update: the lease vanished, so re-read) carrying the
server's own explanation (the Status message: user, verb, resource) and whether retrying can help
(403/401/400/422 cannot).
Does NOT: create the namespace, or need RBAC beyond leases create and get/update/watch of its one
name (the watch selects metadata.name, so a Role can limit it with resourceNames; it never lists).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from apps.coordination.leaselock.base import (
    Conflict,
    LeaderElectionRecord,
    LeaseLock,
    LockError,
    Observed,
    OnChange,
    format_microtime,
)

logger = logging.getLogger(__name__)

COLLECTION = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
WATCH_TIMEOUT = 60  # seconds per watch request; the stream is restarted after it
EPOCH_ANNOTATION = "coordination.iacplatform.io/epoch"
# Retrying cannot change these answers: RBAC, credentials, a body the server refuses.
PERMANENT = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 422: "Invalid"}
# Metadata a PUT would otherwise wipe (the server takes them from the body).
KEPT_METADATA = {
    "labels": "labels",
    "annotations": "annotations",
    "owner_references": "ownerReferences",
    "finalizers": "finalizers",
}


def _epoch(metadata: client.V1ObjectMeta | None) -> int | None:
    value = ((metadata.annotations if metadata else None) or {}).get(EPOCH_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # someone else's value: the record then counts as written by another tool


def _record(lease: client.V1Lease) -> LeaderElectionRecord:
    spec = lease.spec
    return LeaderElectionRecord(
        holder_identity=(spec.holder_identity if spec else None) or "",
        lease_duration_seconds=(spec.lease_duration_seconds if spec else None) or 0,
        acquire_time=spec.acquire_time if spec else None,
        renew_time=spec.renew_time if spec else None,
        lease_transitions=(spec.lease_transitions if spec else None) or 0,
        epoch=_epoch(lease.metadata),
    )


def _observed(lease: client.V1Lease) -> Observed:
    version = lease.metadata.resource_version if lease.metadata else None
    if not version:
        raise LockError(
            "lease %s came back without a resourceVersion" % (lease.metadata.name if lease.metadata else "?")
        )
    return Observed(record=_record(lease), resource_version=version)


def _server_message(exc: ApiException) -> str:
    """The Status message the API server sent (who may not do what), else the HTTP reason."""
    try:
        status = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return str(exc.reason or "")
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"])
    return str(exc.reason or "")


class KubernetesLeaseLock(LeaseLock):
    backend = "kubernetes"

    def __init__(self, *, name: str, namespace: str, api_client: client.ApiClient) -> None:
        super().__init__(name=name, namespace=namespace)
        self.api = client.CoordinationV1Api(api_client)
        self._watcher: _Watcher | None = None
        # (resourceVersion, metadata) of the Lease as last read or written, for the next PUT.
        self._metadata: tuple[str, dict[str, Any]] | None = None

    def get(self, *, timeout: float) -> Observed | None:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._error("read", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unreachable("read", exc) from exc
        return self._seen(lease)

    def create(self, record: LeaderElectionRecord, *, timeout: float) -> Observed:
        body = self._body(record, resource_version=None)
        try:
            lease = self._send("POST", COLLECTION, body, timeout)
        except ApiException as exc:
            raise self._error("create", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unreachable("create", exc) from exc
        return self._seen(lease)

    def update(self, record: LeaderElectionRecord, *, resource_version: str, timeout: float) -> Observed:
        body = self._body(record, resource_version=resource_version)
        try:
            lease = self._send("PUT", COLLECTION + "/{name}", body, timeout)
        except ApiException as exc:
            if exc.status == 404:
                raise Conflict("%s: deleted since version %s" % (self.describe(), resource_version)) from exc
            raise self._error("update", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._unreachable("update", exc) from exc
        return self._seen(lease)

    def _seen(self, lease: client.V1Lease) -> Observed:
        observed = _observed(lease)
        meta = lease.metadata
        kept: dict[str, Any] = {}
        for attribute, key in KEPT_METADATA.items():
            value = getattr(meta, attribute, None)
            if value:
                kept[key] = self.api.api_client.sanitize_for_serialization(value)
        self._metadata = (observed.resource_version, kept)
        return observed

    def watch(self, on_change: OnChange) -> None:
        if self._watcher is None:
            self._watcher = _Watcher(self, on_change)
            self._watcher.start()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _body(self, record: LeaderElectionRecord, *, resource_version: str | None) -> dict[str, Any]:
        # A plain dict with preformatted MicroTime strings: the client passes it through untouched.
        spec: dict[str, Any] = {
            "holderIdentity": record.holder_identity,
            "leaseDurationSeconds": record.lease_duration_seconds,
            "leaseTransitions": record.lease_transitions,
        }
        if record.acquire_time is not None:
            spec["acquireTime"] = format_microtime(record.acquire_time)
        if record.renew_time is not None:
            spec["renewTime"] = format_microtime(record.renew_time)
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
            if self._metadata is not None and self._metadata[0] == resource_version:
                metadata.update(json.loads(json.dumps(self._metadata[1])))
        annotations = dict(metadata.get("annotations") or {})
        annotations.pop(EPOCH_ANNOTATION, None)
        if record.epoch is not None:
            annotations[EPOCH_ANNOTATION] = str(record.epoch)
        if annotations:
            metadata["annotations"] = annotations
        else:
            metadata.pop("annotations", None)
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _send(self, method: str, path: str, body: dict[str, Any], timeout: float) -> client.V1Lease:
        # Not create/replace_namespaced_lease: they validate the body into a V1Lease, turning our
        # MicroTime strings back into datetimes that isoformat() then writes without a fraction.
        api_client = self.api.api_client
        request = api_client.param_serialize(
            method=method,
            resource_path=path,
            path_params={"namespace": self.namespace, "name": self.name},
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = api_client.call_api(*request, _request_timeout=timeout)
        response.read()
        result = api_client.response_deserialize(
            response_data=response, response_types_map={"200": "V1Lease", "201": "V1Lease"}
        ).data
        assert isinstance(result, client.V1Lease)
        return result

    def _error(self, action: str, exc: ApiException) -> LockError:
        status = int(exc.status or 0)
        message = "%s: %s: HTTP %s %s" % (self.describe(), action, status, _server_message(exc))
        if status == 409:
            return Conflict(message)
        permanent = PERMANENT.get(status)
        if permanent is not None:
            return LockError(message, reason=permanent, transient=False)
        # 429, 5xx: the server may or may not have applied a write that timed out inside it.
        return LockError(message, reason=str(exc.reason or status), applied_unknown=action != "read" and status >= 500)

    def _unreachable(self, action: str, exc: Exception) -> LockError:
        # A refused connection applied nothing; a request that timed out or lost its answer may
        # have been applied by the server.
        refused = isinstance(exc, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError))
        return LockError(
            "%s: %s: %s" % (self.describe(), action, exc),
            reason="Unreachable" if refused else "NoAnswer",
            applied_unknown=action != "read" and not refused,
        )


class _Watcher:
    def __init__(self, lock: KubernetesLeaseLock, on_change: OnChange) -> None:
        self.lock = lock
        self.on_change = on_change
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.stop()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            self._watch = watch.Watch()
            try:
                for _event in self._watch.stream(
                    self.lock.api.list_namespaced_lease,
                    self.lock.namespace,
                    field_selector="metadata.name=%s" % self.lock.name,
                    timeout_seconds=WATCH_TIMEOUT,
                    _request_timeout=(5, WATCH_TIMEOUT + 5),
                ):
                    if self._stopping.is_set():
                        break
                    backoff = 0.5
                    self.on_change()
            except Exception as exc:
                # Forbidden, a dropped stream, 410 Expired: start over; polling covers the gap.
                # No wake-up here: the restarted stream's first event (the Lease as it is now)
                # wakes the elector, and failing streams must not drive a hot loop of attempts.
                logger.info("watch of %s broke: %s", self.lock.describe(), exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
