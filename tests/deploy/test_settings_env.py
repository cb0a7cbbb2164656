"""The manifests and iacplatform/settings.py agree: every variable a pod gets is one the settings
read, every required setting is set (secrets from Secrets, identity from the downward API), and
settings plus Django's system checks accept the whole environment of every container."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.processes import ROOT
from tests.deploy.kustomize import KUSTOMIZATIONS, Container, EnvSource, containers, environment, render
from tests.deploy.settings_source import project_settings, settings_variables

# The platform's own Secret: the database and Django's signing key.
PLATFORM_SECRET = "iacplatform"
# What each downward-API identity must come from.
DOWNWARD = {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


def django_containers(resources: list[dict[str, Any]]) -> list[Container]:
    """Containers that run the Django project (every container of this product does)."""
    return list(containers(resources))


def test_settings_reading_is_derived_from_the_source() -> None:
    found = project_settings()
    assert {"DATABASE_URL", "SECRET_KEY", "POD_NAME", "LEADER_ELECTION_RENEW_DEADLINE"} <= found.read
    assert found.required == {"DATABASE_URL", "SECRET_KEY"}


def test_required_settings_are_found_wherever_the_raise_is_nested() -> None:
    source = (
        'A = env_str("A", "")\nif not A:\n    if not B:\n        raise X()\n'
        'C = env_int("C_VAR", 1)\nif not C:\n    pass\n'
        'D = env_list("D", [])\n'
        'E = env_str("E", "")\nif not E and not EXEMPT:\n    raise X()\n'
    )
    found = settings_variables(source)
    assert found.read == {"A", "C_VAR", "D", "E"}
    assert found.required == {"A", "E"}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_every_variable_the_manifests_set_is_read_by_settings(kustomization: Path) -> None:
    resources = render(kustomization)
    read = project_settings().read
    for container in django_containers(resources):
        unknown = set(environment(container, resources)) - read
        assert not unknown, "%s sets %s, which iacplatform/settings.py never reads" % (container.name, sorted(unknown))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_required_settings_come_from_secrets_and_identity_from_the_downward_api(kustomization: Path) -> None:
    resources = render(kustomization)
    required = project_settings().required
    for container in django_containers(resources):
        env = environment(container, resources)
        if container.component != "agent":
            for name in required:
                assert name in env, "%s does not set the required %s" % (container.name, name)
        for name, field in DOWNWARD.items():
            assert env.get(name) == EnvSource(name, "field", ref=field), container.name
        # DEBUG on in a cluster would serve tracebacks and accept the insecure key.
        debug = env.get("DEBUG")
        assert debug is None or debug.value in ("0", "false", "no", "off"), container.name
        if container.component == "agent":
            # Terraform runs as the agent's user and can read its environment: nothing of the
            # platform's Secret may be there, and no database at all (settings need neither for
            # PROCESS_ROLE=agent, which the agent sets so that any command it runs knows it).
            assert all(s.ref != PLATFORM_SECRET for s in env.values() if s.kind == "secret"), container.name
            assert not {"DATABASE_URL", "SECRET_KEY"} & set(env), container.name
            assert env["PROCESS_ROLE"] == EnvSource("PROCESS_ROLE", "value", value="agent"), container.name
        else:
            for name in required:
                assert env[name] == EnvSource(
                    name, "secret", ref=PLATFORM_SECRET, key=name.lower().replace("_", "-")
                ), container.name


def pod_environment(container: Container, resources: list[dict[str, Any]]) -> dict[str, str]:
    """The variables as the kubelet would set them, with made-up but well-formed secret values."""
    secrets = {
        ("iacplatform", "database-url"): "postgresql://iacplatform:secret@postgres.invalid:5432/iacplatform",
        # check --deploy wants 50+ characters, 5+ of them distinct (security.W009).
        ("iacplatform", "secret-key"): "kP3-9qZ_x" * 6,
        # A Fernet key (32 url-safe base64 bytes), as the runbook makes one.
        ("iacplatform", "variable-encryption-keys"): "a" * 43 + "=",
    }
    values: dict[str, str] = {}
    namespace = container.workload["metadata"].get("namespace", "default")
    for name, source in environment(container, resources).items():
        if source.kind in ("value", "configMap"):
            assert source.value is not None
            values[name] = source.value
        elif source.kind == "secret":
            assert source.ref is not None and source.key is not None
            values[name] = secrets.get((source.ref, source.key), "secret-%s-%s" % (source.ref, source.key))
        elif source.kind == "field":
            values[name] = {"metadata.name": container.workload["metadata"]["name"] + "-7d9f8-x2x4k"}.get(
                str(source.ref), namespace
            )
    return values


def manage_check(env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    """`manage.py check` with exactly ``env`` (plus PATH): nothing inherited from this process."""
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING", *options],
        cwd=ROOT,
        env={**env, "PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_settings_and_system_checks_accept_every_containers_environment(kustomization: Path) -> None:
    """Import the settings and run `manage.py check` with exactly the environment each container gets
    (nothing inherited), so a missing or malformed value fails here as it would in the pod."""
    resources = render(kustomization)
    seen: set[tuple[tuple[str, str], ...]] = set()
    for container in django_containers(resources):
        env = pod_environment(container, resources)
        key = tuple(sorted(env.items()))
        if key in seen:
            continue
        seen.add(key)
        result = manage_check(env)
        assert result.returncode == 0, "%s:\n%s%s" % (container.name, result.stdout, result.stderr)
    assert seen


def test_the_check_fails_on_a_bad_environment() -> None:
    """The check above can fail: a renew deadline past the lease duration is refused."""
    env = {
        "DATABASE_URL": "postgresql://u:p@postgres.invalid/db",
        "SECRET_KEY": "k" * 50,
        "LEADER_ELECTION_RENEW_DEADLINE": "20",
    }
    result = manage_check(env)
    assert result.returncode != 0
    assert "coordination.E003" in result.stderr


def test_a_missing_setting_is_named_not_hidden_behind_app_registry_not_ready() -> None:
    """Django's command runner swallows a settings module's ImproperlyConfigured; manage.py states it."""
    result = manage_check({"DATABASE_URL": "postgresql://u:p@postgres.invalid/db"})  # no SECRET_KEY
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr
    assert "AppRegistryNotReady" not in result.stderr


def web_environment(kustomization: Path) -> dict[str, str]:
    resources = render(kustomization)
    (web,) = [c for c in django_containers(resources) if c.component == "web" and not c.init]
    return pod_environment(web, resources)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_check_deploy_reports_nothing_for_the_web_containers_environment(kustomization: Path) -> None:
    """HTTPS redirect, HSTS, secure cookies and the proxy's TLS header all come from the manifests."""
    result = manage_check(web_environment(kustomization), "--deploy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_check_deploy_names_each_secure_setting_left_off() -> None:
    """The check above can fail: without the secure settings Django's deploy checks warn."""
    env = web_environment(KUSTOMIZATIONS[0])
    for name in ("SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"):
        env.pop(name)
    result = manage_check(env, "--deploy")
    assert result.returncode != 0
    for code in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert code in result.stderr, code


def test_the_proxy_ssl_header_is_parsed_or_refused() -> None:
    env = {"DATABASE_URL": "postgresql://u:p@postgres.invalid/db", "SECRET_KEY": "kP3-9qZ_x" * 6}
    code = "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
    ok = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='iacplatform.settings'; " + code,
        ],
        cwd=ROOT,
        env={**env, "PATH": os.environ["PATH"], "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto=https"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')", ok.stderr
    bad = manage_check({**env, "SECURE_PROXY_SSL_HEADER": "https"})
    assert bad.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER must be <Header-Name>=<value>" in bad.stderr
