"""The fake API server answers like a real one where the project depends on it."""

# mypy: disable-error-code="arg-type,union-attr,attr-defined"
from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from harness.fakekube import FakeKube

LEASE = {
    "metadata": {"name": "l"},
    "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z"},
}


def raw(fake: FakeKube, method: str, path: str, body: object = None, content_type: str = "application/json"):
    api = fake.api_client()
    request = api.param_serialize(
        method=method, resource_path=path, header_params={"Content-Type": content_type}, body=body
    )
    response = api.call_api(*request, _request_timeout=5)
    response.read()
    return response.status, json.loads(response.data)


LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"


def test_create_get_and_conflicting_writes(fakekube: FakeKube) -> None:
    status, created = raw(fakekube, "POST", LEASES, LEASE)
    assert status == 201
    rv = created["metadata"]["resourceVersion"]
    status, again = raw(fakekube, "POST", LEASES, LEASE)
    assert (status, again["reason"], again["code"], again["kind"]) == (409, "AlreadyExists", 409, "Status")
    body = {**LEASE, "metadata": {"name": "l", "resourceVersion": rv}}
    status, replaced = raw(fakekube, "PUT", LEASES + "/l", body)
    assert status == 200 and replaced["metadata"]["resourceVersion"] != rv
    status, conflict = raw(fakekube, "PUT", LEASES + "/l", body)
    assert (status, conflict["reason"]) == (409, "Conflict")
    assert conflict["details"] == {"name": "l", "group": "coordination.k8s.io", "kind": "leases"}
    status, missing = raw(fakekube, "GET", LEASES + "/nope")
    assert (status, missing["reason"]) == (404, "NotFound")


@pytest.mark.parametrize(
    "renew",
    [
        "2026-01-01T00:00:00+00:00",  # isoformat() of a datetime at microsecond 0
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.123Z",
        "2026-01-01T00:00:00.1234567Z",
        "2026-01-01T00:00:00.123456",  # no zone
        "yesterday",
        17,
    ],
)
def test_microtime_without_exactly_six_digits_and_a_zone_is_rejected(fakekube: FakeKube, renew: object) -> None:
    body = {"metadata": {"name": "l"}, "spec": {"renewTime": renew}}
    status, error = raw(fakekube, "POST", LEASES, body)
    assert (status, error["reason"]) == (400, "BadRequest")
    assert fakekube.lease("l") is None


@pytest.mark.parametrize("renew", ["2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000+02:00"])
def test_microtime_with_six_digits_is_accepted(fakekube: FakeKube, renew: str) -> None:
    status, _ = raw(fakekube, "POST", LEASES, {"metadata": {"name": "l"}, "spec": {"renewTime": renew}})
    assert status == 201


def test_invalid_values_are_422_and_bad_json_400(fakekube: FakeKube) -> None:
    status, error = raw(fakekube, "POST", LEASES, {"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0}})
    assert (status, error["reason"]) == (422, "Invalid")
    status, error = raw(fakekube, "POST", LEASES, {"metadata": {}})
    assert status == 422
    status, error = raw(fakekube, "POST", LEASES, "{not json")
    assert status == 400


def test_patches_json_and_merge(fakekube: FakeKube) -> None:
    raw(fakekube, "POST", LEASES, LEASE)
    ops = [{"op": "replace", "path": "/spec/holderIdentity", "value": "b"}]
    status, patched = raw(fakekube, "PATCH", LEASES + "/l", ops, "application/json-patch+json")
    assert status == 200 and patched["spec"]["holderIdentity"] == "b"
    status, patched = raw(
        fakekube, "PATCH", LEASES + "/l", {"spec": {"holderIdentity": "c"}}, "application/merge-patch+json"
    )
    assert status == 200 and patched["spec"]["holderIdentity"] == "c"
    bad_op = [{"op": "move", "from": "/spec/holderIdentity", "path": "/spec/x"}]
    status, error = raw(fakekube, "PATCH", LEASES + "/l", bad_op, "application/json-patch+json")
    assert (status, error["reason"]) == (400, "BadRequest")
    missing = [{"op": "replace", "path": "/spec/nothing", "value": 1}]
    status, error = raw(fakekube, "PATCH", LEASES + "/l", missing, "application/json-patch+json")
    assert status == 422
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": "d"}}
    status, error = raw(fakekube, "PATCH", LEASES + "/l", stale, "application/merge-patch+json")
    assert (status, error["reason"]) == (409, "Conflict")
    status, _ = raw(fakekube, "DELETE", LEASES + "/l")
    assert status == 200
    assert fakekube.lease("l") is None


def test_injected_faults_and_latency(fakekube: FakeKube) -> None:
    api = client.CoordinationV1Api(fakekube.api_client())
    fakekube.inject(403, method="GET")
    with pytest.raises(ApiException) as excinfo:
        api.read_namespaced_lease("l", "default")
    assert excinfo.value.status == 403
    assert json.loads(excinfo.value.body)["reason"] == "Forbidden"
    fakekube.inject(503, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as excinfo:
            api.read_namespaced_lease("l", "default")
        assert excinfo.value.status == 503
    with pytest.raises(ApiException) as excinfo:
        api.read_namespaced_lease("l", "default")
    assert excinfo.value.status == 404
    fakekube.latency = 0.3
    began = time.monotonic()
    with pytest.raises(Exception):
        api.read_namespaced_lease("l", "default", _request_timeout=0.1)
    assert time.monotonic() - began < 0.3


def test_watch_streams_changes_from_a_resource_version_and_410_when_compacted(fakekube: FakeKube) -> None:
    _, created = raw(fakekube, "POST", LEASES, LEASE)
    api = client.CoordinationV1Api(fakekube.api_client())
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def watcher() -> None:
        w = watch.Watch()
        for event in w.stream(
            api.list_namespaced_lease,
            "default",
            field_selector="metadata.name=l",
            resource_version=created["metadata"]["resourceVersion"],
            timeout_seconds=5,
        ):
            seen.append((event["type"], event["object"].spec.holder_identity))
            if len(seen) == 2:
                w.stop()
        done.set()

    thread = threading.Thread(target=watcher)
    thread.start()
    time.sleep(0.2)
    raw(fakekube, "POST", LEASES, {**LEASE, "metadata": {"name": "other"}})
    raw(fakekube, "PATCH", LEASES + "/l", {"spec": {"holderIdentity": "b"}}, "application/merge-patch+json")
    raw(fakekube, "DELETE", LEASES + "/l")
    assert done.wait(5)
    assert seen == [("MODIFIED", "b"), ("DELETED", "b")]

    fakekube.compact()
    request = fakekube.api_client().param_serialize(
        method="GET", resource_path=LEASES, query_params=[("watch", "true"), ("resourceVersion", "101")]
    )
    response = fakekube.api_client().call_api(*request, _request_timeout=5)
    response.read()
    event = json.loads(response.data.decode().splitlines()[0])
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_deployment_scale_subresource(fakekube: FakeKube) -> None:
    fakekube.add_deployment("agents", replicas=1)
    apps = client.AppsV1Api(fakekube.api_client())
    scale = apps.read_namespaced_deployment_scale("agents", "default")
    assert scale.spec.replicas == 1
    apps.patch_namespaced_deployment_scale(
        "agents", "default", {"spec": {"replicas": 3}}, _content_type="application/merge-patch+json"
    )
    assert fakekube.deployment("agents")["spec"]["replicas"] == 3  # type: ignore[index]
    stale = {
        "metadata": {"name": "agents", "resourceVersion": scale.metadata.resource_version},
        "spec": {"replicas": 5},
    }
    with pytest.raises(ApiException) as excinfo:
        apps.replace_namespaced_deployment_scale("agents", "default", stale)
    assert excinfo.value.status == 409
    with pytest.raises(ApiException) as excinfo:
        apps.patch_namespaced_deployment_scale(
            "agents", "default", {"spec": {"replicas": -1}}, _content_type="application/merge-patch+json"
        )
    assert excinfo.value.status == 422
    with pytest.raises(ApiException) as excinfo:
        apps.read_namespaced_deployment_scale("missing", "default")
    assert excinfo.value.status == 404
    assert fakekube.deployment("agents")["spec"]["replicas"] == 3  # type: ignore[index]
