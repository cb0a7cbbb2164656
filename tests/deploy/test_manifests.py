"""deploy/ renders through kustomize into manifests that a current Kubernetes accepts, and that
carry what the processes rely on: probes, grace periods, disruption budgets, no committed secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from django.core.management import get_commands, load_command_class
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, latest_version

from harness.processes import ROOT
from tests.deploy.kustomize import (
    BASE,
    DEPLOY,
    KUSTOMIZATIONS,
    OVERLAYS,
    RenderError,
    containers,
    environment,
    find,
    one,
    render,
    render_uncached,
    workloads,
)
from tests.deploy.settings_source import effective

# The oldest Kubernetes the README and docs/operations.md promise: the web pods' preStop uses the
# built-in `sleep` action, whose feature gate is on by default from 1.30 (alpha and off in 1.29).
MINIMUM_KUBERNETES = "1.30"
# The newest schemas kubernetes-validate ships, and the minimum: the manifests must hold for both.
KUBERNETES_VERSIONS = [latest_version(), MINIMUM_KUBERNETES]
# daphne's default --application-close-timeout: how long it waits for consumers after a disconnect.
DAPHNE_APPLICATION_CLOSE_TIMEOUT = 10
CONTAINER_RESOURCES = ("web", "leader", "agent", "migrate")


def ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


def validate(resource: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(resource, version, strict=True)


def settings_data(resources: list[dict[str, Any]]) -> dict[str, str]:
    (config_map,) = [
        r for r in find(resources, "ConfigMap") if r["metadata"]["name"].startswith("iacplatform-settings")
    ]
    return {key: str(value) for key, value in config_map["data"].items()}


def test_the_schemas_are_of_a_current_kubernetes() -> None:
    major, minor = (int(part) for part in latest_version().split(".")[:2])
    assert (major, minor) >= (1, 34)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_every_rendered_resource_validates_strictly(kustomization: Path, version: str) -> None:
    """Strict: an unknown or misspelled field fails, as `kubectl apply --validate=strict` would."""
    resources = render(kustomization)
    assert resources
    for resource in resources:
        try:
            validate(resource, version)
        except ValidationError as exc:
            path = ".".join(str(item) for item in exc.path)
            pytest.fail("%s %s: %s: %s" % (resource["kind"], resource["metadata"]["name"], path, exc.message))
        except SchemaNotFoundError as exc:
            pytest.fail(exc.message)


def test_the_readme_and_the_runbook_state_the_minimum_kubernetes_version() -> None:
    for doc in (ROOT / "README.md", ROOT / "docs" / "operations.md"):
        assert "Kubernetes %s or newer" % MINIMUM_KUBERNETES in doc.read_text(), doc


def test_the_manifests_need_the_minimum_they_state() -> None:
    """Not a number picked at random: the web pods use preStop `sleep` (on by default from 1.30),
    which an API server older than 1.29 does not even know (a v1.20 dry run refused it)."""
    web = one(render(BASE), "Deployment", "iacplatform-web")
    (container,) = [c for c in web["spec"]["template"]["spec"]["containers"] if c["name"] == "web"]
    assert "sleep" in container["lifecycle"]["preStop"]
    with pytest.raises(ValidationError, match="sleep"):
        validate(web, "1.28")


def test_the_validation_rejects_what_an_api_server_would() -> None:
    """The check above can fail: a misspelled field, a wrong type and an unknown kind are refused."""
    web = one(render(BASE), "Deployment", "iacplatform-web")
    misspelled = dict(web, spec=dict(web["spec"], replica=2))
    with pytest.raises(ValidationError):
        validate(misspelled, latest_version())
    wrong_type = dict(web, spec=dict(web["spec"], replicas="two"))
    with pytest.raises(ValidationError):
        validate(wrong_type, latest_version())
    with pytest.raises(SchemaNotFoundError):
        validate({"apiVersion": "v1", "kind": "Deploymnet", "metadata": {"name": "x"}}, latest_version())


def test_a_broken_kustomization_is_reported_with_kustomizes_message(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RenderError, match=r"missing\.yaml"):
        render_uncached(tmp_path)


def test_there_is_an_example_overlay() -> None:
    assert [path.name for path in OVERLAYS] == ["example"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=ids(OVERLAYS))
def test_an_overlay_keeps_every_base_resource_and_puts_it_in_its_namespace(overlay: Path) -> None:
    base = render(BASE)
    resources = render(overlay)

    def key(resource: dict[str, Any]) -> tuple[str, str]:
        # Generated ConfigMaps carry a content hash that differs between base and overlay.
        name = re.sub(r"-[a-z0-9]{10}$", "", resource["metadata"]["name"]) if resource["kind"] == "ConfigMap" else None
        return resource["kind"], name or resource["metadata"]["name"]

    assert {key(r) for r in base} <= {key(r) for r in resources}
    (namespace,) = find(resources, "Namespace")
    for resource in resources:
        if resource["kind"] != "Namespace":
            assert resource["metadata"].get("namespace") == namespace["metadata"]["name"], key(resource)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_settings_config_map_is_generated_with_a_hash_and_every_reference_follows_it(kustomization: Path) -> None:
    resources = render(kustomization)
    names = [r["metadata"]["name"] for r in find(resources, "ConfigMap")]
    assert len(names) == 1
    assert re.fullmatch(r"iacplatform-settings-[a-z0-9]{10}", names[0])
    for container in containers(resources):
        for source in container.spec.get("envFrom", []):
            assert source["configMapRef"]["name"] == names[0], container.name
        environment(container, resources)  # every reference resolves


def test_no_secret_is_committed_and_every_referenced_secret_is_documented() -> None:
    """Secrets are created by the operator (docs/operations.md), never rendered from the repo."""
    for path in DEPLOY.rglob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"^kind:\s*Secret\s*$", text, re.MULTILINE), path
        assert "secretGenerator" not in text, path
    # Shell lines as the runbook's code blocks write them, continuations joined.
    runbook = (ROOT / "docs" / "operations.md").read_text().replace("\\\n", " ")
    referenced: set[tuple[str, str]] = set()
    for kustomization in KUSTOMIZATIONS:
        resources = render(kustomization)
        assert not find(resources, "Secret")
        for container in containers(resources):
            for source in environment(container, resources).values():
                if source.kind == "secret":
                    assert source.ref is not None and source.key is not None
                    referenced.add((source.ref, source.key))
    assert referenced
    for name, key in referenced:
        # The runbook's `kubectl create secret generic NAME ... --from-literal=KEY=...` line.
        assert re.search(r"create secret generic %s\b[^\n]*--from-literal=%s=" % (name, key), runbook), (name, key)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_every_pod_runs_unprivileged(kustomization: Path) -> None:
    """What the "restricted" Pod Security Standard demands, which the example namespace enforces."""
    for container in containers(render(kustomization)):
        pod = container.pod_spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, container.name
        assert pod.get("runAsUser", 0) != 0, container.name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", container.name
        security = container.spec.get("securityContext", {})
        assert security.get("allowPrivilegeEscalation") is False, container.name
        assert security.get("capabilities", {}).get("drop") == ["ALL"], container.name
        assert security.get("readOnlyRootFilesystem") is True, container.name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_every_container_has_resources(kustomization: Path) -> None:
    for container in containers(render(kustomization)):
        resources = container.spec.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), container.name
        assert "memory" in resources.get("limits", {}), container.name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_web_replicas_probe_drain_and_roll_without_losing_capacity(kustomization: Path) -> None:
    resources = render(kustomization)
    (web,) = [w for w in workloads(resources, "web") if w["kind"] == "Deployment"]
    assert web["spec"]["replicas"] >= 2
    assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = web["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    allowed_hosts = settings_data(resources)["ALLOWED_HOSTS"].split(",")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ("http", 8000)
        # Django answers 400 to a Host it does not allow, which would fail the probe forever.
        hosts = [h["value"] for h in get.get("httpHeaders", []) if h["name"].lower() == "host"]
        assert hosts and hosts[0] in allowed_hosts, probe
    # Several replicas need a channel layer that crosses processes (the in-memory one does not).
    assert effective("CHANNEL_LAYER_BACKEND", settings_data(resources)) != "memory"
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause >= 5
    assert pod["terminationGracePeriodSeconds"] > pause + DAPHNE_APPLICATION_CLOSE_TIMEOUT


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_the_service_routes_to_the_web_pods_http_port(kustomization: Path) -> None:
    resources = render(kustomization)
    service = one(resources, "Service", "iacplatform-web")
    (web,) = [w for w in workloads(resources, "web") if w["kind"] == "Deployment"]
    labels = web["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # No other pod carries those labels (an agent or leader pod would receive web traffic).
    for container in containers(resources):
        if container.workload is not web:
            other = container.workload["spec"].get("template", {}).get("metadata", {}).get("labels", {})
            assert not service["spec"]["selector"].items() <= other.items(), container.name
    ports = {p["name"]: p["containerPort"] for p in web["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_leader_candidates_have_a_standby_and_outlast_the_renew_deadline(kustomization: Path) -> None:
    resources = render(kustomization)
    (leader,) = [w for w in workloads(resources, "leader") if w["kind"] == "Deployment"]
    assert leader["spec"]["replicas"] >= 2
    assert leader["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = leader["spec"]["template"]["spec"]
    settings = settings_data(resources)
    # SIGTERM: the jobs get their stop grace, then the release gets up to the renew deadline.
    renew_deadline = float(str(effective("LEADER_ELECTION_RENEW_DEADLINE", settings)))
    stop_grace = float(str(effective("LEADER_JOB_STOP_GRACE", settings)))
    assert pod["terminationGracePeriodSeconds"] > renew_deadline + stop_grace
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["command"]
    http_addr = args[args.index("--http-addr") + 1]
    assert int(http_addr.rsplit(":", 1)[1]) in ports.values()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert ports.get(get["port"], get["port"]) == int(http_addr.rsplit(":", 1)[1])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_agent_replicas_are_left_to_the_autoscaler(kustomization: Path) -> None:
    """An apply must not reset the count the autoscaler chose through the scale subresource."""
    agents = [w for w in workloads(render(kustomization), "agent") if w["kind"] == "Deployment"]
    assert agents
    for agent in agents:
        assert "replicas" not in agent["spec"], agent["metadata"]["name"]
        assert agent["metadata"]["labels"].get("iacplatform/agent-pool")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_agents_get_the_time_to_finish_running_terraform(kustomization: Path) -> None:
    """The kubelet's SIGKILL must come after the agent's own grace ran out and it cancelled and
    reported its task; killed earlier, an apply would end with no report at all."""
    resources = render(kustomization)
    for container in containers(resources):
        if container.component != "agent":
            continue
        env = {name: source.value for name, source in environment(container, resources).items() if source.value}
        grace = float(str(effective("AGENT_SHUTDOWN_GRACE", env)))
        assert container.pod_spec["terminationGracePeriodSeconds"] >= grace + 30, container.name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_agent_pods_have_a_pid_1_that_reaps_terraforms_orphans(kustomization: Path) -> None:
    """The agent is no init: a provider orphaned by a killed terraform is reparented to PID 1, and
    only the pause container (a shared process namespace) reaps it."""
    agents = [w for w in workloads(render(kustomization), "agent") if w["kind"] == "Deployment"]
    assert agents
    for agent in agents:
        assert agent["spec"]["template"]["spec"].get("shareProcessNamespace") is True, agent["metadata"]["name"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_agents_keep_their_credential_on_a_volume_of_its_own(kustomization: Path) -> None:
    """A container restart keeps the agent id, so it must find its credential again (a refused
    reconnect otherwise); Terraform's work volume must not hold it."""
    resources = render(kustomization)
    agents = [c for c in containers(resources) if c.component == "agent" and not c.init]
    assert agents
    for container in agents:
        env = {name: source.value for name, source in environment(container, resources).items() if source.value}
        path = str(env.get("AGENT_CREDENTIAL_FILE", ""))
        assert path.startswith("/"), container.name
        mounts = [
            m for m in container.spec.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")
        ]
        assert len(mounts) == 1, (container.name, mounts)
        volumes = {v["name"]: v for v in container.pod_spec["volumes"]}
        volume = volumes[mounts[0]["name"]]
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume, volume
        work = str(env.get("AGENT_WORK_DIR") or "/tmp")
        assert not path.startswith(work.rstrip("/") + "/"), container.name
        assert not mounts[0].get("readOnly"), container.name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
@pytest.mark.parametrize("component", ["web", "leader"])
def test_a_disruption_budget_keeps_one_pod_of_web_and_leader(kustomization: Path, component: str) -> None:
    resources = render(kustomization)
    (deployment,) = [w for w in workloads(resources, component) if w["kind"] == "Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [
        b
        for b in find(resources, "PodDisruptionBudget")
        if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(budgets) == 1
    assert budgets[0]["spec"]["minAvailable"] == 1
    # With as many pods as the budget keeps, a node drain would wait forever.
    assert deployment["spec"]["replicas"] > budgets[0]["spec"]["minAvailable"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_a_job_migrates_and_web_and_leader_wait_for_it(kustomization: Path) -> None:
    resources = render(kustomization)
    (job,) = workloads(resources, "migrate")
    assert job["kind"] == "Job"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "manage.py", "migrate", "--noinput"]
    # Finished Jobs go away, so the next apply can create it again with the new image.
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    for component in ("web", "leader"):
        (deployment,) = workloads(resources, component)
        (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
        assert "manage.py migrate --check" in " ".join(init["command"])
        assert init["image"] == job["spec"]["template"]["spec"]["containers"][0]["image"]


def test_the_runbooks_kubectl_lines_name_what_the_example_overlay_creates() -> None:
    """Copy-pasting the runbook must hit real objects: the namespace, Deployments, the Job, the
    Lease (named by the settings), the Service's paths in the deploy/ tree."""
    (overlay,) = OVERLAYS
    resources = render(overlay)
    (namespace,) = find(resources, "Namespace")
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    kinds = {"deployment": "Deployment", "deploy": "Deployment", "job": "Job"}
    runbook = (ROOT / "docs" / "operations.md").read_text()
    lines = [line for line in runbook.replace("\\\n", " ").splitlines() if "kubectl " in line]
    assert lines
    for line in lines:
        for match in re.finditer(r"(?<![\w/])(deployment|deploy|job)/([a-z0-9-]+)\b", line):
            if match[2] not in ("overlays", "base"):
                assert (kinds[match[1]], match[2]) in names, line
        for match in re.finditer(r"\s-n (\S+)", line):
            assert match[1] == namespace["metadata"]["name"], line
        for match in re.finditer(r"get lease (\S+)", line):
            assert match[1] == settings_data(resources).get("LEADER_ELECTION_LEASE_NAME"), line
        for match in re.finditer(r"-[kf] (deploy/\S+)", line):
            assert (ROOT / match[1]).exists(), line


def exported_metric_names() -> set[str]:
    """The names Prometheus sees: a counter's gets ``_total`` (prometheus_client adds it). ``gauge(``
    is runleader's collector helper (apps/coordination/metrics.py)."""
    source = "\n".join(path.read_text() for d in ("apps", "iacplatform") for path in (ROOT / d).rglob("*.py"))
    names = set()
    for kind, name in re.findall(
        r"\b(Counter|CounterMetricFamily|Gauge|GaugeMetricFamily|Histogram|gauge)\(\s*\"([a-z_]+)\"", source
    ):
        names.add(name + "_total" if kind.startswith("Counter") and not name.endswith("_total") else name)
    return names


def test_the_runbooks_metric_names_are_ones_the_code_exports() -> None:
    runbook = (ROOT / "docs" / "operations.md").read_text()
    named = set(re.findall(r"`((?:iacplatform|channel_layer)_[a-z_]+)`", runbook))
    assert named
    exported = exported_metric_names()
    assert {"iacplatform_job_ticks_total", "iacplatform_http_request_duration_seconds"} <= exported
    assert sorted(named - exported) == []


def test_the_runbooks_management_commands_exist_with_their_options() -> None:
    commands = get_commands()
    runbook = (ROOT / "docs" / "operations.md").read_text()
    found = re.findall(r"manage\.py ([a-z_]+)((?: --[a-z-]+)*)", runbook)
    assert {"migrate", "createagentpool", "clusterstatus"} <= {name for name, _ in found}
    for name, options in found:
        assert name in commands, name
        parser = load_command_class(commands[name], name).create_parser("manage.py", name)
        known = {option for action in parser._actions for option in action.option_strings}
        for option in options.split():
            assert option in known, "manage.py %s %s" % (name, option)
