"""What each target of the Dockerfile would contain and run, read statically (docker cannot build
here): stages parsed by the ``dockerfile`` package (BuildKit's own Go parser), followed through
``FROM <stage>`` the way the builder inherits ENV, WORKDIR, USER, ENTRYPOINT and CMD; and the
build context as .dockerignore filters it (Docker's matching rules: Go filepath.Match patterns
plus ``**``, each pattern also excluding everything below a matched directory, ``!`` re-including,
the last matching line winning)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile

from harness.processes import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


class DockerfileError(Exception):
    """The Dockerfile does something this reading cannot follow; the message says what."""


@dataclass
class Stage:
    name: str
    base: str  # an image reference, or the name of an earlier stage
    instructions: list[dockerfile.Command] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    """The final configuration of one build target."""

    target: str
    root: str  # the external base image the chain starts from
    chain: tuple[Stage, ...]  # from the stage on the external image down to the target
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    user: str
    workdir: str
    env: dict[str, str]
    exposed: frozenset[int]


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def parse(text: str) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        raise DockerfileError("not a Dockerfile: %s" % exc) from None
    for command in commands:
        if command.cmd == "ARG" and not stages:
            name, _, default = command.value[0].partition("=")
            args[name] = default
        elif command.cmd == "FROM":
            value = list(command.value)
            if len(value) == 3 and value[1].upper() == "AS":
                name = value[2]
            elif len(value) == 1:
                name = str(len(stages))
            else:
                raise DockerfileError("cannot read FROM %s" % " ".join(value))
            stages.append(Stage(name=name, base=_substitute(value[0], args)))
        elif not stages:
            raise DockerfileError("%s before the first FROM (line %d)" % (command.cmd, command.start_line))
        else:
            stages[-1].instructions.append(command)
    if not stages:
        raise DockerfileError("no FROM: not a Dockerfile")
    return stages


def _exec_form(command: dockerfile.Command) -> tuple[str, ...]:
    if not command.json:
        # The shell form runs /bin/sh -c and makes the process a child of sh: SIGTERM would go
        # to the shell, not to daphne or manage.py, and the graceful handovers would never run.
        raise DockerfileError(
            "%s on line %d uses the shell form; use the JSON (exec) form" % (command.cmd, command.start_line)
        )
    return tuple(command.value)


def image(stages: list[Stage], target: str) -> Image:
    by_name = {stage.name: stage for stage in stages}
    if target not in by_name:
        raise DockerfileError("no stage %r (stages: %s)" % (target, ", ".join(by_name)))
    chain = [by_name[target]]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    chain.reverse()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user, workdir = "", "/"
    env: dict[str, str] = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"}
    exposed: set[int] = set()
    for stage in chain:
        for command in stage.instructions:
            if command.cmd == "ENV":
                pairs = list(command.value)
                for name, value in zip(pairs[::2], pairs[1::2], strict=True):
                    env[name] = _substitute(value, env)
            elif command.cmd == "WORKDIR":
                workdir = str(Path(workdir) / command.value[0])
            elif command.cmd == "USER":
                user = command.value[0]
            elif command.cmd == "ENTRYPOINT":
                entrypoint = _exec_form(command)
                cmd = ()  # a new ENTRYPOINT resets an inherited CMD
            elif command.cmd == "CMD":
                cmd = _exec_form(command)
            elif command.cmd == "EXPOSE":
                exposed.update(int(port.split("/")[0]) for port in command.value)
    return Image(
        target=target,
        root=chain[0].base,
        chain=tuple(chain),
        entrypoint=entrypoint,
        cmd=cmd,
        user=user,
        workdir=workdir,
        env=env,
        exposed=frozenset(exposed),
    )


def documented_targets(text: str) -> dict[str, str]:
    """The image names the Dockerfile's header documents, with the target each is built from:
    ``docker build [--target T] -t NAME .`` (no --target: the last stage)."""
    stages = parse(text)
    targets: dict[str, str] = {}
    for match in re.finditer(r"^#\s+docker build (?:--target (\S+) )?-t (\S+) \.", text, re.MULTILINE):
        targets[match[2]] = match[1] or stages[-1].name
    return targets


def ignore_patterns(text: str) -> list[tuple[bool, str]]:
    """(is an exception, cleaned pattern) for each line of a .dockerignore."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = str(Path("/" + pattern)).lstrip("/") or "."
        patterns.append((exception, pattern))
    return patterns


def _match(pattern: str, path: str) -> bool:
    regex = ""
    for part in re.split(r"(\*\*/?)", pattern):
        if part in ("**", "**/"):
            regex += "(?:.*/)?" if part == "**/" else ".*"
        else:
            regex += fnmatch.translate(part).removeprefix("(?s:").removesuffix(")\\Z").replace(".*", "[^/]*")
    return re.fullmatch(regex, path) is not None


def excluded(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for exception, pattern in patterns:
        # A pattern matching a parent directory excludes (or re-includes) everything below it.
        if any(_match(pattern, prefix) for prefix in prefixes):
            result = not exception
    return result
