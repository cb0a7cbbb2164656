"""The leader's RBAC is exactly what the code calls: derived from the kubernetes-client calls
under apps/ (tests/deploy/kubecalls.py), so a new call without a grant, or a grant no code uses,
fails here rather than as a 403 in production or as privilege nobody needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.processes import ROOT
from tests.deploy.kubecalls import (
    Grant,
    Operation,
    Permission,
    UnknownOperation,
    client_operations,
    compare,
    required_permissions,
    role_grants,
    scan,
    scan_source,
)
from tests.deploy.kustomize import KUSTOMIZATIONS, containers, find, one, workloads
from tests.deploy.kustomize import render as render_kustomization

APPS = ROOT / "apps"


def ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


def render(kustomization: Path) -> list[dict[str, Any]]:
    return render_kustomization(kustomization)


def code_uses() -> list[Any]:
    return scan(APPS.rglob("*.py"), ROOT)


def leader_role(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The Role the leader pods' ServiceAccount is bound to (exactly one)."""
    (leader,) = [w for w in workloads(resources, "leader") if w["kind"] == "Deployment"]
    namespace = leader["metadata"].get("namespace")
    account = leader["spec"]["template"]["spec"]["serviceAccountName"]
    one(resources, "ServiceAccount", account)
    roles = []
    for binding in find(resources, "RoleBinding"):
        for subject in binding.get("subjects", []):
            if subject["kind"] == "ServiceAccount" and subject["name"] == account:
                # A binding to the same account name in another namespace grants nothing here.
                assert subject.get("namespace") == namespace, binding["metadata"]["name"]
                assert binding["roleRef"]["kind"] == "Role"
                roles.append(one(resources, "Role", binding["roleRef"]["name"]))
    assert len(roles) == 1, "the leader's ServiceAccount must be bound to exactly one Role"
    assert not find(resources, "ClusterRoleBinding")
    return roles[0]


def lease_name(resources: list[dict[str, Any]]) -> str:
    (config_map,) = find(resources, "ConfigMap")
    return str(config_map["data"].get("LEADER_ELECTION_LEASE_NAME", "iacplatform-leader"))


def describe(permissions: set[Permission], uses: list[Any]) -> str:
    lines = []
    for permission in sorted(permissions):
        where = ["%s:%d" % (u.file, u.line) for u in uses if u.permission() == permission]
        lines.append("  %s%s" % (permission, " (" + ", ".join(where) + ")" if where else ""))
    return "\n".join(lines)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_the_role_grants_exactly_what_the_code_calls(kustomization: Path) -> None:
    uses = code_uses()
    missing, extra = compare(required_permissions(uses), role_grants(leader_role(render(kustomization))))
    assert not missing, (
        "the code calls these without a grant in the Role (add a rule to deploy/base/leader-rbac.yaml, "
        "with resourceNames where RBAC allows):\n" + describe(missing, uses)
    )
    assert not extra, (
        "the Role grants these but no code under apps/ uses them (remove them from "
        "deploy/base/leader-rbac.yaml):\n" + describe(extra, uses)
    )


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_the_role_names_no_wildcard(kustomization: Path) -> None:
    for rule in leader_role(render(kustomization))["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), rule


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_deployment_scale_is_limited_to_the_agent_pools_deployments(kustomization: Path) -> None:
    resources = render(kustomization)
    agents = {w["metadata"]["name"] for w in workloads(resources, "agent") if w["kind"] == "Deployment"}
    assert agents
    for grant in role_grants(leader_role(resources)):
        if grant.permission.group == "apps":
            assert grant.permission.resource == "deployments/scale", grant
            assert grant.resource_names == agents, grant


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_lease_grants_name_the_configured_lease_where_rbac_can(kustomization: Path) -> None:
    """create cannot be limited by name (RBAC sees no name before the object exists); list and
    watch can only when every such request selects metadata.name, or the API server refuses it."""
    resources = render(kustomization)
    role = leader_role(resources)
    # The Role is namespaced: the Lease must live in the namespace the Role is in.
    (config_map,) = find(resources, "ConfigMap")
    assert config_map["data"].get("LEADER_ELECTION_NAMESPACE", role["metadata"].get("namespace")) == role[
        "metadata"
    ].get("namespace")
    uses = code_uses()
    selects_by_name = all(
        use.field_selector is not None and "metadata.name=" in use.field_selector
        for use in uses
        if use.permission().resource == "leases" and use.permission().verb in ("list", "watch")
    )
    for grant in role_grants(role):
        if grant.permission.resource != "leases":
            continue
        verb = grant.permission.verb
        if verb == "create":
            assert grant.resource_names is None
        elif verb in ("list", "watch") and not selects_by_name:
            assert grant.resource_names is None, "list/watch without a metadata.name selector cannot be named"
        else:
            assert grant.resource_names == {lease_name(resources)}, grant


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_only_leader_pods_get_an_api_token(kustomization: Path) -> None:
    resources = render(kustomization)
    role = leader_role(resources)
    bindings = find(resources, "RoleBinding")
    assert [b["roleRef"]["name"] for b in bindings] == [role["metadata"]["name"]]
    for container in containers(resources):
        if container.component != "leader":
            assert container.pod_spec.get("automountServiceAccountToken") is False, container.name
            assert container.pod_spec["serviceAccountName"] != "iacplatform-leader", container.name


# The derivation itself, on code written for the purpose: each check above can fail.

SAMPLE = """
from kubernetes import client, watch

def elect(api: client.CoordinationV1Api, apps: client.AppsV1Api, name: str) -> None:
    api.read_namespaced_lease(name, "ns")
    api.create_namespaced_lease("ns", body)
    api.replace_namespaced_lease(name, "ns", body)
    api.patch_namespaced_lease_with_http_info(name, "ns", body)
    for event in watch.Watch().stream(api.list_namespaced_lease, "ns", field_selector="metadata.name=%s" % name):
        pass
    api.list_namespaced_lease("ns", watch=True)
    api.list_namespaced_lease("ns")
    apps.read_namespaced_deployment_scale("agents", "ns")
    apps.patch_namespaced_deployment_scale("agents", "ns", {"spec": {"replicas": 2}})
"""


def test_client_operations_map_to_the_verbs_the_api_server_authorizes() -> None:
    uses = list(scan_source(SAMPLE, "sample.py"))
    assert required_permissions(uses) == {
        Permission("coordination.k8s.io", "leases", "get"),
        Permission("coordination.k8s.io", "leases", "create"),
        Permission("coordination.k8s.io", "leases", "update"),
        Permission("coordination.k8s.io", "leases", "patch"),
        Permission("coordination.k8s.io", "leases", "watch"),
        Permission("coordination.k8s.io", "leases", "list"),
        Permission("apps", "deployments/scale", "get"),
        Permission("apps", "deployments/scale", "patch"),
    }
    (streamed,) = [u for u in uses if u.watch and u.field_selector is not None]
    assert streamed.field_selector == "metadata.name=%s"


RAW = """
COLLECTION = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

class Lock:
    def create(self):
        self._send("POST", COLLECTION, body, timeout)

    def update(self):
        self._send("PUT", COLLECTION + "/{name}", body, timeout)

    def _send(self, method, path, body, timeout):
        # Variables only: the callers above are where the method and the path are known.
        return self.api.api_client.param_serialize(method=method, resource_path=path, body=body)

SCALE = "/apis/apps/v1/namespaces/{namespace}/deployments"

def scale(api_client):
    api_client.param_serialize(method="PATCH", resource_path=SCALE + "/{name}/scale")
"""


def test_requests_made_below_the_operation_methods_are_found() -> None:
    """The lease backend sends its own POST/PUT (to keep MicroTime strings intact): those count."""
    assert required_permissions(scan_source(RAW, "raw.py")) == {
        Permission("coordination.k8s.io", "leases", "create"),
        Permission("coordination.k8s.io", "leases", "update"),
        Permission("apps", "deployments/scale", "patch"),
    }


def test_core_and_collection_operations_map_too() -> None:
    operations = client_operations()
    assert operations["delete_collection_namespaced_lease"].permission() == Permission(
        "coordination.k8s.io", "leases", "deletecollection"
    )
    assert operations["read_namespaced_pod_log"].permission() == Permission("", "pods/log", "get")
    assert operations["list_namespaced_config_map"].permission(watch=True) == Permission("", "configmaps", "watch")


def test_a_call_added_without_rbac_is_reported_missing() -> None:
    role = {
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create"]},
        ]
    }
    uses = list(scan_source("api.read_namespaced_lease(n, ns)\napi.delete_namespaced_lease(n, ns)\n", "x.py"))
    missing, extra = compare(required_permissions(uses), role_grants(role))
    assert missing == {Permission("coordination.k8s.io", "leases", "delete")}
    assert extra == {Permission("coordination.k8s.io", "leases", "create")}


def test_role_rules_expand_with_their_resource_names() -> None:
    role = {
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": ["a"], "verbs": ["get"]}]
    }
    assert role_grants(role) == [Grant(Permission("apps", "deployments/scale", "get"), frozenset({"a"}))]
    with pytest.raises(UnknownOperation, match="nonResourceURLs"):
        role_grants({"rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]})


def test_an_operation_without_an_rbac_resource_is_refused_clearly() -> None:
    with pytest.raises(UnknownOperation, match="names no resource"):
        Operation("get_api_resources", "GET", "/apis/coordination.k8s.io/v1/").permission()
