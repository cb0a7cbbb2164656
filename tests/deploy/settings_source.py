"""What iacplatform/settings.py reads from the environment, read from its source with ``ast``:
every ``env_str/env_bool/env_number/env_int/env_list("NAME", default)`` call, the literal default
of each, and which variables are required (a module-level ``X = env_*("NAME", ...)`` followed by
``if not X:`` with a ``raise`` anywhere inside, such as SECRET_KEY when DEBUG is off)."""

from __future__ import annotations

import ast
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

SETTINGS = Path(__file__).resolve().parents[2] / "iacplatform" / "settings.py"
READERS = {"env_str", "env_bool", "env_number", "env_int", "env_list"}


@dataclass(frozen=True)
class SettingsVariables:
    read: frozenset[str]
    required: frozenset[str]
    # Defaults that are literals (a default computed from another setting is absent).
    defaults: dict[str, object] = field(default_factory=dict)


def _reader_call(node: ast.AST) -> tuple[str, ast.expr | None] | None:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in READERS
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value, node.args[1] if len(node.args) > 1 else None
    return None


def settings_variables(source: str) -> SettingsVariables:
    tree = ast.parse(source)
    read: set[str] = set()
    defaults: dict[str, object] = {}
    for node in ast.walk(tree):
        call = _reader_call(node)
        if call is None:
            continue
        name, default = call
        read.add(name)
        if default is not None:
            # A default computed from something else (POD_NAMESPACE, the hostname) is left out.
            with contextlib.suppress(ValueError):
                defaults[name] = ast.literal_eval(default)
    bound: dict[str, str] = {}
    for statement in tree.body:
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            call = _reader_call(statement.value)
            if call is not None:
                bound[statement.targets[0].id] = call[0]
    required: set[str] = set()
    for statement in tree.body:
        if not isinstance(statement, ast.If):
            continue
        # `if not X:` or `if not X and <exemption>:` (e.g. a role that does without X).
        test = statement.test
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            test = test.values[0]
        if (
            isinstance(test, ast.UnaryOp)
            and isinstance(test.op, ast.Not)
            and isinstance(test.operand, ast.Name)
            and test.operand.id in bound
            and any(isinstance(n, ast.Raise) for s in statement.body for n in ast.walk(s))
        ):
            required.add(bound[test.operand.id])
    return SettingsVariables(frozenset(read), frozenset(required), defaults)


def project_settings() -> SettingsVariables:
    return settings_variables(SETTINGS.read_text())


def effective(name: str, config: dict[str, str]) -> object:
    """A setting's value from a ConfigMap's data, else its default in settings.py."""
    if name in config:
        return config[name]
    defaults = project_settings().defaults
    if name not in defaults:
        raise KeyError("iacplatform/settings.py reads no %s with a literal default" % name)
    return defaults[name]
